"""Build a run from a validated config: the accelerator, data, model, optimizer, schedule and step engine, and
resume it from a checkpoint. What `loop.train` uses before its first step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import checkpoint as ckpt
from . import resume_rules
from .batch_size import BatchSizes
from .clipping import build_clip_policy
from .config import RunConfig, build_run_schedule, launch_engine, optimizer_hparams, world_size_check
from .errors import EXIT_DIVERGED, ConfigError, RunStopped
from .noise_scale import NoiseScale
from .optim import unwrap
from .step import LoopEngine


@dataclass
class Run:
    cfg: RunConfig
    accelerator: Any
    accum: int
    tokenizer: Any
    loader: Any
    val: list
    model: Any  # accelerate-prepared
    fwd_model: Any  # the model, or its torch.compile'd forward
    optimizer: Any  # accelerate-prepared
    schedule: Any
    engine: LoopEngine
    log: Callable[[str], None]

    @property
    def protocol(self):
        return self.engine.protocol

    def describe(self) -> str:
        """The run in one line: parameters, processes, batch (and its ramp), optimizer, schedule."""
        cfg, b = self.cfg, self.engine.batches
        n = sum(p.numel() for p in self.accelerator.unwrap_model(self.model).parameters())
        batch = f"accumulation {self.accum}, {cfg.train.tokens_per_step} tokens/step"
        if b.auto:
            batch += f" (ramp from {b.start} sequences following the noise scale)"
        elif b.ramp_end():
            batch += f" (ramp {b.start} -> {b.final} sequences by step {b.ramp_end()})"
        if self.engine.noise is not None and self.accelerator.num_processes == 1 and self.accum == 1 and \
                b.start == b.final:
            batch += "; b_noise not measured (one process, one micro-batch per step: a single batch size)"
        return (f"model: {n / 1e6:.2f}M parameters; world {self.accelerator.num_processes}, {batch}; optimizer "
                f"{cfg.optim['name']}, schedule {cfg.schedule['name']}")


@dataclass
class Source:
    """Where a run starts: a checkpoint to resume (`branch` False) or to branch from (train.init_from), with the
    config changes it accepted (`resume_rules.check`)."""
    path: str
    branch: bool
    changes: dict


def start_checkpoint(cfg: RunConfig, log=print) -> Source | None:
    """Which checkpoint to start from, checked before anything is built: refuses to write over an existing run,
    a corrupt checkpoint (resume=auto falls back to the newest intact one, saying so) and config changes the
    checkpoint's run does not allow (`resume_rules`)."""
    run_dir, world = cfg.run_dir, int(os.environ.get("WORLD_SIZE", "1"))
    path, field = None, "resume"
    if cfg.resume == "auto":
        path = ckpt.latest_good_checkpoint(run_dir, world, log)
        if path is None and ckpt.list_checkpoints(run_dir):
            raise ConfigError("resume", f"no intact checkpoint in {run_dir} (see the warnings above); nothing there "
                              "was touched")
    elif cfg.resume != "none":
        path = cfg.resume
    elif os.path.isdir(run_dir) and any(os.path.exists(os.path.join(run_dir, f)) for f in
                                        ("metrics.jsonl", "checkpoints", "final")):
        raise ConfigError("resume", f"run_dir {run_dir!r} already holds a run; pass resume=auto to continue it, "
                          "or choose another run_dir (nothing there was touched)", ["none", "auto", "<checkpoint dir>"])
    if path is None and cfg.train.init_from:
        path, field = cfg.train.init_from, "train.init_from"
    if path is None:
        return None
    problem = ckpt.verify(path, world)
    if problem:
        raise ConfigError(field, f"checkpoint not usable: {problem}")
    try:
        old = ckpt.read_state(path)["config"]
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(field, f"{os.path.join(path, 'trainer_state.json')} is unreadable or not one of this "
                          f"project's checkpoints ({type(e).__name__}: {e})")
    branch = field == "train.init_from"
    diff = resume_rules.check(old, cfg.to_dict(), branch=branch, overrides=cfg.resume_overrides, source=path)
    return Source(path, branch, diff)


