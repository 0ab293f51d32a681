"""Schedule pre-selection from small runs: rank candidate lr schedules before the big run, with two predictors side
by side, a bootstrap uncertainty and a divergence flag learned from the small runs that diverged.

Seed: Opt-Laws (Xie et al., arXiv 2409.04777) predicts the final loss from the lr schedule with features from an
SDE analysis and flags divergence. Only its abstract is readable here, so the feature regression below is THIS
PROJECT'S READING of Opt-Laws, not its method:

* features of a schedule eta_0..eta_{T-1} (eta_t = the lr of update t+1, warmup included), `schedule_features`:
  S1 = sum_t eta_t; S2 = sum_t eta_t^2; annealing area = sum_{k>=1} (eta_{k-1} - eta_k)^+; discounted noise
  N_c = sum_t eta_t^2 exp(-c sum_{s>t} eta_s) (the gradient noise injected at step t, forgotten at rate c per unit
  of lr area that follows it); peak lr = max_t eta_t; warmup length W (steps).
* model: final validation loss = w . z + b with z = (log S1, S2, area, N_c, log peak, W), each standardized on the
  fit runs, ridge penalty lam on w; c and lam are chosen by leave-one-configuration-out cross-validation.

The other predictor is the Multi-Power Law (Luo et al. 2025; `pretrain.schedules.mpl`), fitted to the validation
curves of the same runs and evaluated at the last step of each candidate; its "mpl" family (a schedule optimized
under the fitted law) is one of the candidate families.

Uncertainty: each predictor is refitted on bootstrap resamples of the runs (with replacement); every candidate
gets the resamples' std, a 5-95% interval, and the fraction of resamples in which it is the predicted best.

Divergence flag: a run diverged if its loss became non-finite, it stopped before train.steps (the loop stops a run
whose loss is not finite), or its loss rose above its initial value (validation loss above the step-0 value, or a
5-step moving average of the training loss after the warmup above the first training loss, each by more than 5%).
An L2-regularized logistic regression on (log peak lr reached, log(1 + warmup)) is fitted to diverged vs not; a
candidate is flagged when its probability > 0.5.
The loss predictors are fitted on the runs that did not diverge.
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError

FEATURES = ("log_S1", "S2", "area", "noise", "log_peak", "warmup")
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
LAM_GRID = (1e-3, 1e-2, 1e-1, 1.0)
# the keys that must agree between runs fitted together: one model, one optimizer, one token budget
SAME_KEYS = ("model.d_model", "model.n_layer", "model.n_head", "model.n_kv_head", "model.d_ff",
             "model.tie_embeddings", "data.vocab_size", "optim.name", "train.seq_len", "train.global_batch_size",
             "train.steps")
MIN_REGRESSION_RUNS = len(FEATURES) + 2
GRID_KEYS = ("steps", "families", "peak_lr", "warmup_steps", "mpl")


# ------------------------------------------------------------------------------------------------------------
# features
# ------------------------------------------------------------------------------------------------------------

def schedule_features(lrs, warmup_steps: int, c: float) -> dict:
    """The six features of one schedule (see the module docstring); `lrs[t]` = lr of update t+1."""
    eta = np.asarray(lrs, dtype=np.float64).reshape(-1)
    after = np.concatenate([np.cumsum(eta[::-1])[::-1][1:], [0.0]])  # sum_{s>t} eta_s
    return {
        "S1": float(eta.sum()),
        "S2": float((eta ** 2).sum()),
        "area": float(np.clip(eta[:-1] - eta[1:], 0.0, None).sum()),
        "noise": float((eta ** 2 * np.exp(-c * after)).sum()),
        "peak": float(eta.max()),
        "warmup": float(warmup_steps),
    }


def design_row(lrs, warmup_steps: int, c: float) -> np.ndarray:
    f = schedule_features(lrs, warmup_steps, c)
    return np.array([math.log(max(f["S1"], 1e-30)), f["S2"], f["area"], f["noise"],
                     math.log(max(f["peak"], 1e-30)), f["warmup"]])


# ------------------------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------------------------

@dataclass
class RunRecord:
    """One small run: its schedule (lrs[t] = lr of update t+1), validation curve, final loss and divergence."""

    name: str
    lrs: np.ndarray
    warmup: int
    peak: float
    val_steps: np.ndarray
    val_losses: np.ndarray
    diverged: bool = False
    reason: str = ""
    config: dict = field(default_factory=dict)
    group: str = ""  # the configuration (runs that differ only in seed share it); default: the name

    @property
    def final_loss(self) -> float:
        T = self.lrs.size
        hit = np.flatnonzero(self.val_steps == T)
        return float(self.val_losses[hit[-1]]) if hit.size else float("nan")

    def mpl_run(self):
        """The run in the Multi-Power Law's indexing (as `mpl.load_runs_from_metrics` reads a log_every=1 run:
        index s holds the lr logged at step s, i.e. lrs[s-1], and index 0 is 0 after a warmup)."""
        from .schedules.mpl import Run
        head = 0.0 if self.warmup > 0 else float(self.lrs[0])
        return Run(np.concatenate([[head], self.lrs]), self.val_steps, self.val_losses, self.warmup, self.name)


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _moving_average(y: np.ndarray, w: int) -> np.ndarray:
    if y.size < w:
        return y
    return np.convolve(y, np.ones(w) / w, mode="valid")


RISE = 0.05  # "rose above its initial value": by more than 5% (the noise of a 5-step mean of per-batch losses is ~1%)


def divergence(train_losses: np.ndarray, train_steps: np.ndarray, val_losses: np.ndarray, val_steps: np.ndarray,
               total_steps: int, warmup: int = 0) -> tuple[bool, str]:
    """(diverged, reason) by the rule in the module docstring. The training loss counts only after the warmup: while
    the lr is still near 0 a 5-step mean of per-batch losses wanders around the initial value."""
    if train_losses.size and not np.all(np.isfinite(train_losses)):
        return True, f"non-finite loss at step {int(train_steps[~np.isfinite(train_losses)][0])}"
    last = int(train_steps.max()) if train_steps.size else 0
    if last < total_steps:
        return True, f"stopped at step {last} of {total_steps}"
    if val_losses.size > 1 and val_steps[0] == 0 and np.nanmax(val_losses[1:]) > (1 + RISE) * val_losses[0]:
        return True, f"validation loss rose above its initial value {val_losses[0]:.3f} by more than {RISE:.0%}"
    if train_losses.size > 5:
        ma = _moving_average(train_losses, 5)
        after = ma[train_steps[4:] > warmup]
        if after.size and after.max() > (1 + RISE) * train_losses[0]:
            return True, f"training loss rose above its initial value {train_losses[0]:.3f} by more than {RISE:.0%}"
    return False, ""


def _schedule_of_config(cfg_dict: dict):
    """(lrs, warmup, peak) rebuilt from a run's resolved config."""
    from .config import build_run_schedule, from_dict
    cfg = from_dict(cfg_dict)
    sched = build_run_schedule(cfg)
    lrs = np.array([sched(i) for i in range(cfg.train.steps)], dtype=np.float64)
    return lrs, int(getattr(sched, "warmup_steps", 0) or 0), float(sched.peak_lr)


