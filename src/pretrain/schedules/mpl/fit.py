"""Fitting the Multi-Power Law to observed loss curves, evaluating a fit, and reading runs from metrics.jsonl.

Fit (after the official code, thu-yao-01-luo/MultiPowerLaw): Huber loss (delta 1e-3) on
`log L_obs - log L_pred`, summed over the observed points of every run, minimized with AdamW, lr 5e-2 for
L0, A, B, C and 5e-3 for alpha, beta, gamma. Differences, all documented here:

* positivity: each parameter is fitted as its logarithm, p = exp(theta), so every parameter stays positive
  and the AdamW lrs act as relative steps (5e-2 = about 5% of the value per step for L0, A, B, C, whose
  scales differ by 100x; 5e-3 for the exponents). Weight decay is 0 (it would pull log p towards 0).
* the AdamW lr follows a cosine from its value down to 1% of it over `steps`, so the fit settles instead of
  oscillating at the step size; then the best restart is polished on the same objective by a trust-region
  least-squares solver (scipy `least_squares`, loss="huber", f_scale=delta, analytic Jacobian): the
  valley along (B, C, beta, gamma) is long and narrow, AdamW and L-BFGS crawl along it, while the
  Gauss-Newton steps reach the noise floor in a few dozen iterations (polish=None skips it). The polish
  keeps the parameters in a wide box (_POLISH_BOX: exponents in [1e-3, 10], C in [1e-4, 1e4]) because
  on noisy curves (C, beta) can otherwise drift to the degenerate limit C -> 0, beta -> inf.
* restarts: a few inits built from the data (L0 below the lowest loss, A and alpha from a log-log fit of
  the constant-lr part of the curves, B by least squares with C, beta, gamma at typical values); the one
  with the lowest objective wins.
* the first `skip_fraction` of each run's post-warmup steps (and the warmup itself) are left out: the early
  transient is not in the law. At most `max_points` points a run are used (evenly subsampled).
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from .law import PARAM_NAMES, MPLParams, predict


class Run(NamedTuple):
    """One training run: the lr of every step (index i = update i+1), observed steps and losses."""

    lrs: np.ndarray
    steps: np.ndarray
    losses: np.ndarray
    warmup_steps: int = 0
    name: str = ""


def as_run(run, i: int = 0) -> Run:
    if isinstance(run, Run):
        r = run
    elif isinstance(run, dict):
        r = Run(run["lrs"], run["steps"], run["losses"], int(run.get("warmup_steps", 0)), str(run.get("name", "")))
    else:
        r = Run(*run)
    lrs = np.asarray(r.lrs, dtype=np.float64).reshape(-1)
    steps = np.asarray(r.steps, dtype=np.int64).reshape(-1)
    losses = np.asarray(r.losses, dtype=np.float64).reshape(-1)
    if steps.shape != losses.shape:
        raise ValueError(f"run {r.name or i}: {steps.size} steps but {losses.size} losses")
    if steps.size and (steps.min() < 0 or steps.max() >= lrs.size):
        raise ValueError(f"run {r.name or i}: observed steps must lie in [0, len(lrs)={lrs.size})")
    return Run(lrs, steps, losses, int(r.warmup_steps), r.name or f"run{i}")


def select_points(run: Run, skip_fraction: float = 0.0, max_points: int | None = None):
    """Indices into run.steps used for fitting/evaluation: post-warmup, past the skipped transient, finite."""
    T, W = run.lrs.size, run.warmup_steps
    first = W + int(math.ceil(skip_fraction * max(T - W, 0)))
    ok = (run.steps >= max(first, 1)) & np.isfinite(run.losses) & (run.losses > 0)
    idx = np.flatnonzero(ok)
    if max_points is not None and idx.size > max_points:
        idx = idx[np.unique(np.linspace(0, idx.size - 1, max_points).round().astype(int))]
    return idx


class _Prepared:
    """Per-run tensors that do not depend on the parameters, so each fit iteration is a few elementwise ops."""

    def __init__(self, run: Run, idx: np.ndarray):
        eta = torch.as_tensor(run.lrs, dtype=torch.float64)
        prefix = torch.cumsum(eta, 0)
        t = torch.as_tensor(run.steps[idx])
        self.y = torch.as_tensor(run.losses[idx], dtype=torch.float64)
        self.log_y = self.y.log()
        self.s = prefix[t]  # S1(t) + S_W
        ks = torch.arange(run.warmup_steps + 1, eta.numel())
        drop = eta[ks - 1] - eta[ks]
        keep = drop != 0
        ks, self.drop = ks[keep], drop[keep]
        self.log_eta = eta[ks].clamp_min(1e-20).log()
        active = ks[None, :] <= t[:, None]
        self.s_k = torch.where(active, prefix[t][:, None] - prefix[ks - 1][None, :], torch.zeros((), dtype=torch.float64))

    def pred(self, p: dict) -> torch.Tensor:
        out = p["L0"] + p["A"] * self.s ** (-p["alpha"])
        if self.drop.numel():
            out = out - p["B"] * _LossDropSum.apply(p["gamma"], p["C"], p["beta"], self.log_eta, self.s_k, self.drop)
        return out


def _pred_jac(pr: "_Prepared", theta: np.ndarray):
    """Prediction and its Jacobian w.r.t. the log-parameters theta (columns in PARAM_NAMES order)."""
    L0, A, alpha, B, C, beta, gamma = np.exp(theta)
    with torch.no_grad():
        s_pow = pr.s ** (-alpha)
        jac = torch.zeros(pr.s.numel(), 7, dtype=torch.float64)
        jac[:, 0] = L0
        jac[:, 1] = A * s_pow
        jac[:, 2] = -alpha * A * s_pow * pr.s.log()
        pred = L0 + A * s_pow
        if pr.drop.numel():
            u = (C * torch.exp(-gamma * pr.log_eta))[None, :] * pr.s_k
            lg = torch.log1p(u)
            q = torch.exp(-beta * lg)
            ld = pr.drop.sum() - q @ pr.drop
            w = q * u / (1.0 + u)
            pred = pred - B * ld
            jac[:, 3] = -B * ld
            jac[:, 4] = -B * beta * (w @ pr.drop)
            jac[:, 5] = -B * beta * ((lg * q) @ pr.drop)
            jac[:, 6] = B * beta * gamma * (w @ (pr.drop * pr.log_eta))
    return pred.numpy(), jac.numpy()


# the box the least-squares polish stays in (PARAM_NAMES order): with noisy curves the (C, beta) pair can
# otherwise run off to C -> 0, beta -> inf (G(x) -> 1 - exp(-beta*C*x), a limit of the same family)
_POLISH_BOX = (np.array([1e-6, 1e-6, 1e-3, 1e-6, 1e-4, 1e-3, 1e-3]), np.array([1e4, 1e4, 10.0, 1e8, 1e4, 10.0, 10.0]))


def _polish_lsq(theta0: torch.Tensor, best: float, prepared: list, delta: float, iters: int):
    from scipy.optimize import least_squares

    def parts(x):
        preds, jacs = zip(*(_pred_jac(pr, x) for pr in prepared))
        return np.concatenate(preds), np.concatenate(jacs)

    log_y = np.concatenate([pr.log_y.numpy() for pr in prepared])

    def fun(x):
        pred = parts(x)[0]
        return log_y - np.log(np.clip(pred, 1e-12, None))

    def jac(x):
        pred, j = parts(x)
        return -j / np.clip(pred, 1e-12, None)[:, None]

    lo, hi = np.log(_POLISH_BOX[0]), np.log(_POLISH_BOX[1])
    x0 = np.clip(theta0.numpy(), lo + 1e-9, hi - 1e-9)
    try:
        with np.errstate(all="ignore"):
            res = least_squares(fun, x0, jac=jac, bounds=(lo, hi), loss="huber", f_scale=delta, method="trf",
                                x_scale="jac", max_nfev=iters, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    except (ValueError, np.linalg.LinAlgError) as e:  # pragma: no cover - keep the AdamW result
        warnings.warn(f"MPL least-squares polish failed ({e}); keeping the AdamW result")
        return theta0, best
    theta = torch.as_tensor(res.x, dtype=torch.float64)
    with torch.no_grad():
        o = _objective(theta, prepared, delta).item()
    return (theta, o) if math.isfinite(o) and o < best else (theta0, best)


def _polish_lbfgs(theta0: torch.Tensor, best: float, prepared: list, delta: float, iters: int):
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=iters, tolerance_grad=1e-14, tolerance_change=1e-18,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        o = _objective(theta, prepared, delta)
        o.backward()
        return o

    try:
        opt.step(closure)
    except RuntimeError as e:  # pragma: no cover
        warnings.warn(f"MPL L-BFGS polish failed ({e}); keeping the AdamW result")
        return theta0, best
    with torch.no_grad():
        o = _objective(theta, prepared, delta).item()
    return (theta.detach().clone(), o) if math.isfinite(o) and o < best else (theta0, best)


class _LossDropSum(torch.autograd.Function):
    """sum_k drop_k * G(eta_k^-gamma * S_k(t)) for every row t, with hand-written gradients for gamma, C, beta.

    With u = C * eta_k^-gamma * S, q = (1+u)^-beta, G = 1 - q:
    dG/dbeta = q*log1p(u), dG/dC = beta*q*u/((1+u)*C), dG/dgamma = -beta*q*u*log(eta_k)/(1+u).
    Same values as autograd through the plain formula, in about a third of the time (fitting only).
    """

    @staticmethod
    def forward(ctx, gamma, C, beta, log_eta, s_k, drop):
        u = (C * torch.exp(-gamma * log_eta))[None, :] * s_k
        lg = torch.log1p(u)
        q = torch.exp(-beta * lg)
        out = drop.sum() - q @ drop
        w = q * u / (1.0 + u)
        lg.mul_(q)
        ctx.save_for_backward(gamma, C, beta, log_eta, drop, w, lg)
        return out

    @staticmethod
    def backward(ctx, g):
        gamma, C, beta, log_eta, drop, w, lq = ctx.saved_tensors
        d_beta = g @ (lq @ drop)
        wd = w @ drop
        d_c = beta * (g @ wd) / C
        d_gamma = -beta * (g @ (w @ (drop * log_eta)))
        return d_gamma, d_c, d_beta, None, None, None


def huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    a = r.abs()
    return torch.where(a < delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _objective(theta: torch.Tensor, prepared: list, delta: float) -> torch.Tensor:
    p = {n: theta[i].exp() for i, n in enumerate(PARAM_NAMES)}
    total = theta.new_zeros(())
    for pr in prepared:
        pred = pr.pred(p)
        r = pr.log_y - torch.log(pred.clamp_min(1e-12))
        total = total + huber(r, delta).sum()
    return total


_MAIN = [PARAM_NAMES.index(n) for n in ("L0", "A", "B", "C")]
_EXPO = [PARAM_NAMES.index(n) for n in ("alpha", "beta", "gamma")]


def _join(main: torch.Tensor, expo: torch.Tensor) -> torch.Tensor:
    """log-parameters in PARAM_NAMES order from the two AdamW groups."""
    parts = {i: main[j] for j, i in enumerate(_MAIN)}
    parts.update({i: expo[j] for j, i in enumerate(_EXPO)})
    return torch.stack([parts[i] for i in range(len(PARAM_NAMES))])


def _theta(params: MPLParams) -> torch.Tensor:
    return torch.tensor([math.log(max(v, 1e-12)) for v in params.as_tuple()], dtype=torch.float64)


def _params(theta: torch.Tensor) -> MPLParams:
    return MPLParams(*[float(v) for v in theta.detach().exp()])


def default_inits(runs: Sequence[Run], prepared: list, n: int = 3) -> list[MPLParams]:
    """Data-driven starting points (see the module docstring)."""
    ys = np.concatenate([pr.y.numpy() for pr in prepared])
    y_min, y_max = float(ys.min()), float(ys.max())
    # points before any lr decrease: there LD = 0 and L = L0 + A * S^-alpha
    s_c, y_c = [], []
    for run, pr in zip(runs, prepared):
        first_drop = run.lrs.size
        d = run.lrs[run.warmup_steps:-1] - run.lrs[run.warmup_steps + 1:]
        nz = np.flatnonzero(d > 0)
        if nz.size:
            first_drop = run.warmup_steps + 1 + int(nz[0])
        prefix = np.cumsum(run.lrs)
        mask = pr.s.numpy() <= prefix[min(first_drop, run.lrs.size) - 1]
        s_c.append(pr.s.numpy()[mask])
        y_c.append(pr.y.numpy()[mask])
    s_c, y_c = np.concatenate(s_c), np.concatenate(y_c)
    if s_c.size < 3:  # no constant-lr stretch: use every point
        s_c = np.concatenate([pr.s.numpy() for pr in prepared])
        y_c = ys
    spread = max(y_max - y_min, 1e-3)
    offsets = [0.5, 2.0, 5.0, 1.0, 10.0][:max(n, 1)]
    inits = []
    for off in offsets:
        L0 = max(y_min - off * spread * 0.25, 1e-3)
        gap = np.clip(y_c - L0, 1e-6, None)
        if np.ptp(np.log(s_c)) > 1e-9:
            slope, icpt = np.polyfit(np.log(s_c), np.log(gap), 1)
        else:
            slope, icpt = -0.5, float(np.log(gap.mean()) + 0.5 * np.log(s_c.mean()))
        alpha = float(np.clip(-slope, 0.05, 2.0))
        A = float(np.exp(icpt))
        if not np.isfinite(A) or A <= 0:
            A = float(gap.mean() * s_c.mean() ** alpha)
        C, beta, gamma = 1.0, 0.5, 0.5
        # B by least squares: y = base - B * unit
        base, unit = [], []
        p0 = {"L0": torch.tensor(L0), "A": torch.tensor(A), "alpha": torch.tensor(alpha), "B": torch.tensor(1.0),
              "C": torch.tensor(C), "beta": torch.tensor(beta), "gamma": torch.tensor(gamma)}
        p0 = {k: v.to(torch.float64) for k, v in p0.items()}
        pz = dict(p0, B=torch.tensor(0.0, dtype=torch.float64))
        for pr in prepared:
            b = pr.pred(pz)
            base.append(b.numpy())
            unit.append((b - pr.pred(p0)).numpy())
        base, unit = np.concatenate(base), np.concatenate(unit)
        denom = float(unit @ unit)
        B = float((base - ys) @ unit / denom) if denom > 0 else 100.0
        if not np.isfinite(B) or B <= 0:
            B = 100.0
        inits.append(MPLParams(L0=L0, A=A, alpha=alpha, B=B, C=C, beta=beta, gamma=gamma))
    return inits


def fit(runs, init=None, steps: int = 400, *, heldout=None, lr: float = 5e-2, lr_exponents: float = 5e-3,
        huber_delta: float = 1e-3, skip_fraction: float = 0.1, max_points: int | None = 200,
        restarts: int = 3, polish: str | None = "lsq", polish_iters: int = 200, verbose: bool = False):
    """Fit MPL parameters to `runs` (each a Run or a tuple (lrs, steps, losses, warmup_steps[, name])).

    init: None (data-driven restarts, at most 5), an MPLParams / dict, or a list of them (one restart each).
    polish: "lsq" (default: scipy trust-region least squares with the same Huber loss and the analytic
    Jacobian), "lbfgs" (torch L-BFGS on the same objective), or None (AdamW only, the official procedure).
    Returns (MPLParams, report) where report has the objective of every restart, the chosen one, and
    `train` / `heldout` = evaluate(...) on the fitting points' runs (skip_fraction applied) and on `heldout`.
    """
    runs = [as_run(r, i) for i, r in enumerate(runs)]
    if not runs:
        raise ValueError("fit needs at least one run")
    prepared, used = [], []
    for r in runs:
        idx = select_points(r, skip_fraction, max_points)
        if idx.size:
            prepared.append(_Prepared(r, idx))
            used.append(r)
    if not prepared:
        raise ValueError("no usable points: every observed step is inside warmup or the skipped transient")
    if init is None:
        inits = default_inits(used, prepared, restarts)
    elif isinstance(init, (list, tuple)) and init and not isinstance(init[0], (int, float)):
        inits = [i if isinstance(i, MPLParams) else MPLParams.from_dict(i) for i in init]
    else:
        inits = [init if isinstance(init, MPLParams) else MPLParams.from_dict(init)]

    tried = []
    for k, p0 in enumerate(inits):
        theta = _theta(p0)
        main = theta[_MAIN].clone().requires_grad_(True)  # log L0, log A, log B, log C
        expo = theta[_EXPO].clone().requires_grad_(True)  # log alpha, log beta, log gamma
        opt = torch.optim.AdamW([{"params": [main], "lr": lr}, {"params": [expo], "lr": lr_exponents}],
                                weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda it: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(it, steps) / max(steps, 1))))
        best, best_theta = math.inf, theta
        for _ in range(steps):
            opt.zero_grad()
            full = _join(main, expo)
            obj = _objective(full, prepared, huber_delta)
            if not torch.isfinite(obj):
                break
            if obj.item() < best:
                best, best_theta = obj.item(), full.detach().clone()
            obj.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            full = _join(main, expo)
            obj = _objective(full, prepared, huber_delta).item()
        if math.isfinite(obj) and obj < best:
            best, best_theta = obj, full.clone()
        if verbose:
            print(f"restart {k}: objective {best:.4e} from {p0}")
        tried.append((best, best_theta, p0))
    tried.sort(key=lambda x: x[0])
    best, theta_best, p_init = tried[0]
    best_adamw = best

    if polish == "lsq":
        theta_best, best = _polish_lsq(theta_best, best, prepared, huber_delta, polish_iters)
    elif polish == "lbfgs":
        theta_best, best = _polish_lbfgs(theta_best, best, prepared, huber_delta, polish_iters)
    elif polish:
        raise ValueError(f"polish must be 'lsq', 'lbfgs' or None, got {polish!r}")
    params = _params(theta_best)
    report = {
        "objective": best,
        "objective_adamw": best_adamw,
        "polish": polish,
        "n_points": int(sum(pr.y.numel() for pr in prepared)),
        "init": p_init.to_dict(),
        "restarts": [{"objective": o, "init": p.to_dict()} for o, _, p in tried],
        "skip_fraction": skip_fraction,
        "train": evaluate(params, runs, skip_fraction=skip_fraction),
    }
    if heldout:
        report["heldout"] = evaluate(params, heldout, skip_fraction=skip_fraction)
    return params, report


def _metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    err = pred - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "n": int(y.size),
        "r2": 1.0 - float((err ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
        "mae": float(np.abs(err).mean()),
        "mare": float((np.abs(err) / np.abs(y)).mean()),
        "max_rel_err": float((np.abs(err) / np.abs(y)).max()),
    }


def evaluate(params, runs, skip_fraction: float = 0.0, max_points: int | None = None) -> dict:
    """R^2, MAE, mean |relative error| (mare) and worst relative error, per run and pooled ("all").

    Points: the observed steps after warmup (and after `skip_fraction` of the post-warmup steps).
    Each run also reports its final observed and predicted loss and their relative error.
    """
    params = params if isinstance(params, MPLParams) else MPLParams.from_dict(params)
    out, ys, ps = {"runs": {}}, [], []
    for i, r in enumerate(runs):
        r = as_run(r, i)
        idx = select_points(r, skip_fraction, max_points)
        if not idx.size:
            continue
        y = r.losses[idx]
        pred = predict(params, r.lrs, r.warmup_steps, at_steps=r.steps[idx])
        m = _metrics(y, pred)
        m.update(final_step=int(r.steps[idx[-1]]), final_obs=float(y[-1]), final_pred=float(pred[-1]),
                 final_rel_err=float(abs(pred[-1] - y[-1]) / abs(y[-1])))
        out["runs"][r.name] = m
        ys.append(y)
        ps.append(pred)
    if ys:
        out["all"] = _metrics(np.concatenate(ys), np.concatenate(ps))
    return out


def format_report(ev: dict, title: str = "") -> str:
    lines = [title] if title else []
    for name, m in ev.get("runs", {}).items():
        lines.append(f"  {name:<28} n={m['n']:<5d} R^2={m['r2']:.5f}  MAE={m['mae']:.5f}  "
                     f"mean|rel err|={m['mare']:.3%}  final obs/pred={m['final_obs']:.4f}/{m['final_pred']:.4f} "
                     f"({m['final_rel_err']:.3%})")
    if "all" in ev:
        m = ev["all"]
        lines.append(f"  {'all':<28} n={m['n']:<5d} R^2={m['r2']:.5f}  MAE={m['mae']:.5f}  "
                     f"mean|rel err|={m['mare']:.3%}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# reading runs
# ----------------------------------------------------------------------------------------------------------

def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{n}: not valid JSON, skipped")
    return rows


def _warmup_from_config(run_dir: Path) -> int | None:
    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        return None
    try:
        import yaml

        data = yaml.safe_load(cfg.read_text()) or {}
        w = (data.get("schedule") or {}).get("warmup_steps")
        return int(w) if w is not None else None
    except Exception as e:  # a config we cannot parse: fall back to the argument
        warnings.warn(f"{cfg}: could not read schedule.warmup_steps ({e})")
        return None


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average over `window` consecutive points (no lag). Near the ends the window shrinks
    symmetrically (the first and last points stay raw), so a trend does not bias the final values."""
    if window <= 1 or y.size < 2:
        return y
    i = np.arange(y.size)
    h = np.minimum(np.minimum(window // 2, i), y.size - 1 - i)
    c = np.concatenate([[0.0], np.cumsum(y)])
    return (c[i + h + 1] - c[i - h]) / (2 * h + 1)


def load_runs_from_metrics(paths, key: str = "val_loss", smooth: int | None = None,
                           warmup_steps: int | None = None) -> list[Run]:
    """Runs from `metrics.jsonl` files (a path may be the file or its run directory).

    lrs: the logged `lr` (the group-0 lr of that step) of every row that has one, linearly interpolated
    to every step 0..last logged step (with a 0 anchor at step 0 when the run warms up and step 0 is not
    logged). Observations: the rows that carry `key` ("val_loss", or "loss" for training loss); the value
    at logged step s is compared with the law's prediction at index s. `smooth`: a centered moving
    average over that many consecutive observations, shrinking symmetrically at the ends (use it for
    per-batch training losses).
    Warmup: `warmup_steps` if given, else `schedule.warmup_steps` of the run's config.yaml, else 0.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    runs = []
    for path in paths:
        path = Path(path)
        file = path / "metrics.jsonl" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no metrics.jsonl at {path}")
        rows = _read_jsonl(file)
        lr_at, obs_at = {}, {}
        for row in rows:
            if "step" not in row:
                continue
            s = int(row["step"])
            if row.get("lr") is not None:
                lr_at[s] = float(row["lr"])
            v = row.get(key)
            if v is not None and np.isfinite(float(v)):
                obs_at[s] = float(v)
        if not lr_at:
            raise ValueError(f"{file}: no rows with 'lr'")
        if not obs_at:
            raise ValueError(f"{file}: no rows with {key!r}")
        W = warmup_steps if warmup_steps is not None else _warmup_from_config(file.parent)
        W = int(W or 0)
        T = max(max(lr_at), max(obs_at)) + 1
        ls = np.array(sorted(lr_at))
        lv = np.array([lr_at[s] for s in ls])
        if ls[0] > 0 and W > 0:
            ls, lv = np.concatenate([[0], ls]), np.concatenate([[0.0], lv])
        lrs = np.interp(np.arange(T), ls, lv)
        steps = np.array(sorted(obs_at), dtype=np.int64)
        losses = np.array([obs_at[s] for s in steps])
        if smooth:
            losses = _moving_average(losses, int(smooth))
        name = file.parent.name if file.name == "metrics.jsonl" else file.stem
        runs.append(Run(lrs, steps, losses, min(W, T - 1), name))
    return runs
