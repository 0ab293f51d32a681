#!/usr/bin/env bash
# Multi-node training under SLURM: one `accelerate launch` per node, started by srun.
#   sbatch --nodes=8 launch/slurm.sh recipe=1b_wsd                      # DeepSpeed ZeRO-1 (default)
#   ACCELERATE_CONFIG=launch/fsdp.yaml sbatch --nodes=32 launch/slurm.sh recipe=7b_wsd
#
# Preemption and time limits: SLURM sends this script SIGUSR1 180 s before the end (--signal below); the script
# passes it to every process of the training step (scancel --signal), train.py stops at the next step boundary on
# every rank, saves a checkpoint and exits 75 (pretrain.errors.EXIT_PREEMPTED), and the script requeues the job
# (scontrol requeue), which continues with resume=auto. `accelerate launch` reports a worker's exit code 75 as 1,
# so the script requeues on the signal it received itself (unless the run finished first: exit 0), or on exit code
# 75 where it gets through (one process).
# The per-node launcher ignores SIGUSR1 (train.py's workers install their own handler), so the signal reaches the
# workers without stopping the launcher first. Any other failure is not requeued.
#SBATCH --job-name=pretrain
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --exclusive
#SBATCH --output=slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@180
#SBATCH --requeue
set -euo pipefail

EXIT_PREEMPTED=75  # pretrain.errors.EXIT_PREEMPTED
CONFIG=${ACCELERATE_CONFIG:-launch/zero1.yaml}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${SLURM_NNODES:-1}
MAIN_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}
export WANDB_RUN_GROUP=${WANDB_RUN_GROUP:-}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

launch_args=(--config_file "$CONFIG" --num_machines "$NNODES" --num_processes "$((NNODES * GPUS_PER_NODE))"
             --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT" --rdzv_backend c10d)

preempted=0
# shellcheck disable=SC2329  # called by the trap below
on_preempt() {
  preempted=1
  echo "slurm.sh: preemption signal: asking every rank to checkpoint and stop" >&2
  scancel --signal=USR1 "$SLURM_JOB_ID" || true
}
trap on_preempt USR1 TERM

# Every value reaches the node as an argument, never pasted into the command string; only $SLURM_PROCID (the
# node's rank) is expanded on the node, hence the single quotes.
# shellcheck disable=SC2016  # $SLURM_PROCID and $@ are expanded by the node's bash, on purpose
srun --kill-on-bad-exit=1 bash -c 'trap "" USR1; exec accelerate launch --machine_rank "$SLURM_PROCID" "$@"' node \
  "${launch_args[@]}" train.py resume=auto "$@" &
srun_pid=$!
status=0
while :; do  # a trapped signal interrupts `wait`: wait again until srun has really finished
  wait "$srun_pid" && status=0 || status=$?
  kill -0 "$srun_pid" 2>/dev/null || break
done

if [[ $status == "$EXIT_PREEMPTED" || ($preempted == 1 && $status != 0) ]]; then  # 0: it finished first
  echo "slurm.sh: requeueing job $SLURM_JOB_ID (train.py exit status $status); it resumes with resume=auto" >&2
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$status"
