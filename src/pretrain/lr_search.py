"""The loop's lr search for controller schedules (a `ScheduleSpec` with `controller=True`, e.g. AutoLRS): at a
step where the schedule `wants_search(step)`, candidate lrs are tried in short runs from the same model,
optimizer, data position and RNG (a snapshot restored before each trial and after the search), and the
schedule picks one (`schedule.search(step, trial)`; see schedules/autolrs.py for the protocol).
"""
from __future__ import annotations

import copy
import random

import numpy as np
import torch


class LRSearch:
    def __init__(self, run):
        self.run = run

    def __call__(self, step: int) -> None:
        run, schedule = self.run, self.run.schedule
        if not schedule.wants_search(step):
            return
        snap = snapshot(run, step)

        def trial(lr, n_steps):
            restore(run, step, snap)
            n = min(n_steps, run.cfg.train.steps - step)
            return [run.engine.train_step(step + j, lr / schedule.peak_lr)[0] for j in range(n)]

        schedule.search(step, trial)
        restore(run, step, snap)


def snapshot(run, step: int) -> dict:
    """Model and optimizer state, data position and every RNG, as of `step`."""
    return {"model": copy.deepcopy(run.accelerator.unwrap_model(run.model).state_dict()),
            "optimizer": copy.deepcopy(run.optimizer.state_dict()), "data": copy.deepcopy(run.loader.state_dict(step)),
            "rng": (torch.get_rng_state(), np.random.get_state(), random.getstate(),
                    torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)}


def restore(run, step: int, snap: dict) -> None:
    run.accelerator.unwrap_model(run.model).load_state_dict(snap["model"])
    run.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
    run.loader.load_state_dict(copy.deepcopy(snap["data"]), step)
    torch_rng, np_rng, py_rng, cuda_rng = snap["rng"]
    torch.set_rng_state(torch_rng)
    np.random.set_state(np_rng)
    random.setstate(py_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
