"""The training loop on accelerate (DDP, DeepSpeed ZeRO 1-3, FSDP, one process): one screen of control flow.

recipe -> validated config -> `build.build_run` (accelerator, data, model, optimizer, schedule, step engine) ->
resume -> per step: lr search (controller schedules) -> `engine.train_step` (the step protocol, `step.py`:
micro-batches, clip, optimizer step with whatever the optimizer's spec declares it needs) -> log, eval,
checkpoint -> export `final/`. Each capability enters as one call at one place; nothing here depends on which
optimizer, schedule or engine runs.
"""
from __future__ import annotations

from .build import build_run, evaluate, export_final, resume, save, start_checkpoint
from .config import RunConfig
from .errors import EXIT_PREEMPTED, RunStopped
from .lr_search import LRSearch
from .preemption import StopSignals
from .schedules import get_spec as schedule_spec
from .tracking import RunLog


def train(cfg: RunConfig, log=None) -> dict:
    """Run (or resume) the recipe; returns a summary dict (final val loss, steps, run_dir)."""
    source = start_checkpoint(cfg, log or print)  # checked first: an existing run, a corrupt or foreign checkpoint
    with StopSignals() as stop:  # SIGTERM / SIGUSR1 / SIGINT: save at the next step boundary and exit 75
        run = build_run(cfg, log, stop)
        start = resume(run, source)
        t, schedule = cfg.train, run.schedule
        search = LRSearch(run) if schedule_spec(cfg.schedule["name"]).controller else None
        out = RunLog(run, start)
        run.log(run.describe())
        val_loss = None
        if start == 0 and t.eval_every and run.val:
            val_loss = evaluate(run)
            out.eval_row(0, val_loss)
        for step in range(start, t.steps):
            if search:
                search(step)
            loss, record = run.engine.train_step(step, schedule.factor(step))  # skips non-finite steps
            done = step + 1
            out.train_row(done, loss, record)
            run.engine.check_bad_steps(loss, record)  # train.max_bad_steps non-finite steps in a row: stop (exit 3)
            if t.eval_every and run.val and (done % t.eval_every == 0 or done == t.steps):
                val_loss = evaluate(run)
                out.eval_row(done, val_loss)
            if (t.save_every and done % t.save_every == 0) or done == t.steps or run.engine.stop_now:
                save(run, done)
            if run.engine.stop_now:
                raise RunStopped(f"stopped by {stop.received or 'a signal on another rank'} after step {done}: "
                                 f"checkpoint saved; resume=auto continues", EXIT_PREEMPTED)
        export_final(run)
        out.close()
    return {"run_dir": cfg.run_dir, "steps": t.steps, "val_loss": val_loss}