def load_run(path) -> RunRecord:
    """A run directory (config.yaml + metrics.jsonl) as a RunRecord."""
    import yaml

    from .tracking import read_metrics

    d = Path(path)
    if not (d / "config.yaml").is_file() or not (d / "metrics.jsonl").is_file():
        raise ConfigError("runs", f"{str(d)!r} is not a run directory (needs config.yaml and metrics.jsonl)")
    cfg = yaml.safe_load((d / "config.yaml").read_text()) or {}
    rows = read_metrics(str(d))
    tr = [r for r in rows if r.get("kind", "train") == "train" and "loss" in r]
    ev = [r for r in rows if r.get("kind") == "eval" and r.get("val_loss") is not None]
    t_steps = np.array([int(r["step"]) for r in tr], dtype=np.int64)
    t_loss = np.array([np.nan if r["loss"] is None else float(r["loss"]) for r in tr])
    v_steps = np.array([int(r["step"]) for r in ev], dtype=np.int64)
    v_loss = np.array([float(r["val_loss"]) for r in ev])
    lrs, warmup, _ = _schedule_of_config(cfg)
    peak = float(lrs.max())  # the lr reached (the power schedule caps its nominal peak)
    diverged, reason = divergence(t_loss, t_steps, v_loss, v_steps, lrs.size, warmup)
    group = json.dumps({"schedule": cfg.get("schedule"), "lr": _get(cfg, "optim.lr")}, sort_keys=True)
    return RunRecord(d.name, lrs, warmup, peak, v_steps, v_loss, diverged, reason, cfg, group=group)