def make_accelerator(cfg: RunConfig):
    """(accelerator, gradient accumulation steps); DeepSpeed's config gets the batch and clipping."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    world = int(os.environ.get("WORLD_SIZE", "1"))
    accum = world_size_check(cfg, world)
    on_gpu = torch.cuda.is_available()
    precision = cfg.train.precision
    if precision == "bf16" and not on_gpu:
        raise ConfigError("train.precision", "bf16 needs a GPU here; use auto or fp32 on CPU", ["auto", "fp32"])
    mixed = "bf16" if precision == "bf16" or (precision == "auto" and on_gpu) else "no"
    handlers = [InitProcessGroupKwargs(backend="gloo")] if world > 1 and not on_gpu else []
    use_ds = launch_engine() == "deepspeed"
    acc = Accelerator(cpu=not on_gpu and not use_ds, mixed_precision=mixed, gradient_accumulation_steps=accum,
                      log_with="wandb" if cfg.log.wandb else None, project_dir=cfg.run_dir, kwargs_handlers=handlers)
    if use_ds:
        ds = acc.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.train.micro_batch_size
        ds["gradient_accumulation_steps"] = accum
        ds["train_batch_size"] = cfg.train.global_batch_size
        ds["gradient_clipping"] = cfg.clip.max_norm if cfg.clip.policy == "norm" else 0.0
    return acc, accum


def model_config(cfg: RunConfig, vocab_size: int, eos_id: int | None = None):
    """The GPTConfig of a recipe (`vocab_size` padded to a multiple of 64)."""
    from .model import GPTConfig
    from .model.parametrization import model_kwargs

    m = cfg.model
    return GPTConfig(vocab_size=padded(vocab_size), d_model=m.d_model, n_layer=m.n_layer, n_head=m.n_head,
                     n_kv_head=m.n_kv_head, d_ff=m.d_ff, max_seq_len=cfg.train.seq_len, rope_theta=m.rope_theta,
                     norm_eps=m.norm_eps, tie_embeddings=m.tie_embeddings, init_std=m.init_std,
                     activation_checkpointing=m.activation_checkpointing, bos_token_id=eos_id, eos_token_id=eos_id,
                     **model_kwargs(cfg))  # scaling.parametrization: sp | mup | completep and the proxy's shape


def build_model(cfg: RunConfig, vocab_size: int, eos_id: int):
    from .model import GPT
    return GPT(model_config(cfg, vocab_size, eos_id))


def padded(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


def should_compile(cfg: RunConfig, optimizer, is_deepspeed: bool, device_type: str = "cpu") -> bool:
    """always: compile; auto: on CPU, where bench/optim_step.py measured the compiled step faster (the spec's
    compile == "pays") and the run is long enough to repay the compile time, but not a fused torch step (one
    kernel already, faster than the compiled foreach step: bench/optim_step.py); never under DeepSpeed (its engine
    calls the step) or for an optimizer that needs a closure.

    auto never compiles on a GPU: "pays" is a CPU measurement, and on an H100 with torch 2.11 a compiled step of
    the optimizers written here failed (bench/README.md, "On a GPU"); `always` still compiles there."""
    from .optim import get_spec, needs_of

    mode = cfg.train.compile_optimizer
    if mode == "never" or is_deepspeed or needs_of(optimizer).closure:
        return False
    if mode == "always":
        return True
    fused = any(g.get("fused") for g in optimizer.param_groups)  # one kernel already; compiling it is slower
    return (device_type == "cpu" and get_spec(cfg.optim["name"]).compile == "pays" and not fused
            and cfg.train.steps >= 500)


def check_plan(cfg: RunConfig, accelerator, log) -> None:
    """On a GPU of the hardware table: stop before anything is built when the memory plan says the run does not
    fit (pretrain.plan.launch_check; train.ignore_plan=true launches anyway)."""
    from .hardware import gpu_of_device
    from .plan import launch_check

    gpu = gpu_of_device(accelerator.device)
    if gpu is None:
        return
    kind, strategy = accelerator.distributed_type.value, "ddp"
    if kind == "DEEPSPEED" and accelerator.state.deepspeed_plugin.zero_stage:
        strategy = f"zero{accelerator.state.deepspeed_plugin.zero_stage}"
    elif kind == "FSDP":
        strategy = "fsdp"
    plan = launch_check(cfg, gpu=gpu, gpus=accelerator.num_processes, strategy=strategy)
    log(f"plan: {plan.memory['total'] / 2 ** 30:.1f} of {plan.available / 2 ** 30:.1f} GiB per GPU ({strategy})")


def build_run(cfg: RunConfig, log=None, stop=None) -> Run:
    """Everything the loop needs, in data-flow order; collective under several processes. `stop`: the
    `preemption.StopSignals` the step engine polls."""
    from accelerate.utils import set_seed

    from .data import build_data
    from .optim import build_optimizer

    accelerator, accum = make_accelerator(cfg)
    log = log or (lambda msg: accelerator.print(msg))
    check_plan(cfg, accelerator, log)
    set_seed(cfg.seed)
    with accelerator.main_process_first():
        tokenizer, loader, val = build_data(cfg, rank=accelerator.process_index, world=accelerator.num_processes,
                                            log=log)
    set_seed(cfg.seed)  # identical initialization whatever the data step consumed
    if cfg.train.fast_kernels:
        from .optim import fast
        fast.enable_kernels()
    model = build_model(cfg, len(tokenizer), tokenizer.eos_token_id)
    from .model.parametrization import optimizer_params
    hp = optimizer_hparams(cfg)
    # SP: the model; muP / CompleteP: parameter groups with per-parameter lr, eps and weight-decay multipliers
    optimizer = build_optimizer(cfg.optim["name"], optimizer_params(model, cfg.optim["name"], hp), **hp)
    schedule = build_run_schedule(cfg)
    schedule.group_factors(0, optimizer.param_groups)  # a per-group schedule (learned) checks the groups here
    model, optimizer = accelerator.prepare(model, optimizer)
    is_ds = launch_engine() == "deepspeed"
    if should_compile(cfg, optimizer, is_ds, accelerator.device.type):
        from .optim.fast.compiled import compile_step
        from .optim import unwrap
        compile_step(unwrap(optimizer))
        log("optimizer step compiled (train.compile_optimizer)")
    t = cfg.train
    fwd_model = torch.compile(model) if t.compile else model
    clip = build_clip_policy(cfg.clip, accelerator.unwrap_model(model))
    batches = BatchSizes.from_config(t, accelerator.num_processes)
    loader.batch_sizes = batches
    noise = NoiseScale(t.noise_scale_ema) if t.noise_scale and launch_engine() == "ddp" else None
    engine = LoopEngine(accelerator, model, fwd_model, optimizer, loader, batches=batches, seed=cfg.seed, clip=clip,
                        is_deepspeed=is_ds, lr_rule=cfg.scaling.batch_lr_rule, noise=noise, stop=stop,
                        max_bad_steps=t.max_bad_steps)
    model.train()
    engine.protocol.train_mode()
    return Run(cfg, accelerator, accum, tokenizer, loader, val, model, fwd_model, optimizer, schedule, engine, log)


def resume(run: Run, source: Source | None) -> int:
    """Load model, optimizer, RNG, schedule and data position from the checkpoint (with `resume_overrides`, the
    changed optimizer hyperparameters are applied after); record the run's config; the step to start at."""
    cfg = run.cfg
    if source is None:
        if run.accelerator.is_main_process:
            resume_rules.record(cfg.run_dir, cfg.to_dict(), step=0, source=None, diff={})
        return 0
    if source.branch and cfg.train.init_weights_only:
        load_weights(run, source.path)
        if run.accelerator.is_main_process:
            resume_rules.record(cfg.run_dir, cfg.to_dict(), step=0, source=source.path, diff=source.changes)
        run.log(f"initialized the model from {source.path} (weights only: a fresh optimizer, schedule and data order)")
        return 0
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in unwrap(run.optimizer).param_groups]
    try:
        state, data_state = ckpt.load_checkpoint(run.accelerator, source.path)
    except Exception as e:  # noqa: BLE001 - any failure of a loader is reported in one line, naming the checkpoint
        field = "train.init_from" if source.branch else "resume"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(field, f"could not load the checkpoint {source.path}: {type(e).__name__}: {first}") from e
    start = int(state["step"])
    run.schedule.load_state_dict(state.get("schedule", {}))
    run.engine.clip.load_state_dict(state.get("clip", {}))
    run.engine.batches.load_state_dict(state.get("batch_sizes", {}))
    run.engine.load_state_dict(state.get("engine", {}))
    if run.engine.noise is not None:
        run.engine.noise.load_state_dict(state.get("noise_scale", {}))
    run.loader.load_state_dict(data_state, start)
    applied = resume_rules.apply_optimizer_overrides(run.optimizer, fresh, source.changes)
    run.protocol.train_mode()  # checkpoints hold the optimizer in eval mode
    if run.accelerator.is_main_process:
        resume_rules.record(cfg.run_dir, cfg.to_dict(), step=start, source=source.path, diff=source.changes)
    how = "branched from" if source.branch else "resumed from"
    run.log(f"{how} {source.path} at step {start}" + (f"; applied to the optimizer: {', '.join(applied)}"
                                                      if applied else ""))
    if start >= cfg.train.steps:
        run.log(f"nothing to do: checkpoint step {start} >= train.steps {cfg.train.steps}")
    return start


