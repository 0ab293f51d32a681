"""The one error type for bad user input (recipes, hyperparameters, files), and train.py's exit codes.

Exit codes of `train.py` (and `accelerate launch train.py`), what `launch/slurm.sh` acts on:
  0  EXIT_OK         the run finished (or `--help` / `--cfg job` printed what was asked)
  2  EXIT_BAD_INPUT  bad input: one line `config error: <field>: <what is wrong>` on stderr, nothing run,
                     nothing in the run directory touched
  3  EXIT_DIVERGED   `train.max_bad_steps` non-finite steps in a row (NaN/Inf loss or gradient norm, each skipped):
                     one line; the checkpoints in run_dir are the last good ones (none is written from such a state)
  75 EXIT_PREEMPTED  stopped by a signal (SIGTERM, SIGUSR1, SIGINT) at a step boundary after saving a checkpoint;
                     `resume=auto` continues it exactly (75 is sysexits' EX_TEMPFAIL: "try again later")
"""
from __future__ import annotations

import difflib
import math
from numbers import Real
from typing import Iterable

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75


class RunStopped(Exception):
    """The run stopped on purpose, with one line to print and an exit code: preempted (a checkpoint was saved) or
    diverged (train.max_bad_steps non-finite steps in a row; nothing was written from them)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(ValueError):
    """Bad input, reported before any compute: names the field and what is allowed."""

    def __init__(self, field: str, message: str, allowed: Iterable | None = None, got=None):
        self.field = field
        allowed = list(allowed) if allowed is not None else None
        text = f"{field}: {message}"
        if allowed is not None:
            text += f"; allowed: {', '.join(map(str, allowed))}"
            if got is not None:
                close = difflib.get_close_matches(str(got), [str(a) for a in allowed], n=1, cutoff=0.5)
                if close:
                    text += f". Did you mean '{close[0]}'?"
        super().__init__(text)


def check_number(field: str, value, lo=None, hi=None, lo_open=False, hi_open=False) -> float:
    """`value` as a float; ConfigError naming `field` unless it is a real number (not a bool, not NaN) within
    the range (see `check_range`). The one check for numbers that come from a user (recipes, hyperparameters)."""
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(float(value)):
        raise ConfigError(field, f"must be a number, got {value!r}")
    check_range(field, float(value), lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
    return float(value)


def check_range(field: str, value, lo=None, hi=None, lo_open=False, hi_open=False):
    """Raise ConfigError unless lo <= value <= hi (open bounds exclude the end); for values already known to be
    numbers (config fields typed int/float). A value that may be anything goes through `check_number`."""
    ok = True
    if lo is not None:
        ok &= value > lo if lo_open else value >= lo
    if hi is not None:
        ok &= value < hi if hi_open else value <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ConfigError(field, f"{value!r} is out of range; allowed: {left}{lo_s}, {hi_s}{right}")
