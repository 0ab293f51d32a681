"""LARS (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks", arXiv 1708.03888).

Per parameter tensor w with gradient g and momentum buffer b (`momentum_buffer`):

    trust = tc * ||w|| / (||g|| + wd * ||w|| + eps)          local (layer-wise) learning rate;
                                                             1 if ||w|| or ||g|| is 0
    d     = (g + wd * w) * trust
    b    <- momentum * b + d                                  heavy-ball momentum, no dampening
    w    <- w - lr * b

Tensors excluded from layer adaptation (`exclude_vectors=True`, the usual practice and REFERENCES.md's
"usually not applied to biases and norms"): every tensor of a group whose kind is "vector" (biases, norm
gains, see `param_groups.py`) and every tensor with ndim < 2 (for parameters passed without groups). They get
neither the trust ratio nor weight decay: d = g, then the same momentum step.

Choices:
- Weight decay is the paper's: L2 added to the gradient *inside* the trust ratio (Algorithm 1), not a
  separate p *= 1 - lr*wd; the trust ratio's wd*||w|| term only makes sense that way.
- The global lr multiplies the momentum buffer (torch SGD convention, as in the REFERENCES rule), where the
  paper's Algorithm 1 puts gamma_t inside the buffer; the two differ only while the lr changes.
- trust = 1 when ||w|| = 0 or ||g|| = 0 (a zero-initialized tensor would otherwise never move).

Defaults: momentum=0.9, trust_coefficient=1e-3 and weight_decay=5e-4 are the paper's (AlexNet-BN / ResNet-50
settings); eps=1e-8. The paper tunes the base lr per batch size with a polynomial (power 2) decay and gives
no single default; lr=1.0 here (timm's `Lars` default), which with tc=1e-3 moves each tensor by about
1e-3 * ||w|| per step.

State per parameter: `step` (0-dim fp32 CPU tensor), `momentum_buffer` (fp32; fp64 for fp64 parameters).
`foreach=True` (default) runs the multi-tensor path, `foreach=False` the per-tensor reference path.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError, check_number
from . import fast
from ._common import FP32StateOptimizer, LOW_PRECISION, buckets, materialize, sq_norms, state_dtype, write_back
from .registry import OptimizerSpec, register


def _check_group(group: dict) -> None:
    check_number("optim.lr", group["lr"], lo=0.0)
    check_number("optim.momentum", group["momentum"], lo=0.0, hi=1.0, hi_open=True)
    check_number("optim.weight_decay", group["weight_decay"], lo=0.0)
    check_number("optim.trust_coefficient", group["trust_coefficient"], lo=0.0, lo_open=True)
    check_number("optim.eps", group["eps"], lo=0.0)
    if not isinstance(group["exclude_vectors"], bool):
        raise ConfigError("optim.exclude_vectors", f"must be true or false, got {group['exclude_vectors']!r}")


def _excluded(group: dict, p: torch.Tensor) -> bool:
    """Biases and norm gains skip the trust ratio and weight decay."""
    return group["exclude_vectors"] and (group.get("kind") == "vector" or p.ndim < 2)


class LARS(FP32StateOptimizer):
    """LARS: SGD with momentum on the gradient (+ L2) rescaled per tensor by tc*||w|| / (||g|| + wd*||w|| + eps)."""

    STATE_KEYS = ("momentum_buffer",)

    def __init__(self, params, lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 5e-4,
                 trust_coefficient: float = 1e-3, eps: float = 1e-8, exclude_vectors: bool = True, *,
                 foreach: bool = True):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, exclude_vectors=exclude_vectors)
        super().__init__(params, defaults, foreach=foreach, check_group=_check_group)
        fast.prepare(self.param_groups)  # builds the opt-in fused kernel where enabled

    @torch.no_grad()
    def step(self, closure=None):
        return self._run_step(closure, "LARS")

    def _step_reference(self, group: dict, params: list) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        tc, eps = group["trust_coefficient"], group["eps"]
        for p in params:
            buf = self.state[p]["momentum_buffer"]
            g = p.grad.to(buf.dtype)
            w = p.float() if p.dtype in LOW_PRECISION else p  # fp32 working copy of a low-precision parameter
            if _excluded(group, p):
                d = g
            else:
                w_norm, g_norm = w.norm(), g.norm()
                trust = torch.where((w_norm > 0) & (g_norm > 0), tc * w_norm / (g_norm + wd * w_norm + eps),
                                    torch.ones_like(w_norm))
                d = (g + wd * w) * trust
            buf.mul_(mu).add_(d)
            w.add_(buf, alpha=-lr)
            if w is not p:
                p.copy_(w)

    def _step_foreach(self, group: dict, params: list) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        tc, eps = group["trust_coefficient"], group["eps"]
        key = lambda p: (p.device, state_dtype(p), _excluded(group, p))  # noqa: E731
        for (_, _, excluded), ps in buckets(params, key).items():
            bufs = [self.state[p]["momentum_buffer"] for p in ps]
            gs = [p.grad.to(b.dtype) for p, b in zip(ps, bufs)]
            ws = [p.float() if p.dtype in LOW_PRECISION else p for p in ps]
            if excluded:
                ds = gs
            else:
                # ||w||^2 and ||g||^2 (one pass over both with the opt-in fused CPU kernel, fast/cpu_kernels.py)
                w_norms, g_norms = fast.kernel("sq_norms", sq_norms)(ws, gs).sqrt().to(bufs[0].dtype).unbind(1)
                trust = torch.where((w_norms > 0) & (g_norms > 0), tc * w_norms / (g_norms + wd * w_norms + eps),
                                    torch.ones_like(w_norms))
                if torch.compiler.is_compiling():
                    trust = materialize(trust)
                ds = torch._foreach_add(gs, ws, alpha=wd)
                torch._foreach_mul_(ds, list(trust.unbind()))
            torch._foreach_mul_(bufs, mu)
            torch._foreach_add_(bufs, ds)
            torch._foreach_add_(ws, bufs, alpha=-lr)
            write_back(ps, ws)



register(OptimizerSpec.of_class(
    "lars", LARS,
    "You, Gitman & Ginsburg 2017 (arXiv 1708.03888)", "1 fp32 (momentum_buffer)", source="here",
    notes="trust ratio tc*||w||/(||g||+wd*||w||+eps) per tensor; L2 weight decay inside the trust ratio (the "
          "paper's); exclude_vectors: biases and norm gains (kind 'vector', ndim < 2) skip trust ratio and weight "
          "decay; lr 1.0 is timm's default (the paper tunes lr per batch size, with a polynomial decay)",
    compile="pays",  # step time / fused AdamW, eager -> compiled (CPU): 3.44 -> 1.10
    state_bytes=4))
