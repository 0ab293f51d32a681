"""WSD: warmup-stable-decay (Hu et al. 2024, MiniCPM; Hägele et al. 2024), as transformers' `get_wsd_schedule`.

Conventions (identical in every schedule module of this package: classic.py, wsd.py, power.py)
-----------------------------------------------------------------------------------------------
* `step` is the number of optimizer updates already taken, counted from 0; `schedule(step)` is the lr
  used by update number step+1 (the index of transformers' `LambdaLR` lambdas).
* Warmup is linear over `warmup_steps` = W; WSD warms up from `min_lr_ratio` as transformers'
  `get_wsd_schedule` does: `m + (1 - m) * step / W` for step < W (the other schedules use `step / W`).
* `min_lr_ratio` (m) is the floor as a fraction of the peak; a decay of shape f is `m + (1 - m) * f(q)`.
* `decay_shape` is one of linear, cosine, 1-sqrt, exponential (see `classic.DECAY_SHAPES`).
* `decay_fraction` is the decay length as a fraction of `total_steps`, rounded to whole steps; an explicit
  `decay_steps` overrides it.
* Steps at or past `total_steps` give the value at `total_steps` (here m * peak). A negative step is an error.
* `factor(step)` = `schedule(step) / peak_lr` multiplies each parameter group's `initial_lr`.

The three phases, with D = decay steps and S = total_steps - W - D stable steps:

    step < W:            m + (1 - m) * step / W
    W <= step < W + S:   1
    W + S <= step < T:   m + (1 - m) * f((step - W - S) / D)
    step >= T:           m

so the decay starts at step T - D (value 1) and the last update (step T - 1) uses `m + (1 - m) f((D-1)/D)`.

Branching a cooldown off a running constant-lr run: a run resumed from a stable-phase checkpoint at
step S0 with `decay_steps=D` and `total_steps=S0 + D` gives exactly the stable run's values up to S0
(warmup, then the peak) and then the decay. The stable run may be a `wsd` run with a longer horizon, or a
`constant` run with the same warmup when m = 0 (with m > 0 WSD's warmup starts at m, constant's at 0).
"""
from __future__ import annotations

from .classic import (check_int, check_phases, check_ratio, check_shape, check_step, decay_curve,
                      resolve_decay_steps)
from .registry import Schedule, ScheduleSpec, register


class WSDSchedule(Schedule):
    name = "wsd"

    def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int = 100, min_lr_ratio: float = 0.0,
                 decay_fraction: float = 0.2, decay_shape: str = "1-sqrt", decay_steps: int | None = None):
        super().__init__(peak_lr, total_steps)
        self.warmup_steps = check_int("schedule.warmup_steps", warmup_steps)
        self.min_lr_ratio = check_ratio("schedule.min_lr_ratio", min_lr_ratio)
        self.decay_shape = check_shape(decay_shape)
        self.decay_steps, decay_field = resolve_decay_steps(self.total_steps, decay_fraction, decay_steps)
        self.decay_fraction = float(decay_fraction)
        check_phases(self.total_steps, self.warmup_steps, self.decay_steps, decay_field)
        self.stable_steps = self.total_steps - self.warmup_steps - self.decay_steps
        self.decay_start = self.warmup_steps + self.stable_steps

    def lr(self, step: int) -> float:
        s = min(check_step(step), self.total_steps)
        W, D, m = self.warmup_steps, self.decay_steps, self.min_lr_ratio
        if s < W:
            f = m + (1.0 - m) * float(s) / float(max(1, W))
        elif s < self.decay_start:
            f = 1.0
        elif s < self.total_steps:
            f = m + (1.0 - m) * decay_curve((s - self.decay_start) / max(1, D), self.decay_shape)
        else:
            f = m
        return self.peak_lr * f


register(ScheduleSpec(
    "wsd", WSDSchedule,
    paper="warmup-stable-decay (Hu et al. 2024, MiniCPM); Hägele et al. 2024 recommend 10-20% decay with 1-sqrt",
    notes="transformers get_wsd_schedule value for value (warmup from min_lr_ratio); decay_steps overrides "
          "decay_fraction, for cooldowns branched off a stable run"))
