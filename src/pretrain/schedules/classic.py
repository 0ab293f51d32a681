"""The classic learning-rate schedules: constant, linear, cosine, step, inverse_sqrt, one_cycle, power_decay.

Conventions (identical in every schedule module of this package: classic.py, wsd.py, power.py)
-----------------------------------------------------------------------------------------------
* `step` is the number of optimizer updates already taken, counted from 0; `schedule(step)` is the lr
  used by update number step+1. This is the index of transformers' `LambdaLR` lambdas and of torch's
  schedulers after `step` calls to `scheduler.step()`, so values can be compared with them one to one.
* Warmup (keyword `warmup_steps` = W) is linear and follows transformers: factor `step / W` for
  `step < W`, so update 1 uses lr 0 and the peak is first used at `step = W`. `wsd` (and only `wsd`,
  exactly as transformers' `get_wsd_schedule`) warms up from `min_lr_ratio` instead:
  `m + (1 - m) * step / W`. W = 0 means no warmup.
* `min_lr_ratio` (m) is the floor as a fraction of the peak lr; a decay of shape f (f(0) = 1, f(1) = 0)
  is mapped to `m + (1 - m) * f(q)` with q the fraction of the decay phase done.
* `decay_shape` is one of `DECAY_SHAPES`: linear `1 - q`, cosine `(1 + cos(pi q)) / 2`, 1-sqrt
  `1 - sqrt(q)` (Hägele et al. 2024), exponential `(e^(1-q) - 1) / (e - 1)` (an exponential that
  reaches the floor exactly at q = 1, as dolomite-engine's ExponentialScheduler).
* `decay_fraction` is the decay length as a fraction of `total_steps`, rounded to whole steps; an
  explicit `decay_steps` overrides it.
* Steps at or past `total_steps` give the value at `total_steps` (the end of the schedule, held).
  A negative step is an error.
* `factor(step)` = `schedule(step) / peak_lr` is what the training loop multiplies each parameter group's
  `initial_lr` by.

The helpers at the top (`decay_curve`, `check_*`) are shared with `wsd.py` and `power.py`.
"""
from __future__ import annotations

import bisect
import math
from numbers import Integral
from typing import Any, Sequence

from ..errors import ConfigError, check_number, check_range
from .registry import Schedule, ScheduleSpec, register

DECAY_SHAPES = ("linear", "cosine", "1-sqrt", "exponential")


# ----------------------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------------------
def decay_curve(q: float, shape: str) -> float:
    """f(q) for q in [0, 1]: 1 at the start of the decay, 0 at its end."""
    q = min(max(float(q), 0.0), 1.0)
    if shape == "linear":
        return 1.0 - q
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * q))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(q)
    if shape == "exponential":
        return (math.exp(1.0 - q) - 1.0) / (math.e - 1.0)
    raise ConfigError("schedule.decay_shape", f"unknown decay shape {shape!r}", DECAY_SHAPES, got=shape)


def check_shape(shape: Any, field: str = "schedule.decay_shape", allowed: Sequence[str] = DECAY_SHAPES) -> str:
    if shape not in allowed:
        raise ConfigError(field, f"unknown value {shape!r}", allowed, got=shape)
    return shape


