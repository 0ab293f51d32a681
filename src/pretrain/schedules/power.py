"""The Power scheduler (Shen et al. 2024, "Power Scheduler: A Batch Size and Token Number Agnostic Learning
Rate Scheduler", arXiv 2408.13359; reference implementation `PowerScheduler` in IBM/dolomite-engine).

Conventions (identical in every schedule module of this package: classic.py, wsd.py, power.py)
-----------------------------------------------------------------------------------------------
* `step` is the number of optimizer updates already taken, counted from 0; `schedule(step)` is the lr
  used by update number step+1 (the index of transformers' `LambdaLR` lambdas).
* Warmup is linear over `warmup_steps` = W: `step / W` times the value reached at the end of warmup.
* `min_lr_ratio` (m) is the floor; a decay of shape f is `m + (1 - m) * f(q)`. Here the decay scales the
  lr at the start of the decay phase (the paper's `f(n) * eta_power(N - N_decay)`), so m is a fraction of
  that lr, which is the peak only if the power law is still capped there.
* `decay_shape` is one of linear, cosine, 1-sqrt, exponential (see `classic.DECAY_SHAPES`).
* `decay_fraction` is the decay length as a fraction of `total_steps`, rounded to whole steps; an explicit
  `decay_steps` overrides it.
* Steps at or past `total_steps` give the value at `total_steps`. A negative step is an error.
* `factor(step)` = `schedule(step) / peak_lr` multiplies each parameter group's `initial_lr`.

The schedule, with tokens(step) = step * tokens_per_step, peak_lr = lr_max, N_s = total_steps - D:

    eta_power(step) = min(lr_max, batch_size * a * tokens(step) ** b)      (lr_max at tokens = 0)
    step < W:            step / W * eta_power(W)
    W <= step < N_s:     eta_power(step)
    N_s <= step < T:     eta_power(N_s) * (m + (1 - m) * f((step - N_s) / D))
    step >= T:           eta_power(N_s) * m

* `batch_size` is the batch size in *sequences* per optimizer step and `tokens_per_step` the tokens per
  optimizer step (batch_size * seq_len for packed data). The paper's fit (a = 4, b = -0.51, lr_max = 0.02
  with muP) counts batch size in sequences of 4096 tokens: e.g. 1024 sequences at 1T tokens give
  1024 * 4 * 1e12^-0.51 ≈ 3e-3, whereas a batch counted in tokens would give an absurd lr. With another
  sequence length, `a` does not transfer as is. Both are required; the training loop fills them from the
  recipe (train.global_batch_size, global_batch_size * seq_len) when they are null.
* The warmup and the power law follow dolomite-engine's `PowerScheduler` (its `a` is our batch_size * a and
  its `c` our tokens_per_step; the warmup ends at `min(lr_max, power law at W)`). dolomite's class has no
  decay phase; the paper runs the decay as a separate stage with its exponential scheduler, which is the
  default `decay_shape: exponential` here (dolomite's `ExponentialScheduler`: an exponential from 1 to
  the floor over the decay steps).
"""
from __future__ import annotations

from ..errors import ConfigError, check_number
from .classic import (check_int, check_phases, check_ratio, check_shape, check_step, decay_curve,
                      resolve_decay_steps)
from .registry import Schedule, ScheduleSpec, register


class PowerSchedule(Schedule):
    name = "power"

    def __init__(self, peak_lr: float, total_steps: int, a: float = 4.0, b: float = -0.51,
                 batch_size: int | None = None, tokens_per_step: int | None = None, warmup_steps: int = 100,
                 decay_fraction: float = 0.1, decay_steps: int | None = None, decay_shape: str = "exponential",
                 min_lr_ratio: float = 0.0):
        super().__init__(peak_lr, total_steps)
        self.a = check_number("schedule.a", a, lo=0.0, lo_open=True)
        self.b = check_number("schedule.b", b, hi=0.0, hi_open=True)
        for key, value in (("batch_size", batch_size), ("tokens_per_step", tokens_per_step)):
            if value is None:
                raise ConfigError(f"schedule.{key}", "required by the power schedule (the training loop fills it "
                                  "from the recipe's train section; set it when building the schedule by hand)")
        self.batch_size = check_int("schedule.batch_size", batch_size, lo=1)
        self.tokens_per_step = check_int("schedule.tokens_per_step", tokens_per_step, lo=1)
        self.warmup_steps = check_int("schedule.warmup_steps", warmup_steps)
        self.decay_shape = check_shape(decay_shape)
        self.min_lr_ratio = check_ratio("schedule.min_lr_ratio", min_lr_ratio)
        self.decay_steps, decay_field = resolve_decay_steps(self.total_steps, decay_fraction, decay_steps)
        self.decay_fraction = float(decay_fraction)
        check_phases(self.total_steps, self.warmup_steps, self.decay_steps, decay_field)
        self.decay_start = self.total_steps - self.decay_steps

    def tokens(self, step: int) -> int:
        return step * self.tokens_per_step

    def power_lr(self, step: int) -> float:
        """min(lr_max, batch_size * a * tokens**b); lr_max when no token has been seen."""
        n = self.tokens(step)
        if n <= 0:
            return self.peak_lr
        return min(self.peak_lr, self.batch_size * self.a * float(n) ** self.b)

    def lr(self, step: int) -> float:
        s = min(check_step(step), self.total_steps)
        W, D, m = self.warmup_steps, self.decay_steps, self.min_lr_ratio
        if s < W:
            return float(s) / float(W) * self.power_lr(W)
        if s < self.decay_start:
            return self.power_lr(s)
        base = self.power_lr(self.decay_start)
        if s < self.total_steps:
            return base * (m + (1.0 - m) * decay_curve((s - self.decay_start) / max(1, D), self.decay_shape))
        return base * m


register(ScheduleSpec(
    "power", PowerSchedule,
    paper="Power scheduler (Shen et al. 2024, arXiv 2408.13359): lr = min(lr_max, batch_size * a * tokens^b), "
          "a = 4, b = -0.51, lr_max = 0.02 with muP, decay over the last ~10%",
    notes="peak_lr is lr_max; batch_size in sequences and tokens_per_step are filled by the training loop "
          "when null; warmup/power law as dolomite-engine PowerScheduler, decay as its ExponentialScheduler"))
