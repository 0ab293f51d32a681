#!/usr/bin/env bash
# Multi-node training under SLURM: one `accelerate launch` per node, started by srun.
#   sbatch --nodes=8 launch/slurm.sh recipe=1b_wsd                      # DeepSpeed ZeRO-1 (default)
#   ACCELERATE_CONFIG=launch/fsdp.yaml sbatch --nodes=32 launch/slurm.sh recipe=7b_wsd
#SBATCH --job-name=pretrain
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --exclusive
#SBATCH --output=slurm-%j.out
set -euo pipefail

CONFIG=${ACCELERATE_CONFIG:-launch/zero1.yaml}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${SLURM_NNODES:-1}
MAIN_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}
export WANDB_RUN_GROUP=${WANDB_RUN_GROUP:-}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

# $SLURM_PROCID (the node's rank) must be expanded on each node, hence the single quotes around the command.
srun --kill-on-bad-exit=1 bash -c 'accelerate launch \
  --config_file '"$CONFIG"' \
  --num_machines '"$NNODES"' \
  --num_processes '"$((NNODES * GPUS_PER_NODE))"' \
  --machine_rank "$SLURM_PROCID" \
  --main_process_ip '"$MAIN_ADDR"' \
  --main_process_port '"$MAIN_PORT"' \
  --rdzv_backend c10d \
  train.py resume=auto "$@"' _ "$@"