def check_int(field: str, value: Any, lo: int | None = 0) -> int:
    """A whole number (an integral float such as 100.0 from a config file is accepted) >= lo."""
    ok = isinstance(value, Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not ok:
        raise ConfigError(field, f"must be an integer, got {value!r}")
    value = int(value)
    check_range(field, value, lo=lo)
    return value


def check_ratio(field: str, value: Any) -> float:
    return check_number(field, value, lo=0.0, hi=1.0)


def check_phases(total_steps: int, warmup_steps: int, decay_steps: int = 0, decay_field: str = "schedule.decay_steps"):
    """warmup_steps + decay_steps must fit in the run."""
    if warmup_steps > total_steps:
        raise ConfigError("schedule.warmup_steps", f"warmup longer than the run: warmup_steps={warmup_steps} > "
                          f"total_steps={total_steps}; allowed: [0, total_steps]")
    if warmup_steps + decay_steps > total_steps:
        raise ConfigError(decay_field, f"warmup and decay longer than the run: warmup_steps={warmup_steps} + "
                          f"decay_steps={decay_steps} > total_steps={total_steps}; allowed: warmup_steps + "
                          f"decay_steps <= total_steps")


def resolve_decay_steps(total_steps: int, decay_fraction: Any, decay_steps: Any) -> tuple[int, str]:
    """(decay length in steps, the field it came from): explicit `decay_steps` wins over the fraction."""
    frac = check_ratio("schedule.decay_fraction", decay_fraction)
    if decay_steps is not None:
        return check_int("schedule.decay_steps", decay_steps), "schedule.decay_steps"
    return int(round(frac * total_steps)), "schedule.decay_fraction"


def check_step(step: int) -> int:
    if step < 0:
        raise ValueError(f"schedule step must be >= 0, got {step}")
    return step


def warmup_factor(step: int, warmup_steps: int) -> float:
    """transformers' linear warmup: step / W (only meaningful for step < W)."""
    return float(step) / float(max(1, warmup_steps))


# ----------------------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------------------
class ConstantSchedule(Schedule):
    """Optional linear warmup (step / W), then the peak lr for the rest of the run."""

    name = "constant"

    def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int = 0):
        super().__init__(peak_lr, total_steps)
        self.warmup_steps = check_int("schedule.warmup_steps", warmup_steps)
        check_phases(self.total_steps, self.warmup_steps)

    def lr(self, step: int) -> float:
        s = min(check_step(step), self.total_steps)
        f = warmup_factor(s, self.warmup_steps) if s < self.warmup_steps else 1.0
        return self.peak_lr * f


class _WarmupDecaySchedule(Schedule):
    """Linear warmup to the peak, then `decay_shape` from step W to `min_lr_ratio * peak` at `total_steps`."""

    shape = "linear"

    def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float):
        super().__init__(peak_lr, total_steps)
        self.warmup_steps = check_int("schedule.warmup_steps", warmup_steps)
        self.min_lr_ratio = check_ratio("schedule.min_lr_ratio", min_lr_ratio)
        check_phases(self.total_steps, self.warmup_steps)

    def lr(self, step: int) -> float:
        s = min(check_step(step), self.total_steps)
        W, T, m = self.warmup_steps, self.total_steps, self.min_lr_ratio
        if s < W:
            return self.peak_lr * warmup_factor(s, W)
        q = (s - W) / max(1, T - W)
        return self.peak_lr * (m + (1.0 - m) * decay_curve(q, self.shape))


class LinearSchedule(_WarmupDecaySchedule):
    """Warmup, then a straight line from the peak at step W to `min_lr_ratio * peak` at `total_steps`.

    With m = 0 this is transformers' `get_linear_schedule_with_warmup` value for value.
    """

    name = "linear"

    shape = "linear"

    def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int = 100, min_lr_ratio: float = 0.0):
        super().__init__(peak_lr, total_steps, warmup_steps, min_lr_ratio)


class CosineSchedule(_WarmupDecaySchedule):
    """Warmup, then a half cosine from the peak at step W to `min_lr_ratio * peak` at `total_steps`.

    transformers' `get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=m)` value for value
    (`get_cosine_schedule_with_warmup` when m = 0).
    """

    name = "cosine"

    shape = "cosine"

    def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int = 100, min_lr_ratio: float = 0.1):
        super().__init__(peak_lr, total_steps, warmup_steps, min_lr_ratio)


