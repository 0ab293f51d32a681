"""The schedule that minimizes the Multi-Power Law's predicted final loss, and schedule files.

Parametrization (after the official optimizer, thu-yao-01-luo/MultiPowerLaw): steps 0..W-1 are the
project's linear warmup (`peak * step / W`), step W is the peak, and for k = W+1..T-1
`eta_k = max(peak - sum_{j<=k} clamp(Delta_j, 0), min_lr)`, so the schedule is monotone non-increasing
after warmup. Adam minimizes `predict_final(params, lrs, warmup_steps=W)`; after every Adam step Delta is
projected back onto the feasible set (Delta >= 0 and eta >= min_lr), so the returned schedule satisfies both
exactly. Delta starts at 0 (the constant schedule), as in the official code. Unlike the official code
(constant Adam lr, 10000 iterations), Adam's lr follows a cosine to 0 over `iters`, so the schedule
settles instead of keeping Adam's step-size jitter. One iteration costs O(T) (about 25 ms of one CPU core
at T = 24000); more iterations keep lowering the predicted loss slowly and lengthen the plateau at the peak.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .law import MPLParams, predict, predict_final


def warmup_lrs(peak_lr: float, warmup_steps: int) -> np.ndarray:
    """The project's linear warmup: lr = peak * step / warmup for step < warmup."""
    return peak_lr * np.arange(int(warmup_steps), dtype=np.float64) / max(int(warmup_steps), 1)


def reference_schedules(total_steps: int, peak_lr: float, warmup_steps: int, min_lr_ratio: float = 0.1) -> dict:
    """Constant and cosine (to min_lr_ratio * peak) with the same warmup, for comparisons."""
    T, W = int(total_steps), int(warmup_steps)
    s = np.arange(T - W, dtype=np.float64)
    lo = min_lr_ratio * peak_lr
    cos = lo + 0.5 * (peak_lr - lo) * (1 + np.cos(np.pi * s / max(T - W - 1, 1)))
    w = warmup_lrs(peak_lr, W)
    return {"constant": np.concatenate([w, np.full(T - W, peak_lr)]), "cosine": np.concatenate([w, cos])}


def _schedule(delta: torch.Tensor, peak_lr: float, min_lr: float, warm: torch.Tensor) -> torch.Tensor:
    eta = (peak_lr - torch.cumsum(delta.clamp_min(0.0), 0)).clamp_min(min_lr)
    head = torch.tensor([peak_lr], dtype=torch.float64)
    return torch.cat([warm, head, eta])


def optimize_schedule(params, total_steps: int, peak_lr: float, warmup_steps: int, min_lr: float = 1e-10,
                      iters: int = 5000, lr: float | None = None, verbose: bool = False) -> np.ndarray:
    """Per-step lrs (warmup included, length total_steps) minimizing the predicted final loss.

    lr: Adam's step on Delta; default 0.5 * peak_lr / (total_steps - warmup_steps), i.e. about half the
    per-step decrement of a linear decay to zero (the official default, 5e-9 for peak 3e-4 over 21840
    steps, is 0.36 of it).
    """
    params = params if isinstance(params, MPLParams) else MPLParams.from_dict(params)
    T, W = int(total_steps), int(warmup_steps)
    if not 0 <= W < T - 1:
        raise ValueError(f"need 0 <= warmup_steps < total_steps - 1, got warmup {W}, total {T}")
    if not 0 <= min_lr <= peak_lr:
        raise ValueError(f"need 0 <= min_lr <= peak_lr, got min_lr {min_lr}, peak {peak_lr}")
    n = T - W - 1
    lr = 0.5 * peak_lr / (T - W) if lr is None else float(lr)
    warm = torch.as_tensor(warmup_lrs(peak_lr, W))
    delta = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5 * (1 + math.cos(math.pi * min(it, iters) / max(iters, 1))))
    best, best_delta = math.inf, delta.detach().clone()
    for it in range(iters):
        opt.zero_grad()
        lrs = _schedule(delta, peak_lr, min_lr, warm)
        loss = predict_final(params, lrs, W)
        if loss.item() < best:
            best, best_delta = loss.item(), delta.detach().clone()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # project: Delta >= 0, eta >= min_lr
            eta = (peak_lr - torch.cumsum(delta.clamp_min(0.0), 0)).clamp_min(min_lr)
            prev = torch.cat([torch.tensor([peak_lr], dtype=torch.float64), eta[:-1]])
            delta.copy_(prev - eta)
        if verbose and (it % max(iters // 10, 1) == 0 or it == iters - 1):
            print(f"iter {it}: predicted final loss {loss.item():.6f}")
    with torch.no_grad():
        final = predict_final(params, _schedule(delta, peak_lr, min_lr, warm), W).item()
        if final < best:
            best_delta = delta.detach().clone()
        return _schedule(best_delta, peak_lr, min_lr, warm).numpy().copy()


def save_schedule(path, lrs, meta: dict | None = None) -> Path:
    """Write {"total_steps", "peak_lr", "warmup_steps", "lrs", "params", ...meta} as JSON."""
    meta = dict(meta or {})
    lrs = [float(x) for x in np.asarray(lrs, dtype=np.float64).reshape(-1)]
    params = meta.pop("params", None)
    if isinstance(params, MPLParams):
        params = params.to_dict()
    doc = {
        "total_steps": len(lrs),
        "peak_lr": float(meta.pop("peak_lr", max(lrs) if lrs else 0.0)),
        "warmup_steps": int(meta.pop("warmup_steps", 0)),
        **meta,
        "params": params,
        "lrs": lrs,
    }
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc) + "\n")
    return path


def load_schedule(path) -> dict:
    """Read a schedule file; returns the dict with `lrs` as a float64 numpy array. Raises ValueError if malformed."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or "lrs" not in doc:
        raise ValueError(f"{path}: not a schedule file (needs a JSON object with 'lrs')")
    lrs = np.asarray(doc["lrs"], dtype=np.float64).reshape(-1)
    if lrs.size == 0 or not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
        raise ValueError(f"{path}: 'lrs' must be a non-empty list of finite non-negative numbers")
    doc["lrs"] = lrs
    doc["total_steps"] = int(doc.get("total_steps", lrs.size))
    if doc["total_steps"] != lrs.size:
        raise ValueError(f"{path}: total_steps={doc['total_steps']} but {lrs.size} lrs")
    doc["peak_lr"] = float(doc.get("peak_lr") or lrs.max())
    doc["warmup_steps"] = int(doc.get("warmup_steps") or 0)
    return doc


def compare_final(params, schedules: dict, warmup_steps: int) -> dict:
    """Predicted final loss of each named lrs array."""
    return {name: float(predict(params, lrs, warmup_steps, at_steps=[len(lrs) - 1])[0]) for name, lrs in schedules.items()}
