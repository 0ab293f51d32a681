"""Learning-rate schedules: `SCHEDULES` (name -> ScheduleSpec) and `build_schedule(name, *, peak_lr, total_steps, **kw)`.

Importing this package registers every schedule: each module here calls `register(ScheduleSpec(...))`.
"""
import importlib as _importlib
import pkgutil as _pkgutil

from .registry import SCHEDULES, Schedule, ScheduleSpec, build_schedule, get_spec, register, validate_kwargs

for _m in sorted(m.name for m in _pkgutil.iter_modules(__path__)):
    if _m != "registry":
        _importlib.import_module(f"{__name__}.{_m}")

__all__ = ["SCHEDULES", "Schedule", "ScheduleSpec", "build_schedule", "get_spec", "register", "validate_kwargs"]