def check_compatible(runs: Sequence[RunRecord]) -> None:
    """One model, optimizer and token budget in one fit: else ConfigError naming the first key that differs."""
    ref = next((r for r in runs if r.config), None)
    if ref is None:
        return
    for r in runs:
        if not r.config:
            continue
        for key in SAME_KEYS:
            a, b = _get(ref.config, key), _get(r.config, key)
            if a != b:
                what = "token budget" if key.startswith("train.") else "model" if key.startswith(("model", "data")) \
                    else "optimizer"
                raise ConfigError(key, f"runs {ref.name!r} ({key}={a!r}) and {r.name!r} ({key}={b!r}) differ in their "
                                       f"{what}; one fit takes runs of one model, optimizer and token budget")


# ------------------------------------------------------------------------------------------------------------
# candidates
# ------------------------------------------------------------------------------------------------------------

@dataclass
class Candidate:
    name: str
    family: str
    schedule: str  # registered schedule name, or "mpl" (optimized under the fitted Multi-Power Law)
    kw: dict
    peak: float
    warmup: int
    lrs: np.ndarray | None = None  # the per-step lrs when already known (e.g. a trained schedule file)


def _as_list(value, fld: str, kind) -> list:
    vals = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in vals:
        if kind is int:
            if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and float(v).is_integer())) \
                    or v < 0:
                raise ConfigError(fld, f"must be a non-negative integer or a list of them, got {v!r}")
            out.append(int(v))
        else:
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    pass
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(fld, f"must be a positive number or a list of them, got {v!r}")
            out.append(float(v))
    if not out:
        raise ConfigError(fld, "is empty")
    return out


def parse_grid(doc) -> tuple[list[Candidate], dict]:
    """A candidate grid (dict or YAML path) -> (candidates, grid options). Every family x peak_lr x warmup_steps.

        steps: 200                 # optional: must equal the runs' train.steps
        peak_lr: [2e-3, 5e-3]
        warmup_steps: [12]
        families:                  # name -> {schedule: <registered name or mpl>, <schedule keywords>}
          cosine: {schedule: cosine, min_lr_ratio: 0.1}
          wsd_1sqrt: {schedule: wsd, decay_fraction: 0.2, decay_shape: 1-sqrt}
          mpl: {schedule: mpl}     # optimized under the fitted Multi-Power Law at each peak and warmup
        mpl: {iters: 2000, min_lr: 1e-10}   # optional: optimize_schedule settings
    """
    from .schedules import SCHEDULES

    if isinstance(doc, (str, Path)):
        import yaml
        p = Path(doc)
        if not p.is_file():
            raise ConfigError("candidates", f"no candidate grid file {str(p)!r}")
        doc = yaml.safe_load(p.read_text())
    if not isinstance(doc, dict):
        raise ConfigError("candidates", "a candidate grid is a mapping with families, peak_lr, warmup_steps")
    for key in doc:
        if key not in GRID_KEYS:
            raise ConfigError(f"candidates.{key}", "unknown key", GRID_KEYS, got=key)
    fams = doc.get("families")
    if not isinstance(fams, dict) or not fams:
        raise ConfigError("candidates.families", "needs at least one family: name -> {schedule: NAME, ...keywords}")
    if "peak_lr" not in doc:
        raise ConfigError("candidates.peak_lr", "required: a peak lr or a list of them")
    peaks = _as_list(doc["peak_lr"], "candidates.peak_lr", float)
    warmups = _as_list(doc.get("warmup_steps", 0), "candidates.warmup_steps", int)
    steps = doc.get("steps")
    if steps is not None:
        steps = _as_list(steps, "candidates.steps", int)[0]
    mpl_opts = doc.get("mpl") or {}
    allowed_mpl = ("iters", "min_lr")
    for key in mpl_opts:
        if key not in allowed_mpl:
            raise ConfigError(f"candidates.mpl.{key}", "unknown key", allowed_mpl, got=key)
    names = sorted(set(SCHEDULES) | {"mpl"})
    out = []
    for fam, spec in fams.items():
        base = f"candidates.families.{fam}"
        if not isinstance(spec, dict) or "schedule" not in spec:
            raise ConfigError(f"{base}.schedule", "each family names its schedule: {schedule: NAME, ...keywords}")
        sched = spec["schedule"]
        if sched not in names:
            raise ConfigError(f"{base}.schedule", f"unknown schedule {sched!r}", names, got=sched)
        kw = {k: v for k, v in spec.items() if k != "schedule"}
        allowed = [] if sched == "mpl" else [k for k in SCHEDULES[sched].defaults if k != "warmup_steps"]
        for k in kw:
            if k not in allowed:
                raise ConfigError(f"{base}.{k}", f"not a keyword of schedule {sched!r}"
                                  + (" (its schedule is optimized under the fitted law)" if sched == "mpl" else "")
                                  + ("; warmup_steps comes from candidates.warmup_steps" if k == "warmup_steps" else ""),
                                  allowed, got=k)
        for p in peaks:
            for w in warmups:
                out.append(Candidate(f"{fam}_lr{p:g}_w{w}", fam, sched, dict(kw), p, w))
    return out, {"steps": steps, "mpl": dict(mpl_opts)}