class StepSchedule(Schedule):
    """Piecewise constant: the lr is multiplied by `gamma` at each milestone, floored at `min_lr_ratio`.

    * `milestones` (default) are fractions of the run; milestone i is at step `round(milestones[i] * total_steps)`
      and the factor is `gamma ** (number of milestone steps <= step)` (torch `MultiStepLR`).
    * `step_size` (an int, steps), when not null, replaces the milestones: `gamma ** (step // step_size)`
      (torch `StepLR`).
    Steps are counted from 0 of the run (not from the end of warmup); during warmup the factor is step / W.
    """

    name = "step"

    def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int = 0, gamma: float = 0.1,
                 milestones: Sequence[float] | None = (0.5, 0.75), step_size: int | None = None,
                 min_lr_ratio: float = 0.0):
        super().__init__(peak_lr, total_steps)
        self.warmup_steps = check_int("schedule.warmup_steps", warmup_steps)
        self.gamma = check_number("schedule.gamma", gamma, lo=0.0, hi=1.0, lo_open=True)
        self.min_lr_ratio = check_ratio("schedule.min_lr_ratio", min_lr_ratio)
        self.step_size = None if step_size is None else check_int("schedule.step_size", step_size, lo=1)
        if self.step_size is None:
            if milestones is None or isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
                raise ConfigError("schedule.milestones", f"must be a list of fractions of the run in [0, 1] "
                                  f"(or set schedule.step_size), got {milestones!r}")
            fracs = sorted(check_ratio("schedule.milestones", f) for f in milestones)
            self.milestone_steps = [int(round(f * self.total_steps)) for f in fracs]
        else:
            self.milestone_steps = []
        check_phases(self.total_steps, self.warmup_steps)

    def lr(self, step: int) -> float:
        s = min(check_step(step), self.total_steps)
        if s < self.warmup_steps:
            return self.peak_lr * warmup_factor(s, self.warmup_steps)
        k = s // self.step_size if self.step_size is not None else bisect.bisect_right(self.milestone_steps, s)
        return self.peak_lr * max(self.min_lr_ratio, self.gamma ** k)


def _resolve_timescale(timescale: Any, warmup_steps: int) -> int:
    if timescale is None:
        return warmup_steps or 10_000  # transformers' get_inverse_sqrt_schedule default
    return check_int("schedule.timescale", timescale, lo=1)


class PowerDecaySchedule(Schedule):
    """Warmup, then `peak * (1 + (step - W) / timescale) ** -beta`, floored at `min_lr_ratio * peak`.

    The classic eta0 * (1 + t / t0)^-beta with t = step - W and t0 = `timescale` (null: W, or 10_000
    when W = 0, as transformers' inverse-sqrt schedule). With timescale = W this is
    `peak * (step / W) ** -beta`; beta = 0.5 is `inverse_sqrt`, beta = 1 the Robbins-Monro 1/t decay.
    """

    name = "power_decay"

    def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int = 100, beta: float = 0.5,
                 timescale: int | None = None, min_lr_ratio: float = 0.0):
        super().__init__(peak_lr, total_steps)
        self.warmup_steps = check_int("schedule.warmup_steps", warmup_steps)
        self.beta = check_number("schedule.beta", beta, lo=0.0, lo_open=True)
        self.timescale = _resolve_timescale(timescale, self.warmup_steps)
        self.min_lr_ratio = check_ratio("schedule.min_lr_ratio", min_lr_ratio)
        check_phases(self.total_steps, self.warmup_steps)

    def lr(self, step: int) -> float:
        s = min(check_step(step), self.total_steps)
        W = self.warmup_steps
        if s < W:
            return self.peak_lr * warmup_factor(s, W)
        f = (1.0 + (s - W) / self.timescale) ** (-self.beta)
        return self.peak_lr * max(self.min_lr_ratio, f)


class InverseSqrtSchedule(PowerDecaySchedule):
    """Warmup, then `peak * sqrt(timescale / (step - W + timescale))` (Vaswani et al. 2017 / fairseq).

    With the default timescale = W this is `peak * sqrt(W / step)`; with W = 0 the timescale defaults to
    10_000 (transformers' `get_inverse_sqrt_schedule`, which it matches value for value).
    """

    name = "inverse_sqrt"

    def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int = 100, timescale: int | None = None,
                 min_lr_ratio: float = 0.0):
        super().__init__(peak_lr, total_steps, warmup_steps=warmup_steps, beta=0.5, timescale=timescale,
                         min_lr_ratio=min_lr_ratio)


