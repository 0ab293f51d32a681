"""The training loop on accelerate (DDP, DeepSpeed ZeRO 1-3, FSDP, one process).

recipe -> validated config -> data, model, parameter groups -> optimizer, schedule, clipping ->
accelerator.prepare -> per step: set lr from the schedule -> micro-batches (gradient accumulation) ->
clip -> optimizer step (with a closure / Hessian estimate where the optimizer asks for one) -> log, eval,
checkpoint. The optimizer's needs are asked from the optimizer object (`requires_closure`,
`hessian_interval`, `has_train_eval`), never by name.
"""
from __future__ import annotations

import contextlib
import math
import os
import time

import torch

from . import checkpoint as ckpt
from .config import RunConfig, world_size_check
from .errors import ConfigError
from .tracking import MetricsWriter, init_wandb, peak_flops


def _pad(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


def make_accelerator(cfg: RunConfig):
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
    use_ds = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    acc = Accelerator(cpu=not on_gpu and not use_ds, mixed_precision=mixed, gradient_accumulation_steps=accum,
                      log_with="wandb" if cfg.log.wandb else None, project_dir=cfg.run_dir, kwargs_handlers=handlers)
    if acc.distributed_type.value == "DEEPSPEED":
        ds = acc.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.train.micro_batch_size
        ds["gradient_accumulation_steps"] = accum
        ds["train_batch_size"] = cfg.train.global_batch_size
        ds["gradient_clipping"] = cfg.clip.max_norm if cfg.clip.policy == "norm" else 0.0
    return acc, accum


def _check_run_dir(cfg: RunConfig) -> str | None:
    """Which checkpoint to start from; refuses to write over an existing run."""
    run_dir = cfg.run_dir
    if cfg.resume == "auto":
        return ckpt.latest_checkpoint(run_dir)
    if cfg.resume != "none":
        return cfg.resume
    if os.path.isdir(run_dir) and any(os.path.exists(os.path.join(run_dir, f)) for f in
                                      ("metrics.jsonl", "checkpoints", "final")):
        raise ConfigError("resume", f"run_dir {run_dir!r} already holds a run; pass resume=auto to continue it, "
                          "or choose another run_dir (nothing there was touched)", ["none", "auto", "<checkpoint dir>"])
    return None


def build_model(cfg: RunConfig, vocab_size: int, eos_id: int):
    from .model import GPT, GPTConfig

    m = cfg.model
    config = GPTConfig(vocab_size=vocab_size, d_model=m.d_model, n_layer=m.n_layer, n_head=m.n_head,
                       n_kv_head=m.n_kv_head, d_ff=m.d_ff, max_seq_len=cfg.train.seq_len, rope_theta=m.rope_theta,
                       norm_eps=m.norm_eps, tie_embeddings=m.tie_embeddings, init_std=m.init_std,
                       bos_token_id=eos_id, eos_token_id=eos_id)
    return GPT(config)


def batch_scaled_lr(cfg: RunConfig, lr: float) -> float:
    """Batch-size lr rules: linear (Goyal et al. 2017) or square root (Malladi et al. 2022)."""
    rule, base = cfg.scaling.batch_lr_rule, cfg.scaling.base_batch_size
    if rule == "none":
        return lr
    k = cfg.train.global_batch_size / base
    return lr * (k if rule == "linear" else math.sqrt(k))


def build_optimization(cfg: RunConfig, model, tokens_per_step: int):
    """(optimizer, schedule) from the registries; fills tokens-per-step keywords the recipe left empty."""
    from .config import schedule_kwargs
    from .optim import OPTIMIZERS, build_optimizer
    from .schedules import build_schedule

    hp = {k: v for k, v in cfg.optim.items() if k != "name"}
    name = cfg.optim["name"]
    spec = OPTIMIZERS[name]
    hp["lr"] = batch_scaled_lr(cfg, hp.get("lr", spec.defaults.get("lr")))
    if "bs" in spec.defaults and hp.get("bs") is None:
        hp["bs"] = tokens_per_step
    optimizer = build_optimizer(name, model, **hp)
    schedule = build_schedule(cfg.schedule["name"], peak_lr=hp["lr"], total_steps=cfg.train.steps,
                              **schedule_kwargs(cfg))
    return optimizer, schedule


def set_lr(optimizer, factor: float) -> None:
    from .optim import unwrap
    for g in unwrap(optimizer).param_groups:
        g["lr"] = g["initial_lr"] * factor


def train(cfg: RunConfig, log=None) -> dict:
    """Run (or resume) the recipe; returns a summary dict (final val loss, steps, run_dir)."""
    from .data import build_data
    from .optim import has_train_eval, hessian_interval, requires_closure, unwrap

    start_from = _check_run_dir(cfg)
    accelerator, accum = make_accelerator(cfg)
    if accelerator.distributed_type.value == "DEEPSPEED":
        _check_deepspeed_support(cfg)
    is_main = accelerator.is_main_process
    log = log or (lambda msg: accelerator.print(msg))
    run_dir = cfg.run_dir
    if is_main:
        os.makedirs(run_dir, exist_ok=True)
        from omegaconf import OmegaConf
        OmegaConf.save(OmegaConf.create(cfg.to_dict()), os.path.join(run_dir, "config.yaml"))
    accelerator.wait_for_everyone()

    from accelerate.utils import set_seed
    set_seed(cfg.seed)
    t = cfg.train
    rank, world = accelerator.process_index, accelerator.num_processes
    with accelerator.main_process_first():
        tokenizer, loader, val = build_data(cfg, rank=rank, world=world, log=log)
    set_seed(cfg.seed)  # identical initialization whatever the data step consumed
    model = build_model(cfg, _pad(len(tokenizer)), tokenizer.eos_token_id)
    tokens_per_step = t.global_batch_size * t.seq_len
    optimizer, schedule = build_optimization(cfg, model, tokens_per_step)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = unwrap(optimizer)
    if _compile_optimizer(cfg, inner, accelerator.distributed_type.value == "DEEPSPEED", accelerator.device.type):
        from .optim.compiled import compile_step
        compile_step(inner)
        log("optimizer step compiled (train.compile_optimizer)")
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    from .model import flops_per_token
    flops_tok = flops_per_token(accelerator.unwrap_model(model).config, t.seq_len)
    peak = peak_flops(accelerator.device)
    fwd_model = torch.compile(model) if t.compile else model

    start = 0
    source = start_from or t.init_from
    if source:
        state, data_state = ckpt.load_checkpoint(accelerator, source)
        start = int(state["step"])
        schedule.load_state_dict(state.get("schedule", {}))
        loader.load_state_dict(data_state, start)
        log(f"resumed from {source} at step {start}")
    if start >= t.steps:
        log(f"nothing to do: checkpoint step {start} >= train.steps {t.steps}")
    if cfg.log.wandb:
        init_wandb(accelerator, cfg, run_dir)
    writer = MetricsWriter(run_dir, enabled=is_main)
    log(f"model: {n_params / 1e6:.2f}M parameters; world {world}, accumulation {accum}, "
        f"{tokens_per_step} tokens/step; optimizer {cfg.optim['name']}, schedule {cfg.schedule['name']}")

    device = accelerator.device
    train_eval = has_train_eval(inner)

    def micro(step, i):
        return loader.micro_batch(step, i).to(device)

    def evaluate() -> float:
        if train_eval:
            inner.eval()
        model.eval()
        total, count = torch.zeros((), device=device), torch.zeros((), device=device)
        with torch.no_grad():
            for batch in val:
                batch = batch.to(device)
                total += fwd_model(input_ids=batch, labels=batch).loss.float() * len(batch)
                count += len(batch)
        total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
        model.train()
        if train_eval:
            inner.train()
        return (total / count).item()

    def closure(step, backward=False):
        """Loss on this step's batch at the current parameters, averaged over micro-batches and ranks;
        with backward=True also recomputes the (synchronized) gradients."""
        if not backward:
            with torch.no_grad():
                loss = sum(fwd_model(input_ids=(b := micro(step, i)), labels=b).loss.float() for i in range(accum))
            return accelerator.reduce(loss / accum, "mean")
        optimizer.zero_grad(set_to_none=False)
        total = 0.0
        for i in range(accum):
            b = micro(step, i)
            ctx = accelerator.no_sync(model) if i < accum - 1 else contextlib.nullcontext()
            with ctx:
                loss = fwd_model(input_ids=b, labels=b).loss
                accelerator.backward(loss)
            total += loss.detach().float()
        return accelerator.reduce(total / accum, "mean")

    def hessian_estimate(step):
        from .optim.sophia import gnb_sampled_loss
        optimizer.zero_grad(set_to_none=True)
        for i in range(accum):
            b = micro(step, i)
            ctx = accelerator.no_sync(model) if i < accum - 1 else contextlib.nullcontext()
            with ctx:
                # accelerator.backward divides by the accumulation steps: the estimate is of the mean loss
                accelerator.backward(gnb_sampled_loss(fwd_model(input_ids=b).logits))
        inner.update_hessian()
        optimizer.zero_grad(set_to_none=True)

    def save(step):
        if train_eval:
            inner.eval()
        state = {"step": step, "schedule": schedule.state_dict(), "config": cfg.to_dict()}
        path = ckpt.save_checkpoint(accelerator, model, run_dir, step, state, loader.state_dict(step),
                                    keep=t.keep_checkpoints)
        if train_eval:
            inner.train()
        return path

    model.train()
    if train_eval:
        inner.train()
    pbar = None
    if is_main and t.progress:
        from tqdm.auto import tqdm
        pbar = tqdm(total=t.steps, initial=start, desc=cfg.recipe, dynamic_ncols=True)
    val_loss = None
    if start == 0 and t.eval_every:
        val_loss = evaluate()
        writer.write({"step": 0, "tokens": 0, "kind": "eval", "val_loss": val_loss, "val_ppl": math.exp(val_loss)})
    is_ds = accelerator.distributed_type.value == "DEEPSPEED"
    t_last, tokens_since, h_every = time.time(), 0, hessian_interval(inner)
    def train_step(step, factor):
        """One optimizer step on global batch `step` with lr factor `factor`: (mean loss, grad norm)."""
        set_lr(optimizer, factor)
        losses = []
        for i in range(accum):
            batch = micro(step, i)
            with accelerator.accumulate(model):
                loss = fwd_model(input_ids=batch, labels=batch).loss
                accelerator.backward(loss)
            losses.append(loss.detach().float())
        grad_norm = None
        if not is_ds:
            max_norm = cfg.clip.max_norm if cfg.clip.policy == "norm" else float("inf")
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
        if requires_closure(inner):
            optimizer.step(lambda backward=False, s=step: closure(s, backward))
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if is_ds:
            grad_norm = model.get_global_grad_norm()
        if h_every and (step + 1) % h_every == 0:
            hessian_estimate(step)
        return accelerator.reduce(torch.stack(losses).mean(), "mean").item(), grad_norm

    def lr_search(step):
        """AutoLRS-style controllers: candidate lrs tried in short runs from the same model, optimizer, RNG and
        data position (restored before each trial and after the search)."""
        snap = _snapshot(accelerator, model, optimizer, loader, step)

        def trial(lr, n_steps):
            _restore(accelerator, model, optimizer, loader, step, snap)
            return [train_step(step + j, lr / schedule.peak_lr)[0] for j in range(min(n_steps, t.steps - step))]

        schedule.search(step, trial)
        _restore(accelerator, model, optimizer, loader, step, snap)

    controller = callable(getattr(schedule, "wants_search", None))
    for step in range(start, t.steps):
        if controller and schedule.wants_search(step):
            lr_search(step)
        loss_val, grad_norm = train_step(step, schedule.factor(step))
        done = step + 1
        tokens_since += tokens_per_step
        if not math.isfinite(loss_val):
            raise FloatingPointError(f"loss is {loss_val} at step {done}; the last checkpoint is kept in {run_dir}")
        if done % cfg.log.log_every == 0 or done == t.steps or done == start + 1:
            now = time.time()
            tps = tokens_since / max(now - t_last, 1e-9)
            t_last, tokens_since = now, 0
            row = {"step": done, "tokens": done * tokens_per_step, "loss": loss_val,
                   "lr": schedule(step), "grad_norm": float(grad_norm) if grad_norm is not None else None,
                   "tokens_per_s": tps, "mfu": (flops_tok * tps / (peak * world)) if peak else None,
                   "epoch": loader.epoch_of(done)}
            for source in (inner, schedule):
                if hasattr(source, "metrics"):
                    row.update({k: float(v) for k, v in source.metrics().items()})
            writer.write(row)
            if cfg.log.wandb:
                accelerator.log(row, step=done)
            if pbar:
                pbar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{tps:.0f}")
        if t.eval_every and (done % t.eval_every == 0 or done == t.steps):
            val_loss = evaluate()
            row = {"step": done, "tokens": done * tokens_per_step, "kind": "eval", "val_loss": val_loss,
                   "val_ppl": math.exp(min(val_loss, 50))}
            writer.write(row)
            if cfg.log.wandb:
                accelerator.log(row, step=done)
            log(f"step {done}: val_loss {val_loss:.4f}")
        if (t.save_every and done % t.save_every == 0) or done == t.steps:
            save(done)
        if pbar:
            pbar.update(1)
    if pbar:
        pbar.close()
    final_dir = os.path.join(run_dir, "final")
    if train_eval:
        inner.eval()
    full_state = accelerator.get_state_dict(model)
    if is_main:
        from .model import save_final
        save_final(accelerator.unwrap_model(model), final_dir, tokenizer, state_dict=full_state)
        log(f"final model (Llama format) in {final_dir}")
    accelerator.wait_for_everyone()
    if cfg.log.wandb:
        accelerator.end_training()
    return {"run_dir": run_dir, "steps": t.steps, "val_loss": val_loss}


def _compile_optimizer(cfg: RunConfig, inner, is_ds: bool, device_type: str = "cpu") -> bool:
    """always: compile; auto: on CPU, where bench/optim_step.py measured the compiled step faster (COMPILE_PAYS)
    and the run is long enough to repay the compile time; never under DeepSpeed (its engine calls the step).

    auto never compiles on a GPU: COMPILE_PAYS is a CPU measurement, and on an H100 with torch 2.11 a compiled
    step of the optimizers written here failed (bench/README.md, "On a GPU"); `always` still compiles there."""
    from .optim import requires_closure
    from .optim.compiled import COMPILE_PAYS
    mode = cfg.train.compile_optimizer
    if mode == "never" or is_ds or requires_closure(inner):
        return False
    if mode == "always":
        return True
    return device_type == "cpu" and COMPILE_PAYS.get(cfg.optim["name"], False) and cfg.train.steps >= 500


def _check_deepspeed_support(cfg: RunConfig) -> None:
    """Before any compute: what the DeepSpeed engine cannot do (it owns the step and the flat partitions)."""
    from .optim import build_optimizer, hessian_interval, requires_closure
    from .schedules import build_schedule
    from .config import schedule_kwargs

    hp = {k: v for k, v in cfg.optim.items() if k != "name"}
    probe = build_optimizer(cfg.optim["name"], [torch.nn.Parameter(torch.zeros(2, 2))], **hp)
    if requires_closure(probe) or hessian_interval(probe):
        raise ConfigError("optim.name", f"{cfg.optim['name']} needs a loss closure or a Hessian estimate, which the "
                          "DeepSpeed engine's step does not provide; use DDP or FSDP")
    if getattr(probe, "needs_matrix_params", False):
        raise ConfigError("optim.name", f"{cfg.optim['name']} updates whole 2-D matrices, which DeepSpeed ZeRO "
                          "flattens into partitions; use DDP or FSDP")
    sched = build_schedule(cfg.schedule["name"], peak_lr=float(hp.get("lr", 1.0) or 1.0),
                           total_steps=cfg.train.steps, **schedule_kwargs(cfg))
    if callable(getattr(sched, "wants_search", None)):
        raise ConfigError("schedule.name", f"{cfg.schedule['name']} restores model and optimizer snapshots, which "
                          "the DeepSpeed engine does not support here; use DDP or FSDP")


def _snapshot(accelerator, model, optimizer, loader, step) -> dict:
    import copy
    import random

    import numpy as np
    return {"model": copy.deepcopy(accelerator.unwrap_model(model).state_dict()),
            "optimizer": copy.deepcopy(optimizer.state_dict()), "data": copy.deepcopy(loader.state_dict(step)),
            "rng": (torch.get_rng_state(), np.random.get_state(), random.getstate(),
                    torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)}


def _restore(accelerator, model, optimizer, loader, step, snap) -> None:
    import copy
    import random

    import numpy as np
    accelerator.unwrap_model(model).load_state_dict(snap["model"])
    optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
    loader.load_state_dict(copy.deepcopy(snap["data"]), step)
    torch.set_rng_state(snap["rng"][0])
    np.random.set_state(snap["rng"][1])
    random.setstate(snap["rng"][2])
    if snap["rng"][3] is not None:
        torch.cuda.set_rng_state_all(snap["rng"][3])
