"""The Multi-Power Law (Luo et al. 2025, arXiv 2503.12811): loss as a function of the whole lr schedule.

    L(t) = L0 + A * (S1(t) + S_W)^(-alpha) - LD(t)
    LD(t) = B * sum_{k=W+1..t} (eta_{k-1} - eta_k) * G(eta_k^(-gamma) * S_k(t))
    S_k(t) = sum_{tau=k..t} eta_tau,        G(x) = 1 - (C*x + 1)^(-beta)

Index conventions (they follow the official code, thu-yao-01-luo/MultiPowerLaw, whose fit uses
`lr_sum = cumsum(lrs)`, `S1 = lr_sum[step]`, `LD[s] = sum(lr_gap[1:s+1] * G(lrs[1:s+1]^-gamma * (lr_sum[s] - lr_sum[:s])))`):

* `lrs[i]` is the lr of optimizer update i+1, i.e. `schedule(i)` in this project (step = updates already
  taken, from 0); `W = warmup_steps` is the number of warmup entries at the front of `lrs`.
* The prediction at index t is the loss after the updates with `lrs[0..t]` (t inclusive).
* `S1(t) + S_W = sum_{tau=0..t} lrs[tau]`: S_W is the realized warmup area `sum(lrs[:W])` and
  S1(t) = `sum(lrs[W..t])` (inclusive of both ends), exactly the official `cumsum(lrs)[t]`. (With this
  project's warmup, lr = peak*step/W, S_W = peak*(W-1)/2; the official optimizer uses 0.5*peak*W.)
* The loss-drop sum runs over k = W+1..t, so eta_{k-1} for the first term is `lrs[W]`, the lr at the end
  of warmup (the paper's eta_0, the peak). With W = 0 this is k = 1..t, the official fitting code verbatim
  (which keeps the warmup ramp inside LD, where its rising lr counts as a negative drop); with W > 0 the
  warmup ramp enters only through S_W, as in the paper's formula and the official schedule optimizer.

Everything is computed with torch in float64 and is differentiable w.r.t. the parameters and `lrs`.
Cost: O(len(at_steps) * T) per call, done in row blocks; terms with eta_{k-1} == eta_k are skipped when
`lrs` needs no gradient (they are exactly zero), so constant / step schedules cost almost nothing.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

PARAM_NAMES = ("L0", "A", "alpha", "B", "C", "beta", "gamma")
_TINY_LR = 1e-20  # floor for eta_k in eta_k^-gamma, so an lr of exactly 0 gives G -> 1 instead of nan
_BLOCK_ELEMS = 1 << 22  # entries of the (eval steps x k) matrix handled at once


@dataclass
class MPLParams:
    """The seven Multi-Power-Law parameters (all positive)."""

    L0: float
    A: float
    alpha: float
    B: float
    C: float
    beta: float
    gamma: float

    def to_dict(self) -> dict:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "MPLParams":
        if "L0" not in d and isinstance(d.get("params"), dict):  # a schedule / fit file with nested params
            d = d["params"]
        missing = [n for n in PARAM_NAMES if n not in d]
        if missing:
            raise KeyError(f"MPL parameters missing {missing}; need {list(PARAM_NAMES)}")
        return cls(**{n: float(d[n]) for n in PARAM_NAMES})

    def to_json(self, path: str | Path | None = None, **extra) -> str:
        text = json.dumps({**self.to_dict(), **extra}, indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> "MPLParams":
        p = Path(path_or_text) if not str(path_or_text).lstrip().startswith("{") else None
        text = p.read_text() if p is not None else str(path_or_text)
        return cls.from_dict(json.loads(text))

    def as_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))


# published fit of the 25M model (official README; peak 3e-4, warmup 2160, 24000 steps)
PAPER_25M = MPLParams(L0=3.0405, A=0.5247, alpha=0.5079, B=363.79, C=2.0656, beta=0.5828, gamma=0.6414)


def _param_tensors(params) -> dict:
    """MPLParams / dict of floats or tensors -> dict of float64 tensors (tensors kept, so gradients flow)."""
    if isinstance(params, MPLParams):
        params = params.to_dict()
    out = {}
    for n in PARAM_NAMES:
        v = params[n]
        out[n] = v if torch.is_tensor(v) else torch.tensor(float(v), dtype=torch.float64)
    return out


def _as_lrs(lrs) -> torch.Tensor:
    if torch.is_tensor(lrs):
        return lrs.to(torch.float64)
    return torch.as_tensor(np.asarray(lrs, dtype=np.float64))


def predict(params, lrs, warmup_steps: int = 0, at_steps: Sequence[int] | None = None,
            as_numpy: bool | None = None):
    """Predicted loss at every index of `lrs` (or only at `at_steps`), see the module docstring.

    params: MPLParams or a dict name -> float / 0-dim tensor (tensors keep their autograd graph).
    lrs: per-step learning rates (array or float64 tensor, may require grad).
    at_steps: indices t to evaluate (default: all). Index 0 with lrs[0] == 0 gives +inf (no lr area yet).
    Returns a numpy array when lrs is not a tensor and nothing needs a gradient (or as_numpy=True),
    else a float64 tensor.
    """
    p = _param_tensors(params)
    eta = _as_lrs(lrs)
    T = eta.shape[0]
    W = int(warmup_steps)
    if not 0 <= W < max(T, 1):
        raise ValueError(f"warmup_steps={W} must be in [0, len(lrs)={T})")
    if at_steps is None:
        t_idx = torch.arange(T)
    else:
        t_idx = torch.as_tensor(np.asarray(at_steps, dtype=np.int64).reshape(-1))
        if t_idx.numel() and (int(t_idx.min()) < 0 or int(t_idx.max()) >= T):
            raise ValueError(f"at_steps must lie in [0, {T}), got range [{int(t_idx.min())}, {int(t_idx.max())}]")
    needs_grad = eta.requires_grad or any(v.requires_grad for v in p.values())
    if as_numpy is None:
        as_numpy = not needs_grad and not torch.is_tensor(lrs)

    prefix = torch.cumsum(eta, 0)  # prefix[t] = S1(t) + S_W
    power_term = p["L0"] + p["A"] * prefix[t_idx] ** (-p["alpha"])

    # loss-drop terms k = W+1..T-1
    ks = torch.arange(W + 1, T)
    drop = eta[ks - 1] - eta[ks]  # eta_{k-1} - eta_k
    if not eta.requires_grad:  # exact zeros contribute nothing: skip them
        keep = drop != 0
        ks, drop = ks[keep], drop[keep]
    if ks.numel() == 0 or t_idx.numel() == 0:
        ld = torch.zeros_like(power_term)
    else:
        eta_pow = eta[ks].clamp_min(_TINY_LR) ** (-p["gamma"])  # eta_k^-gamma
        before_k = prefix[ks - 1]  # sum_{tau<k} eta_tau
        rows = max(1, _BLOCK_ELEMS // ks.numel())
        parts = []
        for start in range(0, t_idx.numel(), rows):
            t_blk = t_idx[start:start + rows]
            active = ks[None, :] <= t_blk[:, None]
            s_k = torch.where(active, prefix[t_blk][:, None] - before_k[None, :], torch.zeros((), dtype=eta.dtype))
            g = 1.0 - (p["C"] * eta_pow[None, :] * s_k + 1.0) ** (-p["beta"])  # G = 0 where inactive
            parts.append(g @ drop)
        ld = p["B"] * torch.cat(parts)
    pred = power_term - ld
    return pred.detach().cpu().numpy() if as_numpy else pred


def predict_final(params, lrs, warmup_steps: int = 0):
    """Predicted loss after the last step of `lrs` (a 0-dim tensor, differentiable)."""
    n = len(lrs) if not torch.is_tensor(lrs) else lrs.shape[0]
    return predict(params, lrs, warmup_steps, at_steps=[n - 1], as_numpy=False)[0]


def isfinite_params(params: MPLParams) -> bool:
    return all(math.isfinite(v) and v > 0 for v in params.as_tuple())