def candidate_lrs(c: Candidate, total_steps: int, fill: dict | None = None, mpl_params=None,
                  mpl_opts: dict | None = None) -> np.ndarray:
    """Per-step lrs of a candidate (lrs[t] = lr of update t+1). fill: tokens_per_step / batch_size for schedules
    that need them (power). mpl candidates need the fitted law's parameters."""
    if c.lrs is not None:
        return np.asarray(c.lrs, dtype=np.float64)
    if c.schedule == "mpl":
        if mpl_params is None:
            raise ValueError("an mpl candidate needs fitted Multi-Power-Law parameters")
        return mpl_candidate_lrs(mpl_params, total_steps, c.peak, c.warmup, **(mpl_opts or {}))
    from .schedules import SCHEDULES, build_schedule
    kw = dict(c.kw)
    for k, v in (fill or {}).items():
        if k in SCHEDULES[c.schedule].defaults and kw.get(k, SCHEDULES[c.schedule].defaults[k]) is None:
            kw[k] = v
    try:
        s = build_schedule(c.schedule, peak_lr=c.peak, total_steps=total_steps, warmup_steps=c.warmup, **kw)
    except ConfigError as e:
        raise ConfigError(f"candidates.families.{c.family}", str(e)) from None
    return np.array([s(i) for i in range(total_steps)], dtype=np.float64)


def mpl_candidate_lrs(params, total_steps: int, peak: float, warmup: int, iters: int = 2000,
                      min_lr: float = 1e-10) -> np.ndarray:
    from .schedules.mpl import optimize_schedule
    return optimize_schedule(params, total_steps, peak, warmup, min_lr=min_lr, iters=iters)


# ------------------------------------------------------------------------------------------------------------
# predictors
# ------------------------------------------------------------------------------------------------------------

def _ridge(X: np.ndarray, y: np.ndarray, lam: float):
    mu, sd = X.mean(0), X.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    Z = (X - mu) / sd
    n, k = Z.shape
    ym = y.mean()
    w = np.linalg.solve(Z.T @ Z + lam * n * np.eye(k), Z.T @ (y - ym))
    return mu, sd, w, ym


