"""The schedule registry: one place that maps a recipe's `schedule.name` to a learning-rate schedule.

A schedule is a callable `step -> learning rate` (step = number of optimizer steps already taken, from 0;
the value is the lr used by update number step+1). The loop never writes the schedule's value into a
parameter group directly: it sets `group["lr"] = group["initial_lr"] * schedule.factor(step)`, so each
group's own base lr (muP, Muon's two lrs) keeps its ratio to the others.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError, check_number


class Schedule:
    """Base class: subclasses implement `lr(step)`; stateless unless they override state_dict."""

    name = "schedule"

    def __init__(self, peak_lr: float, total_steps: int):
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)

    def lr(self, step: int) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        return float(self.lr(int(step)))

    def factor(self, step: int) -> float:
        """The multiplier on each parameter group's base lr."""
        return self(step) / self.peak_lr if self.peak_lr > 0 else 0.0

    def group_factors(self, step: int, groups: list[dict]) -> list[float] | None:
        """One multiplier per parameter group (a per-group schedule, e.g. `learned`), or None: every group gets
        factor(step). Such a schedule's factor(step) returns a `StepFactor`, which the step's `set_lr` asks."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class StepFactor(float):
    """factor(step) of a per-group schedule: the float the loop logs and passes on, carrying the schedule and
    step so that `step.set_lr` can ask `schedule.group_factors(step, groups)`; multiplying it by a number (a
    batch-size rule's factor) scales every group's factor alike and keeps it a StepFactor."""

    def __new__(cls, value: float, schedule: Schedule, step: int, scale: float = 1.0):
        obj = super().__new__(cls, value)
        obj.schedule, obj.step, obj.scale = schedule, int(step), float(scale)
        return obj

    def __mul__(self, other):
        if isinstance(other, (int, float)):
            return StepFactor(float(self) * other, self.schedule, self.step, self.scale * other)
        return NotImplemented

    __rmul__ = __mul__

    def per_group(self, groups: list[dict]) -> list[float] | None:
        factors = self.schedule.group_factors(self.step, groups)
        return None if factors is None else [f * self.scale for f in factors]


@dataclass(frozen=True)
class ScheduleSpec:
    """A registered schedule. `defaults` (every accepted keyword with its default, the paper's) is read from the
    factory's signature (declared once, there). `controller`: the schedule searches its lr during training
    (`wants_search(step)` / `search(step, trial)`: the loop's lr search restores model and optimizer snapshots)."""
    name: str
    factory: Callable[..., Schedule]  # factory(peak_lr=..., total_steps=..., **kw), keyword defaults declared
    paper: str
    notes: str = ""
    controller: bool = False
    defaults: dict[str, Any] = field(init=False)

    def __post_init__(self):
        params = inspect.signature(self.factory).parameters.values()
        defaults = {p.name: list(p.default) if isinstance(p.default, tuple) else p.default
                    for p in params if p.name not in ("self", "peak_lr", "total_steps")}
        object.__setattr__(self, "defaults", defaults)


SCHEDULES: dict[str, ScheduleSpec] = {}


def register(spec: ScheduleSpec) -> ScheduleSpec:
    if spec.name in SCHEDULES:
        raise KeyError(f"schedule {spec.name!r} registered twice")
    SCHEDULES[spec.name] = spec
    return spec


def get_spec(name: str) -> ScheduleSpec:
    if name not in SCHEDULES:
        raise ConfigError("schedule.name", f"unknown schedule {name!r}", sorted(SCHEDULES), got=name)
    return SCHEDULES[name]


def validate_kwargs(name: str, kw: dict[str, Any]) -> dict[str, Any]:
    spec = get_spec(name)
    for key in kw:
        if key not in spec.defaults:
            raise ConfigError(f"schedule.{key}", f"not a keyword of schedule {name!r}", sorted(spec.defaults), got=key)
    return {**spec.defaults, **kw}


def build_schedule(name: str, *, peak_lr: float, total_steps: int, **kw) -> Schedule:
    """Build the registered schedule `name`; unknown keywords and bad values raise ConfigError."""
    spec = get_spec(name)
    check_number("schedule.peak_lr", peak_lr, lo=0.0)
    if int(total_steps) != total_steps or total_steps < 1:
        raise ConfigError("train.steps", f"total_steps must be a positive integer, got {total_steps!r}")
    merged = validate_kwargs(name, kw)
    return spec.factory(peak_lr=peak_lr, total_steps=int(total_steps), **merged)
