"""Gradient clipping policies (`clip.policy`), applied by the step (`step.LoopEngine.train_step`) between the
gradient and the optimizer step, to the synchronized gradients of every parameter.

With n the global L2 norm of the unclipped gradient (every parameter, all ranks: `accelerator.clip_grad_norm_`):

  none        nothing is clipped (n is still logged)
  norm        threshold c = clip.max_norm; if n > c every gradient is scaled by c / (n + 1e-6) (torch's rule)
  value       every gradient element is clamped to [-clip.value, clip.value]; threshold = clip.value
  percentile  c = the clip.percentile-th percentile (numpy's linear interpolation) of the unclipped norms of the
              previous steps (the last clip.window of them; 0 = all), once clip.warmup_steps norms have been seen
              (before that nothing is clipped); then as `norm` with c. The current norm joins the history after.
              The Deep Learning Tuning Playbook's rule (clip at the 90th percentile of gradient norms).
  zscore      c = mu + clip.z * sigma with mu, sigma^2 an exponential moving average (beta = clip.beta) of the
              norm and of its variance; once clip.warmup_steps norms have been seen, then as `norm` with c. The
              statistics are updated with the norm after clipping, min(n, c), so that a spike does not inflate
              them (as ZClip, Kumar et al. 2025): d = m - mu; mu <- mu + (1 - beta) d;
              sigma^2 <- beta (sigma^2 + (1 - beta) d^2) (the incremental EMA variance); the first norm sets mu.
  agc         adaptive gradient clipping (Brock et al. 2021, NFNets), unit-wise: for each row i of a matrix (each
              output unit: the norm over every dimension but the first), or the whole tensor for a vector,
              G_i <- G_i * clip.agc_lambda * max(|W_i|, clip.agc_eps) / |G_i| where |G_i| exceeds
              clip.agc_lambda * max(|W_i|, clip.agc_eps) (|G_i| floored at 1e-6); the untied output head is not
              clipped (the paper's advice); threshold = agc_lambda, clipped = any unit was clipped.

Every policy returns (n, threshold, clipped); the loop logs them with the fraction of the last `RECENT` steps that
clipped, and warns when it exceeds one half (clipping that often is a lower learning rate in disguise).
Percentile and z-score state (history, mu, sigma^2) is saved in checkpoints, so a resume continues exactly.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch

RECENT = 100  # steps in the clip fraction


def scale_to(grads: list, norm: float, threshold: float) -> bool:
    """torch's clip_grad_norm_ rule: scale by threshold / (norm + 1e-6) when norm > threshold."""
    if not norm > threshold:
        return False
    coef = threshold / (norm + 1e-6)
    torch._foreach_mul_(grads, coef)
    return True


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """|x| per output unit: over every dimension but the first for ndim > 1, the whole tensor otherwise."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 for bf16/fp16, fp64 stays fp64
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


class ClipPolicy:
    """Base: subclasses set `threshold(norm)` (None: no clipping this step) and may keep state."""

    def __init__(self, clip_cfg):
        self.cfg = clip_cfg
        self.recent: deque = deque(maxlen=RECENT)

    def threshold(self, norm: float) -> float | None:
        return None

    def observe(self, norm: float, threshold: float | None) -> None:
        """Update the policy's statistics after a step (percentile, zscore)."""

    def __call__(self, params, clip_fn) -> dict:
        """Clip the gradients of `params` in place. `clip_fn(max_norm)` is the engine's global-norm clipping
        (accelerate's clip_grad_norm_: every rank's shard, torch's rule) returning the unclipped norm."""
        norm = float(clip_fn(math.inf))
        thr = self.threshold(norm) if math.isfinite(norm) else None
        clipped = scale_to([p.grad for p in params if p.grad is not None], norm, thr) if thr is not None else False
        self.observe(norm, thr)
        return self._result(norm, thr, clipped)

    def _result(self, norm, thr, clipped) -> dict:
        self.recent.append(bool(clipped))
        return {"grad_norm": norm, "clip_threshold": thr, "clipped": int(clipped),
                "clip_fraction": sum(self.recent) / len(self.recent)}

    def state_dict(self) -> dict:
        return {"recent": [int(x) for x in self.recent]}

    def load_state_dict(self, state: dict) -> None:
        self.recent = deque((bool(x) for x in state.get("recent", [])), maxlen=RECENT)


class NoClip(ClipPolicy):
    pass


class NormClip(ClipPolicy):
    def __call__(self, params, clip_fn):
        c = self.cfg.max_norm
        norm = float(clip_fn(c))  # one pass: norm and torch's scaling
        return self._result(norm, c, norm > c)