class OneCycleSchedule(Schedule):
    """torch `OneCycleLR` learning rates (the momentum cycling is not a schedule's business here).

    max lr = peak_lr, initial lr = peak / div_factor, final lr = initial / final_div_factor. Two phases:
    initial -> max until step `pct_start * total_steps - 1`, then max -> final at step `total_steps - 1`;
    `three_phase` adds max -> initial before initial -> final, as torch. `anneal_strategy` is `cos` or
    `linear`. Step `total_steps - 1` (the last update) uses the final lr, which is then held.
    """

    name = "one_cycle"

    def __init__(self, peak_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, anneal_strategy: str = "cos", three_phase: bool = False):
        super().__init__(peak_lr, total_steps)
        self.pct_start = check_number("schedule.pct_start", pct_start, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        self.div_factor = check_number("schedule.div_factor", div_factor, lo=0.0, lo_open=True)
        self.final_div_factor = check_number("schedule.final_div_factor", final_div_factor, lo=0.0, lo_open=True)
        self.anneal_strategy = check_shape(anneal_strategy, "schedule.anneal_strategy", ("cos", "linear"))
        if not isinstance(three_phase, bool):
            raise ConfigError("schedule.three_phase", f"must be true or false, got {three_phase!r}")
        self.three_phase = three_phase
        initial = self.peak_lr / self.div_factor
        final = initial / self.final_div_factor
        T, p = self.total_steps, self.pct_start
        if three_phase:
            ends = [float(p * T) - 1, float(2 * p * T) - 2, T - 1]
            levels = [initial, self.peak_lr, initial, final]
        else:
            ends = [float(p * T) - 1, T - 1]
            levels = [initial, self.peak_lr, final]
        starts = [0.0] + ends[:-1]
        if any(e <= s for s, e in zip(starts, ends)):
            raise ConfigError("schedule.pct_start", f"with total_steps={T} and pct_start={p} a phase of the cycle "
                              f"is empty; allowed: pct_start * total_steps > 1 (and < total_steps / 2 + 0.5 "
                              f"with three_phase)")
        self._phases = [(s, e, levels[i], levels[i + 1]) for i, (s, e) in enumerate(zip(starts, ends))]

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def lr(self, step: int) -> float:
        s = min(check_step(step), self.total_steps - 1)
        for i, (start, end, lo, hi) in enumerate(self._phases):
            if s <= end or i == len(self._phases) - 1:
                return self._anneal(lo, hi, (s - start) / (end - start))
        raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------------------
# registration (defaults = the paper's / reference implementation's values)
# ----------------------------------------------------------------------------------------------------------
register(ScheduleSpec(
    "constant", ConstantSchedule,
    paper="constant lr (optional linear warmup, Goyal et al. 2017)",
    notes="for schedule-free optimizers and as the stable run that WSD cooldowns branch from"))
register(ScheduleSpec(
    "linear", LinearSchedule,
    paper="linear decay to zero (Bergsma et al. 2025, 'Straight to Zero'); "
          "transformers get_linear_schedule_with_warmup",
    notes="warmup length is this repo's default for short runs, not a paper value"))
register(ScheduleSpec(
    "cosine", CosineSchedule,
    paper="cosine annealing (Loshchilov & Hutter 2017); decay to 10% of the peak as in Chinchilla "
          "(Hoffmann et al. 2022)",
    notes="transformers get_cosine_with_min_lr_schedule_with_warmup value for value"))
register(ScheduleSpec(
    "step", StepSchedule,
    paper="step decay, lr / 10 at 50% and 75% of training (He et al. 2016; torch MultiStepLR)",
    notes="milestones are fractions of the run; step_size (steps) replaces them when set (torch StepLR)"))
register(ScheduleSpec(
    "inverse_sqrt", InverseSqrtSchedule,
    paper="inverse square root (Vaswani et al. 2017, who warm up 4000 steps; fairseq inverse_sqrt)",
    notes="timescale null = warmup_steps (or 10000 without warmup), as transformers get_inverse_sqrt_schedule"))
register(ScheduleSpec(
    "one_cycle", OneCycleSchedule,
    paper="1cycle (Smith & Topin 2019; torch OneCycleLR defaults)",
    notes="the max lr is the optimizer's lr (peak_lr); lr only: the momentum cycle of torch's OneCycleLR is not "
          "applied"))
register(ScheduleSpec(
    "power_decay", PowerDecaySchedule,
    paper="polynomial decay eta0 * (1 + t/t0)^-beta (Robbins & Monro 1951; beta 0.5 = Vaswani et al. 2017)",
    notes="t = step - warmup_steps, t0 = timescale (null: warmup_steps, or 10000 without warmup)"))
