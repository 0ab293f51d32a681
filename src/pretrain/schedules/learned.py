"""The `learned` schedule: replays a per-parameter-group learning-rate schedule learned by reversible
hypergradients (Maclaurin et al. 2015) on a proxy, from the file `python -m pretrain.tools.hyperlearn` writes.

The file (JSON, format "pretrain.learned_schedule/1") holds `total_steps`, `group_key` (the parameter-group key
the schedules are keyed by: "kind", as `pretrain.optim.param_groups` builds groups), `peak_lr` and `lrs`
{group: [lr at step 0, ..., lr at step total_steps - 1]} (the torch-SGD-form lr, momentum fixed), plus what was
learned with it (`learned`: per unit momentum, init scale, weight decay, the proxy) for the record.
Group g trains at `g["initial_lr"] * lrs[g[group_key]][step] / peak_lr`: with optim.lr = the file's peak_lr
this is the learned schedule exactly; another optim.lr rescales every group alike.

A file whose length differs from train.steps, or whose groups differ from the model's parameter groups, is
refused with a ConfigError naming the field.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .registry import Schedule, ScheduleSpec, StepFactor, register

FORMAT = "pretrain.learned_schedule/1"
_HOWTO = ("create one with `python -m pretrain.tools.hyperlearn --steps N --out DIR` (it writes "
          "DIR/learned_schedule.json)")


def save_learned(path, lrs: dict[str, list[float]], *, group_key: str = "kind", learned: dict | None = None) -> dict:
    """Write a learned-schedule file; returns its document."""
    lengths = {len(v) for v in lrs.values()}
    if len(lengths) != 1:
        raise ValueError(f"every group needs the same number of steps, got {sorted(lengths)}")
    peak = max(max(v) for v in lrs.values())
    doc = {"format": FORMAT, "total_steps": lengths.pop(), "group_key": group_key, "peak_lr": float(peak),
           "lrs": {k: [float(x) for x in v] for k, v in lrs.items()}, "learned": learned or {}}
    Path(path).write_text(json.dumps(doc, indent=1))
    return doc


def load_learned(path) -> dict:
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ConfigError("schedule.path", f"learned schedule file {str(p)!r} does not exist; {_HOWTO}")
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError("schedule.path", f"cannot read learned schedule file {str(p)!r}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError("schedule.path", f"{str(p)!r} is not a learned schedule file (format {FORMAT!r}); {_HOWTO}")
    lrs = doc.get("lrs")
    if not isinstance(lrs, dict) or not lrs:
        raise ConfigError("schedule.path", f"{str(p)!r}: 'lrs' must map parameter groups to lists of lrs")
    for k, v in lrs.items():
        if not isinstance(v, list) or len(v) != doc.get("total_steps") or \
                not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in v):
            raise ConfigError("schedule.path", f"{str(p)!r}: lrs[{k!r}] must hold total_steps="
                                               f"{doc.get('total_steps')} finite lrs >= 0")
    if not doc.get("peak_lr", 0) > 0:
        raise ConfigError("schedule.path", f"{str(p)!r}: peak_lr must be > 0, got {doc.get('peak_lr')!r}")
    return doc


class LearnedSchedule(Schedule):
    """Per-group replay of a learned schedule file (see the module doc)."""

    name = "learned"

    def __init__(self, peak_lr: float, total_steps: int, path=None):
        super().__init__(peak_lr, total_steps)
        if path is None or str(path) == "":
            raise ConfigError("schedule.path", f"schedule 'learned' needs the path of a learned schedule file "
                                               f"(schedule.path=...); {_HOWTO}")
        doc = load_learned(path)
        if doc["total_steps"] != self.total_steps:
            raise ConfigError("train.steps", f"the learned schedule {str(path)!r} has total_steps="
                                             f"{doc['total_steps']} but this run has train.steps={self.total_steps}; "
                                             f"learn one with --steps {self.total_steps}")
        self.path, self.group_key = str(path), str(doc.get("group_key", "kind"))
        self.groups = sorted(doc["lrs"])
        self.file_peak_lr = float(doc["peak_lr"])
        self.factors = {k: np.asarray(v, dtype=np.float64) / self.file_peak_lr for k, v in doc["lrs"].items()}
        self.learned = doc.get("learned", {})

    def _index(self, step: int) -> int:
        return min(max(int(step), 0), self.total_steps - 1)

    def factor(self, step: int) -> float:
        """The largest group's factor (the scalar schedule(step)), carrying the per-group factors."""
        i = self._index(step)
        return StepFactor(max(float(f[i]) for f in self.factors.values()), self, step)

    def lr(self, step: int) -> float:
        return self.peak_lr * float(self.factor(step))

    def group_factors(self, step: int, groups: list[dict]) -> list[float]:
        keys = [g.get(self.group_key) for g in groups]
        if set(keys) != set(self.groups):
            raise ConfigError("schedule.path", f"the learned schedule {self.path!r} has parameter groups "
                                               f"{self.groups} ({self.group_key}) but the model's optimizer has "
                                               f"{sorted(map(str, keys))}; learn it for this model's groups",
                              self.groups)
        i = self._index(step)
        return [float(self.factors[k][i]) for k in keys]


register(ScheduleSpec(
    name="learned",
    factory=LearnedSchedule,
    paper="Maclaurin, Duvenaud & Adams 2015, Gradient-based Hyperparameter Optimization through Reversible "
          "Learning (ICML, arXiv 1502.03492)",
    notes="replays a per-parameter-group lr schedule learned by reversible hypergradients on a proxy (path: the "
          "file `python -m pretrain.tools.hyperlearn --steps N --out DIR` writes), each group rescaled by "
          "optim.lr / the file's peak_lr; the file's length must equal train.steps and its groups the model's",
))
