"""Multi-Power Law (Luo et al. 2025): predict loss curves from the lr schedule, fit the law to runs, and
optimize a schedule under it. Registers the schedule `mpl`, which replays a saved optimized schedule file.

    params, report = fit(load_runs_from_metrics(["runs/const", "runs/cos"]))
    lrs = optimize_schedule(params, total_steps=24000, peak_lr=3e-4, warmup_steps=2160)
    save_schedule("mpl.json", lrs, {"peak_lr": 3e-4, "warmup_steps": 2160, "params": params})
    build_schedule("mpl", peak_lr=3e-4, total_steps=24000, path="mpl.json")

The command line is `python -m pretrain.tools.mpl fit|predict|optimize ...`.
"""
from __future__ import annotations

from pathlib import Path


from ...errors import ConfigError
from ..registry import Schedule, ScheduleSpec, register
from .fit import Run, evaluate, fit, format_report, load_runs_from_metrics
from .law import PAPER_25M, MPLParams, predict, predict_final
from .optimize import compare_final, load_schedule, optimize_schedule, reference_schedules, save_schedule

_HOWTO = ("create one with `python -m pretrain.tools.mpl optimize --params params.json --steps N "
          "--peak-lr X --warmup W --out schedule.json` (params.json from `python -m pretrain.tools.mpl fit "
          "--runs RUN_DIR ... --out params.json`)")


class MPLSchedule(Schedule):
    """Replays an optimized schedule file: lr(step) = lrs[step] * peak_lr / file_peak_lr."""

    name = "mpl"

    def __init__(self, peak_lr: float, total_steps: int, path=None, warmup_steps=None):
        super().__init__(peak_lr, total_steps)
        if path is None or str(path) == "":
            raise ConfigError("schedule.path", f"schedule 'mpl' needs the path of a schedule file "
                                               f"(schedule.path=...); {_HOWTO}")
        p = Path(str(path)).expanduser()
        if not p.is_file():
            raise ConfigError("schedule.path", f"schedule file {str(p)!r} does not exist; {_HOWTO}")
        try:
            doc = load_schedule(p)
        except (OSError, ValueError) as e:
            raise ConfigError("schedule.path", f"cannot read schedule file {str(p)!r}: {e}") from e
        if doc["total_steps"] != self.total_steps:
            raise ConfigError("schedule.path", f"schedule file {str(p)!r} has total_steps={doc['total_steps']} but "
                                               f"this run has total_steps={self.total_steps} (train.steps); "
                                               f"optimize a schedule with --steps {self.total_steps}")
        if doc["peak_lr"] <= 0:
            raise ConfigError("schedule.path", f"schedule file {str(p)!r} has peak_lr={doc['peak_lr']}; must be > 0")
        if warmup_steps is not None and int(warmup_steps) != int(doc["warmup_steps"]):
            raise ConfigError("schedule.warmup_steps", f"{warmup_steps} differs from the schedule file's warmup "
                                                       f"({doc['warmup_steps']}, {str(p)!r}); leave it null or match it")
        self.path = str(p)
        self.file_peak_lr = doc["peak_lr"]
        self.warmup_steps = doc["warmup_steps"]
        self.factors = doc["lrs"] / self.file_peak_lr

    def factor(self, step: int) -> float:
        i = min(max(int(step), 0), self.factors.size - 1)
        return float(self.factors[i])

    def lr(self, step: int) -> float:
        return self.peak_lr * self.factor(step)


register(ScheduleSpec(
    name="mpl",
    factory=MPLSchedule,
    paper="Luo et al. 2025, A Multi-Power Law for Loss Curve Prediction Across Learning Rate Schedules (arXiv 2503.12811)",
    notes="replays a schedule optimized under a fitted Multi-Power Law (path: the file that `python -m "
          "pretrain.tools.mpl optimize --params params.json --steps N --peak-lr X --warmup W --out FILE` writes), "
          "rescaled to the run's peak lr; steps past the file's end keep its last value; warmup_steps, when set, "
          "must equal the file's",
))

__all__ = [
    "MPLParams", "MPLSchedule", "PAPER_25M", "Run", "compare_final", "evaluate", "fit", "format_report",
    "load_runs_from_metrics", "load_schedule", "optimize_schedule", "predict", "predict_final",
    "reference_schedules", "save_schedule",
]
