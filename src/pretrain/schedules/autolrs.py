"""AutoLRS (Jin et al. 2021, arXiv 2105.10762, ICLR 2021; reference code YuchenJin/autolrs): a controller that
picks a constant learning rate for each training stage by Bayesian optimization on the fly.

Protocol with the training loop
-------------------------------
`AutoLRS` is a `Schedule` (the loop still calls `set_lr(optimizer, schedule.factor(step))` every step) with a hook:

    if schedule.wants_search(step):          # the first step of a stage whose lr is not chosen yet
        schedule.search(step, trial)         # trial(lr, n_steps) -> list of n_steps training losses
    set_lr(optimizer, schedule.factor(step))

`trial(lr, n)` restores the model + optimizer + RNG snapshot taken at `step`, trains `n` steps with the absolute
lr `lr` (factor `lr / peak_lr` on every parameter group) on the stage's first `n` batches and returns the
per-step training losses (`losses[j]` = loss of update j+1, i.e. of the parameters after j updates). After
`search` returns, the loop restores the snapshot once more and trains the stage with `lr(step)`.

Stages
------
* Warmup (`warmup_steps` = W): transformers' linear warmup `peak * step / W` for step < W; no search.
* Stage i starts at `W + i * stage_steps` and lasts `stage_steps` (tau) steps; each of its candidate lrs is
  tried for `trial_steps` (tau') steps. With `max_stage_steps` set, tau and tau' double every stage while
  tau stays <= max_stage_steps (the reference code: tau = 1000 and tau' = 100 doubled up to TAU_MAX = 8000).
* The last stage ends at `total_steps`. A final stage no longer than its trial length is merged into the
  stage before it (searching it would take the whole stage per candidate); if the run after warmup is that
  short, the single stage keeps `peak_lr` and is never searched.
* `lr(step)` in a stage = the stage's chosen lr; a stage not searched yet (e.g. the loop has no hook) uses the
  latest chosen lr before it, else `peak_lr`. Steps at or past `total_steps` hold the last value.

Search in one stage (`search`)
------------------------------
1. Space: x = normalized log lr in [0, 1] over [lr_min, lr_max] (the reference: skopt `Real(min_lr, max_lr,
   'log-uniform')`, normalized for the GP).
2. Candidate 1 is drawn uniformly in x (the reference: `n_initial_points=1`); the RNG is
   `numpy.random.default_rng([seed, stage_index])`, so every stage's draw is reproducible on resume.
3. Each candidate lr is trained `trial_steps` steps; its losses are fit with L(t) = a * exp(-b t) + c
   (`fit_exponential`: least squares with b profiled out, then a robust soft-L1 refinement) and the fit
   forecasts the loss after the whole stage, L(stage length) (`forecast_loss`). Non-finite losses (divergence)
   forecast +inf; a fit that fails falls back to the mean of the last 10 losses (the reference's
   "current loss").
4. A Gaussian process (`GaussianProcess`: Matern 5/2 kernel on x, as skopt's default GP, outputs normalized to
   zero mean / unit variance, amplitude, length scale and noise by maximum marginal likelihood over a grid)
   is fit to (x, forecast); forecasts worse than the loss at the stage start (and divergences) enter the GP
   capped at that loss. The next candidate minimizes the lower confidence bound mu(x) - kappa * sigma(x)
   on a 1001-point grid, excluding points already tried, ties going to the point farthest from them (the reference: skopt `acq_func='LCB'`,
   `kappa=1e6`, which makes the search nearly pure exploration; exploitation is the final choice).
5. After `n_candidates` (k) candidates the stage lr is the tried candidate with the lowest forecast (the
   reference: `min(func_val_iters)` over the explored lrs, not the GP posterior minimum).

Deviations from the paper / reference code (documented, deliberate)
-------------------------------------------------------------------
* The objective is the forecast *training* loss on the stage's batches (the paper's objective is the
  validation loss; the reference uses training loss until tau reaches tau_max, then validation loss).
* The exponential fit replaces the reference's iterative-spline denoising + Nelder-Mead on log(-b) with a
  profiled least-squares fit plus a soft-L1 robust refinement (scipy.optimize.least_squares), with b bounded
  to [0.1 / stage length, 5] per step so that a nearly linear trial curve extrapolates at most linearly.
* The GP is a small numpy one (Matern 5/2, grid-search marginal likelihood) instead of scikit-optimize's
  sklearn GP (L-BFGS marginal likelihood, acquisition minimized by sampling + L-BFGS).
* Defaults are scaled to short runs: stage_steps 100 and trial_steps 10 (tau' = tau / 10 as the paper; the
  reference starts at tau = 1000, tau' = 100), n_candidates 6 (the paper: 10), no doubling by default
  (max_stage_steps null; the reference doubles up to 8000). lr_max null = peak_lr, lr_min null =
  1e-3 * lr_max (the reference takes both from the user).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError, check_number
from .classic import check_int, check_phases, check_step, warmup_factor
from .registry import Schedule, ScheduleSpec, register

LR_MIN_RATIO = 1e-3  # lr_min null = LR_MIN_RATIO * lr_max
ACQ_GRID = 1001  # acquisition grid points on [0, 1]
FALLBACK_TAIL = 10  # fallback forecast: mean of the last 10 losses (the reference's current_loss)


# ----------------------------------------------------------------------------------------------------------
# exponential loss forecast
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpFit:
    """L(t) = a * exp(-b * t) + c; `ok` is False when the fit fell back to a constant (a = b = 0)."""

    a: float
    b: float
    c: float
    ok: bool = True

    def __call__(self, t) -> np.ndarray | float:
        return self.a * np.exp(-self.b * np.asarray(t, dtype=float)) + self.c


def _profile_ac(t: np.ndarray, y: np.ndarray, b: float) -> tuple[float, float, float]:
    """For a fixed rate b, the least-squares (a, c) and the residual sum of squares."""
    A = np.stack([np.exp(-b * t), np.ones_like(t)], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    r = A @ coef - y
    return float(coef[0]), float(coef[1]), float(r @ r)


def fit_exponential(losses: Sequence[float], t: Sequence[float] | None = None, b_bounds=(1e-4, 5.0),
                    robust: bool = True) -> ExpFit:
    """Fit L(t) = a exp(-b t) + c (b > 0) to a loss series, t = 0, 1, ... by default.

    Least squares with (a, c) solved linearly for each b (variable projection): a log-spaced grid over
    `b_bounds`, refined by a bounded scalar search; then, when `robust`, a soft-L1 refinement of (a, log b, c)
    with scipy.optimize.least_squares (scale = 1.4826 * MAD of the residuals), kept only if finite. Fewer
    than 3 finite points, or a failed fit, give the constant fit at the mean of the last 10 losses (ok=False).
    """
    from scipy.optimize import least_squares, minimize_scalar

    y = np.asarray(losses, dtype=float)
    t = np.arange(y.size, dtype=float) if t is None else np.asarray(t, dtype=float)
    keep = np.isfinite(y) & np.isfinite(t)
    y, t = y[keep], t[keep]
    fallback = ExpFit(0.0, 0.0, float(np.mean(y[-FALLBACK_TAIL:])) if y.size else float("nan"), ok=False)
    if y.size < 3:
        return fallback
    if np.ptp(y) == 0.0:
        return ExpFit(0.0, 0.0, float(y[0]), ok=True)
    lo, hi = math.log(b_bounds[0]), math.log(b_bounds[1])
    grid = np.linspace(lo, hi, 61)
    sse = np.array([_profile_ac(t, y, math.exp(g))[2] for g in grid])
    i = int(np.argmin(sse))
    left, right = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    best_g = grid[i]
    if right > left:
        res = minimize_scalar(lambda g: _profile_ac(t, y, math.exp(g))[2], bounds=(left, right), method="bounded",
                              options={"xatol": 1e-10})
        if res.success and res.fun <= sse[i]:
            best_g = float(res.x)
    a, c, _ = _profile_ac(t, y, math.exp(best_g))
    fit = ExpFit(a, math.exp(best_g), c)
    if robust and y.size > 3:
        resid = fit(t) - y
        scale = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
        if scale > 1e-12 * max(1.0, float(np.max(np.abs(y)))):
            def residual(p):
                return p[0] * np.exp(-math.exp(p[1]) * t) + p[2] - y
            g0 = min(max(best_g, lo), hi)
            try:
                sol = least_squares(residual, x0=[a, g0, c], loss="soft_l1", f_scale=scale,
                                    bounds=([-np.inf, lo, -np.inf], [np.inf, hi, np.inf]))
                if sol.success and np.all(np.isfinite(sol.x)):
                    fit = ExpFit(float(sol.x[0]), math.exp(float(sol.x[1])), float(sol.x[2]))
            except (ValueError, np.linalg.LinAlgError):
                pass
    if not all(math.isfinite(v) for v in (fit.a, fit.b, fit.c)):
        return fallback
    return fit


def forecast_loss(losses: Sequence[float], horizon: int) -> float:
    """The loss after `horizon` updates forecast from a trial's losses (losses[j] after j updates).

    +inf when any loss is non-finite (divergence); b is bounded to [0.1 / horizon, 5] so a nearly linear curve
    extrapolates at most linearly (and a curve has time constant <= 10 x the horizon).
    """
    y = np.asarray(losses, dtype=float)
    if y.size == 0 or not np.all(np.isfinite(y)):
        return float("inf")
    fit = fit_exponential(y, b_bounds=(min(0.1 / max(horizon, 1), 1.0), 5.0))
    value = float(fit(horizon))
    if not math.isfinite(value):
        value = float(np.mean(y[-FALLBACK_TAIL:]))
    return value


# ----------------------------------------------------------------------------------------------------------
# Gaussian process (1-D input, zero prior mean on the values given)
# ----------------------------------------------------------------------------------------------------------
def matern52(x1, x2, length_scale: float, signal_var: float) -> np.ndarray:
    """Matern nu = 5/2: s^2 (1 + sqrt5 r / l + 5 r^2 / (3 l^2)) exp(-sqrt5 r / l), r = |x1 - x2|."""
    r = np.abs(np.asarray(x1, float)[:, None] - np.asarray(x2, float)[None, :]) / length_scale
    s = math.sqrt(5.0) * r
    return signal_var * (1.0 + s + s * s / 3.0) * np.exp(-s)


def _cholesky(K: np.ndarray) -> np.ndarray:
    jitter = 0.0
    for _ in range(8):
        try:
            return np.linalg.cholesky(K + jitter * np.eye(K.shape[0]))
        except np.linalg.LinAlgError:
            jitter = 1e-10 if jitter == 0.0 else jitter * 100.0
    raise np.linalg.LinAlgError("GP covariance is not positive definite")


class GaussianProcess:
    """GP regression y = f(x) + eps, f ~ GP(0, Matern52(length_scale, signal_var)), eps ~ N(0, noise_var)."""

    LENGTH_GRID = np.geomspace(0.01, 100.0, 33)  # skopt's Matern length-scale bounds (normalized inputs)
    NOISE_RATIO_GRID = np.geomspace(1e-6, 10.0, 15)  # noise_var / signal_var
    SIGNAL_BOUNDS = (0.01, 1000.0)  # skopt's ConstantKernel bounds (normalized outputs)

    def __init__(self, length_scale: float = 1.0, signal_var: float = 1.0, noise_var: float = 1e-6):
        self.length_scale, self.signal_var, self.noise_var = float(length_scale), float(signal_var), float(noise_var)
        self.x = self.y = self._chol = self._alpha = None

    def kernel(self, x1, x2) -> np.ndarray:
        return matern52(x1, x2, self.length_scale, self.signal_var)

    def fit(self, x, y) -> "GaussianProcess":
        self.x, self.y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
        K = self.kernel(self.x, self.x) + self.noise_var * np.eye(self.x.size)
        self._chol = _cholesky(K)
        self._alpha = np.linalg.solve(self._chol.T, np.linalg.solve(self._chol, self.y))
        return self

    def predict(self, xs) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of the latent f at xs (noise-free)."""
        xs = np.asarray(xs, float).ravel()
        Ks = self.kernel(self.x, xs)
        mean = Ks.T @ self._alpha
        v = np.linalg.solve(self._chol, Ks)
        var = self.signal_var - np.sum(v * v, axis=0)
        return mean, np.maximum(var, 0.0)

    def log_marginal_likelihood(self) -> float:
        n = self.x.size
        return float(-0.5 * self.y @ self._alpha - np.sum(np.log(np.diag(self._chol))) - 0.5 * n * math.log(2 * math.pi))

    @classmethod
    def fit_ml(cls, x, y) -> "GaussianProcess":
        """Hyperparameters by maximum marginal likelihood: grid over (length scale, noise ratio g), with the
        signal variance at its closed-form optimum yT (R + gI)^-1 y / n (clipped to SIGNAL_BOUNDS)."""
        x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
        n = x.size
        if n < 2 or float(y @ y) <= 1e-24:
            return cls(1.0, 1.0, 1e-6).fit(x, y)
        best, best_lml = None, -np.inf
        for ell in cls.LENGTH_GRID:
            R = matern52(x, x, ell, 1.0)
            for g in cls.NOISE_RATIO_GRID:
                try:
                    L = _cholesky(R + g * np.eye(n))
                except np.linalg.LinAlgError:
                    continue
                w = np.linalg.solve(L, y)
                q = float(w @ w)
                s2 = min(max(q / n, cls.SIGNAL_BOUNDS[0]), cls.SIGNAL_BOUNDS[1])
                lml = -0.5 * q / s2 - 0.5 * n * math.log(s2) - float(np.sum(np.log(np.diag(L)))) \
                      - 0.5 * n * math.log(2 * math.pi)
                if lml > best_lml + 1e-12:
                    best, best_lml = (ell, s2, g * s2), lml
        if best is None:
            return cls(1.0, 1.0, 1e-6).fit(x, y)
        return cls(*best).fit(x, y)


