"""Run tracking: `metrics.jsonl` always (one JSON object per logged step), W&B through accelerate's trackers.

Contract keys of every training row: step, tokens, loss, lr, grad_norm (before clipping), tokens_per_s;
evaluation rows add val_loss (and val_ppl). After a resume, rows for steps past the checkpoint are written
again; `read_metrics` keeps the last row written for each (step, kind), so nothing written is ever deleted.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time

def peak_flops(device) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA device (`hardware.GPUS`); None where unknown (e.g. CPUs)."""
    from .hardware import gpu_of_device
    gpu = gpu_of_device(device)
    return gpu.peak_flops if gpu else None


class MetricsWriter:
    def __init__(self, run_dir: str, enabled: bool = True):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.enabled = enabled

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()


def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics.jsonl (a file or its run directory), last write winning per (step, kind), by step."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    rows: dict = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                rows[(r.get("step"), r.get("kind", "train"))] = r
    return sorted(rows.values(), key=lambda r: (r.get("step", 0), r.get("kind", "train")))


JOB_TYPES = ("train", "sweep", "coordcheck", "bench")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def run_summary(rows: list[dict], target: float | None = None) -> dict:
    """A run's summary metrics from its rows (`read_metrics`): final and best validation loss, the training loss
    (mean of the last 10 logged rows), steps and tokens reached, median tokens/s and MFU (without the first row
    after a start, which holds start-up time), the last clip fraction and, with `target`, the first evaluation
    step whose validation loss is <= target. None where the rows do not have it (W&B and the compare report)."""
    train = [r for r in rows if r.get("kind", "train") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval" and _finite(r.get("val_loss"))]

    def values(key, rs):
        return [r[key] for r in rs if _finite(r.get(key))]

    def median(key):
        v = values(key, train[1:]) or values(key, train)
        return statistics.median(v) if v else None

    losses, clip = values("loss", train), values("clip_fraction", train)
    steps = [r["step"] for r in rows if _finite(r.get("step"))]
    tokens = values("tokens", rows)
    return {
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "best_val_loss": min(r["val_loss"] for r in evals) if evals else None,
        "final_train_loss": statistics.mean(losses[-10:]) if losses else None,
        "steps": int(max(steps)) if steps else None,
        "tokens": int(max(tokens)) if tokens else None,
        "tokens_per_s": median("tokens_per_s"),
        "mfu": median("mfu"),
        "clip_fraction": clip[-1] if clip else None,
        "steps_to_target": next((int(r["step"]) for r in evals if r["val_loss"] <= target), None)
        if target is not None else None,
    }


def wandb_config(cfg) -> dict:
    """The resolved config plus flat top-level keys to filter and group by in W&B: optimizer, schedule, width,
    depth, batch (sequences), batch_tokens, seq_len, lr, parametrization, params (millions, from the model
    shape: 12 L d^2 + vocab x d)."""
    d = cfg.to_dict()
    m = cfg.model
    parametrization = (d.get("scaling") or {}).get("parametrization") or (d.get("model") or {}).get(
        "parametrization") or "sp"
    return {**d, "optimizer": cfg.optim["name"], "schedule_name": cfg.schedule["name"], "width": m.d_model,
            "depth": m.n_layer, "batch": cfg.train.global_batch_size, "batch_tokens": cfg.train.tokens_per_step,
            "seq_len": cfg.train.seq_len, "lr": cfg.optim.get("lr"), "parametrization": parametrization,
            "params_m": round((12 * m.n_layer * m.d_model ** 2 + cfg.data.vocab_size * m.d_model) / 1e6, 3)}


def job_type_of(cfg) -> str:
    """$PRETRAIN_JOB_TYPE where a tool sets it for the runs it starts, else `log.job_type` (default "train")."""
    job = os.environ.get("PRETRAIN_JOB_TYPE") or cfg.log.job_type
    if job not in JOB_TYPES:
        from .errors import ConfigError
        raise ConfigError("log.job_type", f"unknown job type {job!r}", list(JOB_TYPES))
    return job


def init_wandb(accelerator, cfg, run_dir: str) -> None:
    """W&B through accelerate: project, run name, group = recipe, job_type (train / sweep / coordcheck / bench),
    tags (optimizer, schedule, model size), the config with flat keys (`wandb_config`)."""
    id_file = os.path.join(run_dir, "wandb_id.txt")
    if os.path.exists(id_file):
        run_id = open(id_file).read().strip()
    else:
        import uuid
        run_id = uuid.uuid4().hex[:8]
        if accelerator.is_main_process:
            with open(id_file, "w") as f:
                f.write(run_id)
    name = cfg.log.run_name or os.path.basename(os.path.abspath(run_dir))
    tags = [f"optim:{cfg.optim['name']}", f"schedule:{cfg.schedule['name']}", f"model:{cfg.model.name}",
            *cfg.log.tags]
    accelerator.init_trackers(cfg.log.project, config=wandb_config(cfg), init_kwargs={"wandb": {
        "name": name, "group": cfg.recipe, "job_type": job_type_of(cfg), "tags": tags, "dir": run_dir, "id": run_id,
        "resume": "allow"}})


def wandb_summary(accelerator, run_dir: str, target: float | None = None) -> dict:
    """Write `run_summary` of the run's metrics.jsonl into the W&B run's summary (main process); returns it."""
    if not accelerator.is_main_process:
        return {}
    summary = {k: v for k, v in run_summary(read_metrics(run_dir), target).items() if v is not None}
    accelerator.get_tracker("wandb", unwrap=True).summary.update(summary)
    return summary


class RunLog:
    """The loop's rows: `metrics.jsonl` (main process), W&B (`log.wandb`), the progress bar. `train_row` is called
    every step (it counts tokens for tokens/s) and writes a row every `log.log_every` steps, at the first step
    after (re)start and at the last; `eval_row` writes an evaluation row (val_loss, val_ppl)."""

    def __init__(self, run, start: int):
        from .model import flops_per_token
        from .optim import unwrap

        cfg, acc = run.cfg, run.accelerator
        self.cfg, self.acc, self.log, self.start = cfg, acc, run.log, start
        self.writer = MetricsWriter(cfg.run_dir, enabled=acc.is_main_process)
        if cfg.log.wandb:
            init_wandb(acc, cfg, cfg.run_dir)
        self.batches, self.noise = run.engine.batches, run.engine.noise
        self.flops_per_token = flops_per_token(acc.unwrap_model(run.model).config, cfg.train.seq_len)
        self.peak = peak_flops(acc.device)
        self.sources = (unwrap(run.optimizer), run.schedule)  # whatever has metrics() adds them to the row
        self.epoch_of = run.loader.epoch_of
        self.t_last, self.tokens_since = time.time(), 0
        self.pbar = None
        if acc.is_main_process and cfg.train.progress:
            from tqdm.auto import tqdm
            self.pbar = tqdm(total=cfg.train.steps, initial=start, desc=cfg.recipe, dynamic_ncols=True)

    def _write(self, row: dict) -> None:
        self.writer.write(row)
        if self.cfg.log.wandb:
            self.acc.log(row, step=row["step"])

    def train_row(self, done: int, loss: float, record: dict) -> None:
        """`record`: the step's (`step.LoopEngine.train_step`): the lr applied, batch_size, and the clipping policy's
        grad_norm before clipping, clip_threshold, clipped, clip_fraction over the recent steps."""
        self.tokens_since += record["batch_size"] * self.batches.seq_len
        if self.pbar:
            self.pbar.update(1)
        self._warn_if_clipping_often(done, record["clip_fraction"])
        if not (done % self.cfg.log.log_every == 0 or done == self.cfg.train.steps or done == self.start + 1):
            return
        now = time.time()
        tps = self.tokens_since / max(now - self.t_last, 1e-9)
        self.t_last, self.tokens_since = now, 0
        row = {"step": done, "tokens": self.batches.tokens(done), "loss": loss, **record,
               "tokens_per_s": tps, "mfu": (self.flops_per_token * tps / (self.peak * self.acc.num_processes))
               if self.peak else None, "epoch": self.epoch_of(done)}
        if self.noise is not None and self.noise.n:
            row["b_noise"] = self.noise.value()  # tokens (pretrain.noise_scale)
        for source in self.sources:
            if hasattr(source, "metrics"):
                row.update({k: float(v) for k, v in source.metrics().items()})
        self._write(row)
        if self.pbar:
            self.pbar.set_postfix(loss=f"{loss:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{tps:.0f}")

    def _warn_if_clipping_often(self, done: int, fraction: float) -> None:
        """Once per RECENT steps, past the first RECENT: a warning when most recent steps were clipped."""
        from .clipping import RECENT
        if done >= RECENT and done % RECENT == 0 and fraction > 0.5:
            self.log(f"warning: {fraction:.0%} of the last {RECENT} steps were clipped (clip.policy="
                     f"{self.cfg.clip.policy}): clipping that often acts as a lower learning rate")

    def eval_row(self, done: int, val_loss: float) -> None:
        self._write({"step": done, "tokens": self.batches.tokens(done), "kind": "eval", "val_loss": val_loss,
                     "val_ppl": math.exp(min(val_loss, 50))})
        self.log(f"step {done}: val_loss {val_loss:.4f}")

    def close(self) -> None:
        if self.pbar:
            self.pbar.close()
        if self.cfg.log.wandb:
            wandb_summary(self.acc, self.cfg.run_dir, self.cfg.log.target_loss)
            self.acc.end_training()
