"""Preemption: SIGTERM (what SLURM and most schedulers send before a kill), SIGUSR1 (`sbatch --signal`) and
SIGINT (Ctrl-C) ask the run to stop at the next step boundary instead of dying mid-step.

`StopSignals` records the signal; the step engine folds the request into the all-reduce it already does for the
loss (`step.LoopEngine.train_step`), so every rank agrees on the same step without an extra collective; the
loop then saves a checkpoint and raises `RunStopped` with exit code 75 (`errors.EXIT_PREEMPTED`), on which
`launch/slurm.sh` requeues the job and `resume=auto` continues it exactly. A second Ctrl-C stops at once.
"""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopSignals:
    """A context manager: installs the handlers (main thread only) and restores the previous ones on exit."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        return False

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.received is not None