def lcb_next(x, y, kappa: float, grid_points: int = ACQ_GRID) -> float:
    """The next point in [0, 1]: the minimum of mu - kappa * sigma of a GP fit (max likelihood) to (x, y),
    y normalized to zero mean and unit variance, over a grid that excludes the points already tried; among
    (numerically) tied minima the point farthest from those tried wins."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    std = float(np.std(y))
    z = (y - np.mean(y)) / (std if std > 1e-12 else 1.0)
    gp = GaussianProcess.fit_ml(x, z)
    grid = np.linspace(0.0, 1.0, grid_points)
    free = np.min(np.abs(grid[:, None] - x[None, :]), axis=1) > 0.5 / (grid_points - 1)
    grid = grid[free] if free.any() else grid
    mu, var = gp.predict(grid)
    acq = mu - kappa * np.sqrt(var)
    best = float(np.min(acq))
    # ties (e.g. a short length scale leaves sigma saturated far from the data): the point farthest from the data
    ties = np.flatnonzero(acq <= best + 1e-9 * max(1.0, abs(best)))
    dist = np.min(np.abs(grid[ties, None] - x[None, :]), axis=1)
    return float(grid[ties[int(np.argmax(dist))]])


# ----------------------------------------------------------------------------------------------------------
# the schedule / controller
# ----------------------------------------------------------------------------------------------------------
Trial = Callable[[float, int], Sequence[float]]


class AutoLRS(Schedule):
    """Stage-wise constant lrs chosen by BO over forecast losses (see the module docstring)."""

    name = "autolrs"

    def __init__(self, peak_lr: float, total_steps: int, stage_steps: int = 100, trial_steps: int = 10,
                 n_candidates: int = 6, lr_min: float | None = None, lr_max: float | None = None,
                 warmup_steps: int = 0, kappa: float = 1e6, max_stage_steps: int | None = None, seed: int = 0):
        super().__init__(peak_lr, total_steps)
        self.stage_steps = check_int("schedule.stage_steps", stage_steps, lo=1)
        self.trial_steps = check_int("schedule.trial_steps", trial_steps, lo=3)
        if self.trial_steps >= self.stage_steps:
            raise ConfigError("schedule.trial_steps", f"trial_steps={self.trial_steps} must be smaller than "
                              f"stage_steps={self.stage_steps} (the paper: trial_steps = stage_steps / 10); "
                              f"allowed: [3, stage_steps - 1]")
        self.n_candidates = check_int("schedule.n_candidates", n_candidates, lo=2)
        self.warmup_steps = check_int("schedule.warmup_steps", warmup_steps)
        check_phases(self.total_steps, self.warmup_steps)
        self.kappa = check_number("schedule.kappa", kappa, lo=0.0)
        if max_stage_steps is None:
            self.max_stage_steps = None
        else:
            self.max_stage_steps = check_int("schedule.max_stage_steps", max_stage_steps, lo=self.stage_steps)
        self.seed = check_int("schedule.seed", seed, lo=0)
        if lr_max is None:
            if self.peak_lr <= 0:
                raise ConfigError("schedule.lr_max", f"lr_max null means peak_lr, which is {self.peak_lr}; set "
                                  f"schedule.lr_max > 0 or a positive optimizer lr")
            self.lr_max = self.peak_lr
        else:
            self.lr_max = check_number("schedule.lr_max", lr_max, lo=0.0, lo_open=True)
        if lr_min is None:
            self.lr_min = LR_MIN_RATIO * self.lr_max
        else:
            self.lr_min = check_number("schedule.lr_min", lr_min, lo=0.0, lo_open=True)
            if self.lr_min >= self.lr_max:
                raise ConfigError("schedule.lr_min", f"lr_min={self.lr_min} must be smaller than lr_max="
                                  f"{self.lr_max}; allowed: (0, lr_max)")
        self._layout()
        self.stage_lrs: list[float | None] = [None] * len(self.starts)
        self.history: list[dict] = []
        self.trial_steps_total = 0
        self.last_stage: int | None = None

    # ------------------------------------------------------------------ stages
    def _layout(self) -> None:
        """Stage starts, lengths and trial lengths (doubling with max_stage_steps, short tail merged)."""
        starts, lengths, trials = [], [], []
        s, i = self.warmup_steps, 0
        doublings = 0
        if self.max_stage_steps is not None:
            while self.stage_steps * 2 ** (doublings + 1) <= self.max_stage_steps:
                doublings += 1
        while s < self.total_steps:
            k = 2 ** min(i, doublings)
            length, trial = min(self.stage_steps * k, self.total_steps - s), self.trial_steps * k
            if length <= trial and starts:
                lengths[-1] += length
            else:
                starts.append(s)
                lengths.append(length)
                trials.append(trial)
            s += length
            i += 1
        self.starts, self.lengths, self.trials = starts, lengths, trials
        self.searchable = [n > t for n, t in zip(lengths, trials)]

    @property
    def n_stages(self) -> int:
        return len(self.starts)

    def stage_of(self, step: int) -> int | None:
        """The stage containing step (None during warmup or without stages)."""
        if step < self.warmup_steps or not self.starts:
            return None
        step = min(step, self.total_steps - 1)
        lo, hi = 0, len(self.starts) - 1
        while lo < hi:  # the last start <= step
            mid = (lo + hi + 1) // 2
            if self.starts[mid] <= step:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def stage_lr(self, stage: int) -> float:
        for j in range(stage, -1, -1):
            if self.stage_lrs[j] is not None:
                return float(self.stage_lrs[j])
        return self.peak_lr

    def lr(self, step: int) -> float:
        s = check_step(step)
        if s < self.warmup_steps:
            return self.peak_lr * warmup_factor(s, self.warmup_steps)
        stage = self.stage_of(s)
        return self.peak_lr if stage is None else self.stage_lr(stage)

    # ------------------------------------------------------------------ the controller protocol
    def _stage_starting_at(self, step: int) -> int | None:
        if step < self.warmup_steps or step >= self.total_steps:
            return None
        stage = self.stage_of(step)
        return stage if stage is not None and self.starts[stage] == step else None

    def wants_search(self, step: int) -> bool:
        stage = self._stage_starting_at(int(step))
        return stage is not None and self.searchable[stage] and self.stage_lrs[stage] is None

    def _x_to_lr(self, x: float) -> float:
        lo, hi = math.log(self.lr_min), math.log(self.lr_max)
        return float(math.exp(lo + min(max(x, 0.0), 1.0) * (hi - lo)))

    def search(self, step: int, trial: Trial) -> None:
        """Choose the lr of the stage starting at `step` (see the module docstring)."""
        stage = self._stage_starting_at(int(step))
        if stage is None or not self.searchable[stage]:
            raise ValueError(f"autolrs: step {step} is not the start of a searchable stage "
                             f"(stage starts: {self.starts[:8]}{'...' if len(self.starts) > 8 else ''})")
        n, horizon = self.trials[stage], self.lengths[stage]
        rng = np.random.default_rng([self.seed, stage])
        xs, lrs, forecasts, first_losses = [], [], [], []
        for j in range(self.n_candidates):
            if j == 0:
                x = float(rng.uniform(0.0, 1.0))
            else:
                ref = max([v for v in first_losses if math.isfinite(v)], default=None)
                finite = [f for f in forecasts if math.isfinite(f)]
                cap = ref if ref is not None else (max(finite) if finite else 1.0)
                y = [min(f, cap) if math.isfinite(f) else cap for f in forecasts]
                x = lcb_next(xs, y, self.kappa)
            lr = self._x_to_lr(x)
            losses = [float(v) for v in trial(lr, n)]
            if len(losses) != n and all(math.isfinite(v) for v in losses):
                raise ValueError(f"autolrs: trial(lr={lr}, n_steps={n}) returned {len(losses)} losses, expected {n}")
            xs.append(x)
            lrs.append(lr)
            forecasts.append(forecast_loss(losses, horizon))
            first_losses.append(losses[0] if losses else float("nan"))
            self.trial_steps_total += n
        finite = [i for i, f in enumerate(forecasts) if math.isfinite(f)]
        best = min(finite, key=lambda i: forecasts[i]) if finite else int(np.argmin(lrs))
        self.stage_lrs[stage] = lrs[best]
        self.last_stage = stage
        self.history.append({"stage": stage, "step": self.starts[stage], "stage_steps": horizon, "trial_steps": n,
                             "lrs": lrs, "forecasts": forecasts, "lr": lrs[best]})

    def metrics(self) -> dict:
        lr = self.peak_lr if self.last_stage is None else self.stage_lr(self.last_stage)
        return {"autolrs_trial_steps": self.trial_steps_total, "autolrs_stage_lr": lr}

    # ------------------------------------------------------------------ resume
    def _layout_key(self) -> dict:
        return {"starts": list(self.starts), "lengths": list(self.lengths), "trials": list(self.trials),
                "lr_min": self.lr_min, "lr_max": self.lr_max, "n_candidates": self.n_candidates,
                "kappa": self.kappa, "seed": self.seed}

    def state_dict(self) -> dict:
        """Plain lists/floats/ints: the chosen lrs, the trial counter, the search history and the layout.

        The BO's only randomness (the first candidate) comes from default_rng([seed, stage]), so seed + stage
        index reproduce it exactly; no generator state has to be saved."""
        return {"version": 1, "stage_lrs": list(self.stage_lrs), "trial_steps_total": self.trial_steps_total,
                "last_stage": self.last_stage, "history": [dict(h) for h in self.history],
                "layout": self._layout_key()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        layout = state.get("layout")
        if layout is not None and layout != self._layout_key():
            raise ValueError("autolrs: the checkpoint's schedule (stages, lr range, candidates, kappa, seed) "
                             "differs from this run's; resume with the same schedule settings and train.steps")
        lrs = list(state["stage_lrs"])
        if len(lrs) != self.n_stages:
            raise ValueError(f"autolrs: checkpoint has {len(lrs)} stages, this run has {self.n_stages}")
        self.stage_lrs = [None if v is None else float(v) for v in lrs]
        self.trial_steps_total = int(state["trial_steps_total"])
        self.last_stage = None if state.get("last_stage") is None else int(state["last_stage"])
        self.history = [dict(h) for h in state.get("history", [])]


register(ScheduleSpec(
    "autolrs", AutoLRS,
    paper="AutoLRS (Jin et al. 2021, arXiv 2105.10762; YuchenJin/autolrs): per stage of tau steps, BO (GP + LCB "
          "kappa 1e6) over log lr, each candidate trained tau' = tau/10 steps from the same checkpoint, loss after "
          "tau forecast by an exponential fit; the best forecast is trained",
    controller=True,
    notes="a controller: the loop calls wants_search(step) / search(step, trial); scaled to short runs: "
          "tau 100 (paper 1000, doubling to 8000 with max_stage_steps), 6 candidates (paper 10); lr_max null = "
          "peak_lr, lr_min null = 1e-3 * lr_max; training-loss objective (paper: validation loss)"))