class FeatureRegression:
    """Final loss = ridge regression on the standardized features (this project's reading of Opt-Laws)."""

    name = "features"

    def __init__(self, c: float | None = None, lam: float | None = None):
        self.c, self.lam = c, lam

    def fit(self, runs: Sequence[RunRecord]) -> FeatureRegression:
        runs = [r for r in runs if not r.diverged]
        if len(runs) < MIN_REGRESSION_RUNS:
            raise ConfigError("runs", f"the feature regression needs at least {MIN_REGRESSION_RUNS} runs that did not "
                                      f"diverge ({len(FEATURES)} features + intercept + 1), got {len(runs)}")
        y = np.array([r.final_loss for r in runs])
        if not np.all(np.isfinite(y)):
            bad = [r.name for r, v in zip(runs, y) if not np.isfinite(v)]
            raise ConfigError("runs", f"runs without a validation loss at their last step: {bad}; train them with "
                                      "train.eval_every > 0")
        groups = np.array([r.group or r.name for r in runs])
        if self.c is None or self.lam is None:
            cs = C_GRID if self.c is None else (self.c,)
            lams = LAM_GRID if self.lam is None else (self.lam,)
            self.cv = {}
            for c in cs:
                X = np.stack([design_row(r.lrs, r.warmup, c) for r in runs])
                for lam in lams:
                    self.cv[(c, lam)] = _cv_error(X, y, groups, lam)
            self.c, self.lam = min(self.cv, key=self.cv.get)
        self.X = np.stack([design_row(r.lrs, r.warmup, self.c) for r in runs])
        self.mu, self.sd, self.w, self.ym = _ridge(self.X, y, self.lam)
        resid = y - self.predict_rows(self.X)
        self.rmse = float(np.sqrt((resid ** 2).mean()))
        return self

    def predict_rows(self, X: np.ndarray) -> np.ndarray:
        return self.ym + ((X - self.mu) / self.sd) @ self.w

    def predict(self, lrs_list, warmups) -> np.ndarray:
        X = np.stack([design_row(l, w, self.c) for l, w in zip(lrs_list, warmups)])
        return self.predict_rows(X)

    def describe(self) -> str:
        coefs = ", ".join(f"{n} {v:+.4f}" for n, v in zip(FEATURES, self.w))
        return f"c={self.c:g}, lam={self.lam:g}, standardized coefficients: {coefs}; fit RMSE {self.rmse:.4f}"


def _cv_error(X, y, groups, lam) -> float:
    """Leave-one-configuration-out mean squared error."""
    err = []
    for g in np.unique(groups):
        test = groups == g
        if test.all():
            return float("inf")
        mu, sd, w, ym = _ridge(X[~test], y[~test], lam)
        err.append(((ym + ((X[test] - mu) / sd) @ w - y[test]) ** 2).sum())
    return float(np.sum(err) / y.size)


