"""The training loop on accelerate (DDP, DeepSpeed ZeRO 1-3, FSDP, one process): one screen of control flow.

recipe -> validated config -> `build.build_run` (accelerator, data, model, optimizer, schedule, step engine) ->
resume -> per step: lr search (controller schedules) -> `engine.train_step` (the step protocol, `step.py`:
micro-batches, clip, optimizer step with whatever the optimizer's spec declares it needs) -> log, eval,
checkpoint -> export `final/`. Each capability enters as one call at one place; nothing here depends on which
optimizer, schedule or engine runs.
"""
from __future__ import annotations

import math

from .build import build_run, evaluate, export_final, resume, save, start_checkpoint
from .config import RunConfig
from .lr_search import LRSearch
from .schedules import get_spec as schedule_spec
from .tracking import RunLog


def train(cfg: RunConfig, log=None) -> dict:
    """Run (or resume) the recipe; returns a summary dict (final val loss, steps, run_dir)."""
    source = start_checkpoint(cfg) or cfg.train.init_from  # refuses to write over an existing run
    run = build_run(cfg, log)
    start = resume(run, source)
    t, schedule = cfg.train, run.schedule
    search = LRSearch(run) if schedule_spec(cfg.schedule["name"]).controller else None
    out = RunLog(run, start)
    run.log(run.describe())
    val_loss = None
    if start == 0 and t.eval_every:
        val_loss = evaluate(run)
        out.eval_row(0, val_loss)
    for step in range(start, t.steps):
        if search:
            search(step)
        loss, record = run.engine.train_step(step, schedule.factor(step))
        done = step + 1
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {done}; the last checkpoint is kept in {cfg.run_dir}")
        out.train_row(done, loss, record)
        if t.eval_every and (done % t.eval_every == 0 or done == t.steps):
            val_loss = evaluate(run)
            out.eval_row(done, val_loss)
        if (t.save_every and done % t.save_every == 0) or done == t.steps:
            save(run, done)
    export_final(run)
    out.close()
    return {"run_dir": cfg.run_dir, "steps": t.steps, "val_loss": val_loss}