def load_weights(run: Run, path: str) -> None:
    """The model's weights from checkpoint `path` (its consolidated model file), nothing else."""
    from safetensors.torch import load_file

    if launch_engine() != "ddp":
        raise ConfigError("train.init_weights_only", f"loads a consolidated model file into an unsharded model; "
                          f"under {launch_engine()} branch with the full state (init_weights_only=false)")
    files = [os.path.join(path, "model.safetensors"), os.path.join(path, "model", "model.safetensors")]
    found = next((f for f in files if os.path.exists(f)), None)
    if found is None:
        raise ConfigError("train.init_weights_only", f"{path} has no model.safetensors (a sharded checkpoint); "
                          "branch with the full state, or write checkpoints with train.checkpoint_hf_copy=true")
    model = run.accelerator.unwrap_model(run.model)
    missing, unexpected = model.load_state_dict(load_file(found), strict=False)
    tied = {"lm_head.weight"} if model.config.tie_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ConfigError("train.init_from", f"{found} does not hold this model's weights (missing "
                          f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()


def save(run: Run, step: int) -> str:
    """A resumable checkpoint at `step` (the optimizer in eval mode, as the model is evaluated); never from
    non-finite parameters (the run then stops, and the previous checkpoints stay the last good ones)."""
    engine, acc = run.engine, run.accelerator
    finite = torch.stack([torch.isfinite(p).all() for p in run.model.parameters()]).all()  # one host sync below
    bad = (~finite).float().to(acc.device)
    if acc.reduce(bad, "sum").item() > 0:
        raise RunStopped(f"stopped at step {step}: the parameters are not finite; no checkpoint was written from "
                         f"them (the last good ones are in {os.path.join(run.cfg.run_dir, 'checkpoints')})",
                         EXIT_DIVERGED)
    state = {"step": step, "schedule": run.schedule.state_dict(), "clip": engine.clip.state_dict(),
             "batch_sizes": engine.batches.state_dict(), "engine": engine.state_dict(),
             "noise_scale": engine.noise.state_dict() if engine.noise is not None else {}, "config": run.cfg.to_dict()}
    with run.protocol.evaluating():
        return ckpt.save_checkpoint(acc, run.model, run.cfg.run_dir, step, state, run.loader.state_dict(step),
                                    keep=run.cfg.train.keep_checkpoints, hf_copy=run.cfg.train.checkpoint_hf_copy)


def evaluate(run: Run) -> float:
    """Mean validation loss over the held-out batches of every process (the optimizer in eval mode)."""
    acc, device = run.accelerator, run.accelerator.device
    total, count = torch.zeros((), device=device), torch.zeros((), device=device)
    with run.protocol.evaluating(), torch.no_grad():
        run.model.eval()
        for batch in run.val:
            batch = batch.to(device)
            total += run.fwd_model(input_ids=batch, labels=batch).loss.float() * len(batch)
            count += len(batch)
        run.model.train()
    total, count = acc.reduce(total, "sum"), acc.reduce(count, "sum")
    return (total / count).item()


def export_final(run: Run) -> str:
    """final/: the model in plain Llama format (the optimizer's eval weights), loadable without this package."""
    from .model import save_final

    final_dir = os.path.join(run.cfg.run_dir, "final")
    run.protocol.eval_mode()
    full_state = run.accelerator.get_state_dict(run.model)
    if run.accelerator.is_main_process:
        save_final(run.accelerator.unwrap_model(run.model), final_dir, run.tokenizer, state_dict=full_state)
        run.log(f"final model (Llama format) in {final_dir}")
    run.accelerator.wait_for_everyone()
    return final_dir