class PercentileClip(ClipPolicy):
    def __init__(self, clip_cfg):
        super().__init__(clip_cfg)
        self.history: deque = deque(maxlen=clip_cfg.window or None)

    def threshold(self, norm):
        if len(self.history) < max(1, self.cfg.warmup_steps):
            return None
        return float(np.percentile(np.asarray(self.history, dtype=np.float64), self.cfg.percentile))

    def observe(self, norm, threshold):
        if math.isfinite(norm):
            self.history.append(norm)

    def state_dict(self):
        return {**super().state_dict(), "history": list(self.history)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.history = deque(state.get("history", []), maxlen=self.cfg.window or None)


class ZScoreClip(ClipPolicy):
    def __init__(self, clip_cfg):
        super().__init__(clip_cfg)
        self.count, self.mean, self.var = 0, 0.0, 0.0

    def threshold(self, norm):
        if self.count < max(1, self.cfg.warmup_steps):
            return None
        return self.mean + self.cfg.z * math.sqrt(self.var)

    def observe(self, norm, threshold):
        if not math.isfinite(norm):
            return
        m = norm if threshold is None else min(norm, threshold)
        if self.count == 0:
            self.mean, self.var = m, 0.0
        else:
            b = self.cfg.beta
            d = m - self.mean
            self.mean += (1 - b) * d
            self.var = b * (self.var + (1 - b) * d * d)
        self.count += 1

    def state_dict(self):
        return {**super().state_dict(), "count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.count, self.mean, self.var = int(state.get("count", 0)), float(state.get("mean", 0.0)), \
            float(state.get("var", 0.0))


class ValueClip(ClipPolicy):
    def __call__(self, params, clip_fn):
        grads = [p.grad for p in params if p.grad is not None]
        norm = float(clip_fn(math.inf))
        v = self.cfg.value
        clipped = any(bool((g.abs() > v).any()) for g in grads)
        for g in grads:
            g.clamp_(-v, v)
        return self._result(norm, v, clipped)


class AGC(ClipPolicy):
    def __init__(self, clip_cfg, skip=()):
        super().__init__(clip_cfg)
        self.skip = {id(p) for p in skip}

    @torch.no_grad()
    def __call__(self, params, clip_fn):
        norm = float(clip_fn(math.inf))
        lam, eps, clipped = self.cfg.agc_lambda, self.cfg.agc_eps, False
        for p in params:
            if p.grad is None or id(p) in self.skip:
                continue
            max_norm = unitwise_norm(p).clamp_(min=eps).mul_(lam)
            g_norm = unitwise_norm(p.grad)
            over = g_norm > max_norm
            if bool(over.any()):
                clipped = True
                scale = torch.where(over, max_norm / g_norm.clamp(min=1e-6), torch.ones_like(g_norm))
                p.grad.mul_(scale.to(p.grad.dtype))
        return self._result(norm, lam, clipped)


def check_clip(c, prefix: str = "clip.") -> None:
    """The policy's numbers in range (ConfigError naming `prefix + key`)."""
    from .errors import ConfigError, check_number, check_range

    if c.policy not in POLICIES:
        raise ConfigError(f"{prefix}policy", f"unknown policy {c.policy!r}", list(POLICIES), got=c.policy)
    for key in ("max_norm", "value", "z", "agc_lambda", "agc_eps"):
        check_number(prefix + key, getattr(c, key), lo=0.0, lo_open=True, hi=math.inf, hi_open=True)
    check_number(prefix + "percentile", c.percentile, lo=0.0, hi=100.0, lo_open=True)
    check_number(prefix + "beta", c.beta, lo=0.0, hi=1.0, hi_open=True)
    for key in ("window", "warmup_steps"):
        v = getattr(c, key)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(prefix + key, f"must be an integer, got {v!r}")
        check_range(prefix + key, v, lo=0)


POLICIES = {"none": NoClip, "norm": NormClip, "value": ValueClip, "percentile": PercentileClip,
            "zscore": ZScoreClip, "agc": AGC}


def build_clip_policy(clip_cfg, model=None) -> ClipPolicy:
    """The policy `clip_cfg.policy` (AGC skips the untied output head of `model`)."""
    cls = POLICIES[clip_cfg.policy]
    if cls is AGC:
        head = model.get_output_embeddings() if model is not None and hasattr(model, "get_output_embeddings") \
            else None
        return AGC(clip_cfg, skip=[head.weight] if head is not None else [])
    return cls(clip_cfg)
