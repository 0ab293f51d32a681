"""Run tracking: `metrics.jsonl` always (one JSON object per logged step), W&B through accelerate's trackers.

Contract keys of every training row: step, tokens, loss, lr, grad_norm (before clipping), tokens_per_s;
evaluation rows add val_loss (and val_ppl). After a resume, rows for steps past the checkpoint are written
again; `read_metrics` keeps the last row written for each (step, kind), so nothing written is ever deleted.
"""
from __future__ import annotations

import json
import math
import os
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


def init_wandb(accelerator, cfg, run_dir: str) -> None:
    """W&B through accelerate: project, run name, group = recipe, tags (optimizer, schedule, model size)."""
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
    accelerator.init_trackers(cfg.log.project, config=cfg.to_dict(), init_kwargs={"wandb": {
        "name": name, "group": cfg.recipe, "tags": tags, "dir": run_dir, "id": run_id, "resume": "allow"}})


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
        self.tokens_per_step = cfg.train.tokens_per_step
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

    def train_row(self, done: int, loss: float, lr: float, clip: dict) -> None:
        """`clip`: the clipping policy's record of the step (grad_norm before clipping, clip_threshold, clipped,
        clip_fraction over the recent steps)."""
        self.tokens_since += self.tokens_per_step
        if self.pbar:
            self.pbar.update(1)
        self._warn_if_clipping_often(done, clip["clip_fraction"])
        if not (done % self.cfg.log.log_every == 0 or done == self.cfg.train.steps or done == self.start + 1):
            return
        now = time.time()
        tps = self.tokens_since / max(now - self.t_last, 1e-9)
        self.t_last, self.tokens_since = now, 0
        row = {"step": done, "tokens": done * self.tokens_per_step, "loss": loss, "lr": lr, **clip,
               "tokens_per_s": tps, "mfu": (self.flops_per_token * tps / (self.peak * self.acc.num_processes))
               if self.peak else None, "epoch": self.epoch_of(done)}
        for source in self.sources:
            if hasattr(source, "metrics"):
                row.update({k: float(v) for k, v in source.metrics().items()})
        self._write(row)
        if self.pbar:
            self.pbar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}")

    def _warn_if_clipping_often(self, done: int, fraction: float) -> None:
        """Once per RECENT steps, past the first RECENT: a warning when most recent steps were clipped."""
        from .clipping import RECENT
        if done >= RECENT and done % RECENT == 0 and fraction > 0.5:
            self.log(f"warning: {fraction:.0%} of the last {RECENT} steps were clipped (clip.policy="
                     f"{self.cfg.clip.policy}): clipping that often acts as a lower learning rate")

    def eval_row(self, done: int, val_loss: float) -> None:
        self._write({"step": done, "tokens": done * self.tokens_per_step, "kind": "eval", "val_loss": val_loss,
                     "val_ppl": math.exp(min(val_loss, 50))})
        self.log(f"step {done}: val_loss {val_loss:.4f}")

    def close(self) -> None:
        if self.pbar:
            self.pbar.close()
        if self.cfg.log.wandb:
            self.acc.end_training()