def mean_curves(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """One record per group (runs that differ only in seed): the mean validation curve over the steps they share."""
    by = {}
    for r in runs:
        by.setdefault(r.group or r.name, []).append(r)
    out = []
    for g, rs in by.items():
        if len(rs) == 1:
            out.append(rs[0])
            continue
        steps = rs[0].val_steps
        for r in rs[1:]:
            steps = np.intersect1d(steps, r.val_steps)
        mean = np.mean([r.val_losses[np.searchsorted(r.val_steps, steps)] for r in rs], axis=0)
        r0 = rs[0]
        out.append(RunRecord(f"{r0.name} (mean of {len(rs)})", r0.lrs, r0.warmup, r0.peak, steps, mean, config=r0.config,
                             group=g))
    return out


class MPLPredictor:
    """The Multi-Power Law fitted to the runs' validation curves (seeds of one configuration averaged first);
    predicts each candidate's final loss. restarts / steps: `mpl.fit`'s (AdamW steps per restart)."""

    name = "mpl"

    def __init__(self, skip_fraction: float = 0.1, init=None, restarts: int = 3, steps: int = 400):
        self.skip_fraction, self.init, self.restarts, self.steps = skip_fraction, init, restarts, steps

    def fit(self, runs: Sequence[RunRecord]) -> MPLPredictor:
        from .schedules.mpl import fit
        runs = [r for r in runs if not r.diverged]
        if len(runs) < 2:
            raise ConfigError("runs", f"the Multi-Power-Law fit needs at least 2 runs that did not diverge, got {len(runs)}")
        if not any(np.any(np.diff(r.lrs[r.warmup:]) < 0) for r in runs):
            raise ConfigError("runs", "the Multi-Power-Law fit needs at least one run whose lr decays (its loss-drop "
                                      "term is fitted from decays); add e.g. a cosine or WSD run")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.params, report = fit([r.mpl_run() for r in mean_curves(runs)], init=self.init,
                                      skip_fraction=self.skip_fraction, restarts=self.restarts, steps=self.steps)
        self.mare = report["train"]["all"]["mare"]
        return self

    def predict(self, lrs_list, warmups) -> np.ndarray:
        from .schedules.mpl import predict
        out = []
        for lrs, w in zip(lrs_list, warmups):
            head = 0.0 if w > 0 else float(lrs[0])
            seq = np.concatenate([[head], lrs])
            out.append(float(predict(self.params, seq, w, at_steps=[seq.size - 1])[0]))
        return np.array(out)

    def curve(self, lrs, warmup: int):
        from .schedules.mpl import predict
        seq = np.concatenate([[0.0 if warmup > 0 else float(lrs[0])], lrs])
        t = np.arange(max(warmup, 1), seq.size)
        return t, predict(self.params, seq, warmup, at_steps=t)

    def describe(self) -> str:
        p = self.params.to_dict()
        return ", ".join(f"{k} {v:.4g}" for k, v in p.items()) + f"; fit mean |rel err| {self.mare:.3%}"

    def bootstrap_copy(self) -> MPLPredictor:
        """Resample refits start from this fit (one restart): cheaper, and the same basin."""
        return MPLPredictor(self.skip_fraction, init=self.params, restarts=1, steps=max(self.steps // 2, 50))


class DivergenceRule:
    """L2-regularized logistic regression of diverged on (log peak lr, log(1 + warmup)), by Newton's method."""

    def __init__(self, lam: float = 1e-2):
        self.lam = lam
        self.active = False

    @staticmethod
    def _x(peaks, warmups) -> np.ndarray:
        peaks, warmups = np.asarray(peaks, dtype=np.float64), np.asarray(warmups, dtype=np.float64)
        return np.stack([np.log(peaks), np.log1p(warmups)], 1)

    def fit(self, runs: Sequence[RunRecord]) -> DivergenceRule:
        y = np.array([float(r.diverged) for r in runs])
        self.n_diverged, self.n = int(y.sum()), y.size
        if self.n_diverged == 0 or self.n_diverged == self.n:
            self.active = False
            return self
        X = self._x([r.peak for r in runs], [r.warmup for r in runs])
        self.mu, self.sd = X.mean(0), np.where(X.std(0) > 0, X.std(0), 1.0)
        Z = np.concatenate([np.ones((y.size, 1)), (X - self.mu) / self.sd], 1)
        w = np.zeros(Z.shape[1])
        pen = self.lam * y.size * np.diag([0.0] + [1.0] * (Z.shape[1] - 1))
        for _ in range(100):
            p = 1 / (1 + np.exp(-Z @ w))
            g = Z.T @ (p - y) + pen @ w
            H = (Z * (p * (1 - p))[:, None]).T @ Z + pen + 1e-9 * np.eye(Z.shape[1])
            step = np.linalg.solve(H, g)
            w -= step
            if np.abs(step).max() < 1e-10:
                break
        self.w = w
        self.active = True
        return self

    def prob(self, peaks, warmups) -> np.ndarray:
        if not self.active:
            return np.zeros(len(peaks))
        Z = (self._x(peaks, warmups) - self.mu) / self.sd
        return 1 / (1 + np.exp(-(self.w[0] + Z @ self.w[1:])))

    def describe(self) -> str:
        if not self.active:
            return (f"off: {self.n_diverged} of {self.n} runs diverged; the rule needs both diverged and stable runs "
                    "(add runs at a higher peak lr)")
        return (f"logistic on (log peak, log(1+warmup)) from {self.n_diverged} diverged of {self.n} runs: "
                f"w = {self.w[0]:+.2f}, {self.w[1]:+.2f}, {self.w[2]:+.2f} (standardized)")


# ------------------------------------------------------------------------------------------------------------
# pre-selection
# ------------------------------------------------------------------------------------------------------------

def _fit_predictors(runs, which: Sequence[str], template: dict | None = None, mpl_fit: dict | None = None) -> dict:
    out = {}
    for name in which:
        if name == "features":
            out[name] = FeatureRegression(*(template[name].c, template[name].lam) if template else (None, None)).fit(runs)
        elif name == "mpl":
            out[name] = (template[name].bootstrap_copy() if template else MPLPredictor(**(mpl_fit or {}))).fit(runs)
        else:
            raise ValueError(f"unknown predictor {name!r}")
    return out


def preselect(runs: Sequence[RunRecord], candidates: Sequence[Candidate], div_runs: Sequence[RunRecord] = (),
              predictors: Sequence[str] = ("mpl", "features"), bootstrap: dict | None = None, seed: int = 0,
              mpl_opts: dict | None = None, steps: int | None = None, mpl_fit: dict | None = None) -> dict:
    """Fit the predictors on `runs` (diverged ones excluded), the divergence rule on runs + div_runs, rank every
    candidate. bootstrap: predictor -> number of resample refits (default mpl 8, features 200); mpl_opts:
    optimize_schedule settings for mpl candidates (iters, min_lr); mpl_fit: MPLPredictor settings (restarts, steps).

    Returns {"candidates", "lrs", "predictions": {pred: {"mean", "boot", "std", "lo", "hi", "p_best", "rank"}},
    "flag_prob", "flagged", "fits", "rule", "mpl_params"}."""
    runs, div_runs, candidates = list(runs), list(div_runs), list(candidates)
    if not runs:
        raise ConfigError("runs", "no runs given")
    if not candidates:
        raise ConfigError("candidates", "no candidates")
    check_compatible(runs + div_runs)
    T = runs[0].lrs.size
    if steps is not None and steps != T:
        raise ConfigError("candidates.steps", f"the grid asks for {steps} steps but the runs have train.steps={T}; "
                                              "the runs' token budget is the one the ranking is for")
    ok = [r for r in runs if not r.diverged]
    need = {"mpl": 2, "features": MIN_REGRESSION_RUNS}
    for p in predictors:
        if len(ok) < need[p]:
            raise ConfigError("runs", f"predictor {p!r} needs at least {need[p]} runs that did not diverge, got "
                                      f"{len(ok)} ({len(runs) - len(ok)} of {len(runs)} diverged)")
    bootstrap = {"mpl": 8, "features": 200, **(bootstrap or {})}
    fill = {}
    if runs[0].config:
        t = runs[0].config.get("train", {})
        if t.get("global_batch_size") and t.get("seq_len"):
            fill = {"batch_size": t["global_batch_size"], "tokens_per_step": t["global_batch_size"] * t["seq_len"]}
    fits = _fit_predictors(ok, predictors, mpl_fit=mpl_fit)
    mpl_params = fits["mpl"].params if "mpl" in fits else None
    if any(c.schedule == "mpl" for c in candidates) and mpl_params is None:
        mpl_params = MPLPredictor(**(mpl_fit or {})).fit(ok).params
    lrs = {c.name: candidate_lrs(c, T, fill, mpl_params, mpl_opts) for c in candidates}
    warm = [c.warmup for c in candidates]
    L = [lrs[c.name] for c in candidates]
    rule = DivergenceRule().fit(runs + div_runs)
    flag_prob = rule.prob([float(lrs[c.name].max()) for c in candidates], warm)
    flagged = flag_prob > 0.5
    rng = np.random.default_rng(seed)
    preds = {}
    for name, model in fits.items():
        mean = model.predict(L, warm)
        boots = []
        for _ in range(int(bootstrap.get(name, 0))):
            sample = [ok[i] for i in rng.integers(0, len(ok), len(ok))]
            try:
                boots.append(_fit_predictors(sample, [name], fits)[name].predict(L, warm))
            except (ConfigError, np.linalg.LinAlgError, ValueError):
                continue  # a resample without a decaying run (MPL) or a singular design: skipped
        B = np.array(boots) if boots else np.empty((0, len(candidates)))
        masked = np.where(flagged[None, :], np.inf, B) if B.size else B
        p_best = (np.bincount(masked.argmin(1), minlength=len(candidates)) / B.shape[0]) if B.size else \
            np.full(len(candidates), np.nan)
        order = np.lexsort((mean, flagged))  # stable candidates first, then by predicted loss
        rank = np.empty(len(candidates), dtype=int)
        rank[order] = np.arange(1, len(candidates) + 1)
        preds[name] = {"mean": mean, "boot": B, "std": B.std(0, ddof=1) if B.shape[0] > 1 else np.full(len(mean), np.nan),
                       "lo": np.quantile(B, 0.05, axis=0) if B.size else np.full(len(mean), np.nan),
                       "hi": np.quantile(B, 0.95, axis=0) if B.size else np.full(len(mean), np.nan),
                       "p_best": p_best, "rank": rank, "n_boot": int(B.shape[0])}
    return {"candidates": candidates, "lrs": lrs, "predictions": preds, "flag_prob": flag_prob, "flagged": flagged,
            "fits": fits, "rule": rule, "mpl_params": mpl_params, "steps": T, "n_runs": len(runs),
            "n_fit_runs": len(ok)}


# ------------------------------------------------------------------------------------------------------------
# evaluation (bench/preselect.py and the tests)
# ------------------------------------------------------------------------------------------------------------

def top2_hit(pred: dict, true_mean: dict, true_spread: dict) -> tuple[bool, dict]:
    """A hit: the true best (lowest true mean) is within one seed spread (its seeds' sample std) of the true mean of
    one of the two candidates with the lowest prediction. Returns (hit, details)."""
    names = list(pred)
    top2 = sorted(names, key=lambda n: pred[n])[:2]
    best = min(names, key=lambda n: true_mean[n])
    gap = min(true_mean[n] - true_mean[best] for n in top2)
    return bool(gap <= true_spread[best] + 1e-12), {"best": best, "top2": top2, "gap": float(gap),
                                                    "spread": float(true_spread[best])}


def f1_score(pred: Sequence[bool], true: Sequence[bool]) -> dict:
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp, fp, fn = int((pred & true).sum()), int((pred & ~true).sum()), int((~pred & true).sum())
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {"f1": f1, "precision": prec, "recall": rec, "tp": tp, "fp": fp, "fn": fn,
            "tn": int((~pred & ~true).sum())}


def config_diverged(runs: Sequence[RunRecord], k: int | None = None) -> bool:
    """A configuration's label: at least k of its runs (seeds) diverged; default k = most of them (2 of 3)."""
    k = len(runs) // 2 + 1 if k is None else k
    return sum(bool(r.diverged) for r in runs) >= k


def flag_threshold(n: int, k: int | None = None) -> float:
    """The per-run divergence probability p at which "at least k of n independent seeds diverge" becomes likelier
    than not (P(Binomial(n, p) >= k) = 0.5; default k = most of n, where it is 0.5 for odd n): the flag threshold
    that matches the label `config_diverged(runs, k)`. By bisection (the tail grows with p)."""
    k = n // 2 + 1 if k is None else k
    if not 1 <= k <= n:
        raise ConfigError("k", f"must be in 1..{n} (the number of seeds), got {k}")

    def tail(p):
        return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tail(mid) < 0.5 else (lo, mid)
    return (lo + hi) / 2


def load_runs(paths: Sequence) -> list[RunRecord]:
    """RunRecords of run directories; runs that differ only in seed share a group (same schedule and peak lr)."""
    return [load_run(p) for p in paths]


def expand_run_dirs(paths: Sequence) -> list[str]:
    """Run directories from paths that are run directories or folders of them."""
    out = []
    for p in paths:
        p = Path(p)
        if (p / "config.yaml").is_file():
            out.append(str(p))
        elif p.is_dir():
            kids = sorted(str(k) for k in p.iterdir() if (k / "config.yaml").is_file())
            if not kids:
                raise ConfigError("runs", f"{str(p)!r} holds no run directory (config.yaml + metrics.jsonl)")
            out += kids
        else:
            raise ConfigError("runs", f"{str(p)!r} does not exist")
    return out


__all__ = [
    "FEATURES",
    "Candidate",
    "DivergenceRule",
    "FeatureRegression",
    "MPLPredictor",
    "RunRecord",
    "candidate_lrs",
    "check_compatible",
    "config_diverged",
    "divergence",
    "expand_run_dirs",
    "f1_score",
    "flag_threshold",
    "load_run",
    "load_runs",
    "mpl_candidate_lrs",
    "parse_grid",
    "preselect",
    "schedule_features",
    "top2_hit",
]
