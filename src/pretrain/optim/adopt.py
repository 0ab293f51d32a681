"""ADOPT (Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any beta2", arXiv 2411.02853).

ADOPT normalizes the gradient by the second moment of the *previous* steps (so the current gradient is not
in its own denominator), clips the normalized gradient, and only then takes momentum. Per parameter tensor p
with gradient g, momentum m (`exp_avg`), second moment v (`exp_avg_sq`) and t = `step` = number of calls
made before this one (the official code's step count before its increment):

    t == 0:  v <- g * g                                     no parameter update, m untouched
    t >= 1:  p <- p * (1 - lr * wd)                         decoupled weight decay (from the second call on)
             n  = g / max(sqrt(v), eps)
             n  = clip(n, -t**clip_exponent, t**clip_exponent)   (clip value 1 on the second call)
             m <- m + (1 - b1) * (n - m)                    lerp(m, n, 1 - b1)
             p <- p - lr * m
             v <- b2 * v + (1 - b2) * g * g                 v updated after its use

Defaults are the official code's (iShohei220/adopt, PyPI `torch-adopt`): lr=1e-3, betas=(0.9, 0.9999),
eps=1e-6, weight_decay=0.0, clip at step**0.25 (`clip_exponent=None` disables clipping; the paper reports
that unclipped ADOPT can diverge early, and a linear warmup helps either way).

State per parameter: `step` (0-dim fp32 CPU tensor), `exp_avg`, `exp_avg_sq` (fp32; fp64 for fp64 parameters;
bf16/fp16 parameters are updated through an fp32 copy). `foreach=True` (default) runs the multi-tensor path,
`foreach=False` the per-tensor reference path.
"""
from __future__ import annotations

import torch

from ..errors import check_number
from ._common import (FP32StateOptimizer, LOW_PRECISION, buckets, check_betas, state_dtype, step_scalars,
                      write_back)
from .registry import OptimizerSpec, register


def _check_group(group: dict) -> None:
    check_number("optim.lr", group["lr"], lo=0.0)
    check_number("optim.eps", group["eps"], lo=0.0, lo_open=True)
    check_number("optim.weight_decay", group["weight_decay"], lo=0.0)
    check_betas(group["betas"])
    if group["clip_exponent"] is not None:
        check_number("optim.clip_exponent", group["clip_exponent"], lo=0.0)


class ADOPT(FP32StateOptimizer):
    """ADOPT: momentum of the gradient normalized by the previous steps' second moment, clipped."""

    STATE_KEYS = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.9999), eps: float = 1e-6,
                 weight_decay: float = 0.0, clip_exponent: float | None = 0.25, *, foreach: bool = True):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, clip_exponent=clip_exponent)
        super().__init__(params, defaults, foreach=foreach, check_group=_check_group)

    @torch.no_grad()
    def step(self, closure=None):
        return self._run_step(closure, "ADOPT")

    def _step_reference(self, group: dict, params: list) -> None:
        lr, eps, wd, clip_exponent = group["lr"], group["eps"], group["weight_decay"], group["clip_exponent"]
        beta1, beta2 = group["betas"]
        for p in params:
            state = self.state[p]
            t = int(state["step"].item())  # calls before this one
            m, v = state["exp_avg"], state["exp_avg_sq"]
            g = p.grad.to(v.dtype)
            if t == 0:  # first call: initialize the second moment only
                v.copy_(g * g)
                continue
            w = p.float() if p.dtype in LOW_PRECISION else p  # fp32 working copy of a low-precision parameter
            w.mul_(1 - lr * wd)
            n = g / v.sqrt().clamp_(min=eps)
            if clip_exponent is not None:
                c = t ** clip_exponent
                n.clamp_(-c, c)
            m.lerp_(n, 1 - beta1)
            w.add_(m, alpha=-lr)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            if w is not p:
                p.copy_(w)

    def _step_foreach(self, group: dict, params: list) -> None:
        lr, eps, wd, clip_exponent = group["lr"], group["eps"], group["weight_decay"], group["clip_exponent"]
        beta1, beta2 = group["betas"]
        key = lambda p: (p.device, state_dtype(p), int(self.state[p]["step"].item()))  # noqa: E731
        for (_, _, t), ps in buckets(params, key).items():
            ms = [self.state[p]["exp_avg"] for p in ps]
            vs = [self.state[p]["exp_avg_sq"] for p in ps]
            gs = [p.grad.to(v.dtype) for p, v in zip(ps, vs)]
            if t == 0:
                torch._foreach_copy_(vs, torch._foreach_mul(gs, gs))
                continue
            ws = [p.float() if p.dtype in LOW_PRECISION else p for p in ps]
            if wd != 0:
                torch._foreach_mul_(ws, 1 - lr * wd)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_clamp_min_(denom, eps)
            ns = torch._foreach_div(gs, denom)
            if clip_exponent is not None:
                c = t ** clip_exponent
                torch._foreach_clamp_min_(ns, -c)
                torch._foreach_clamp_max_(ns, c)
            torch._foreach_lerp_(ms, ns, 1 - beta1)
            torch._foreach_add_(ws, ms, alpha=-lr)
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
            write_back(ps, ws)

    def _step_compiling(self, group: dict, params: list, fresh: list) -> None:
        """`_step_foreach` under torch.compile (compiled.py), where the step stays a 0-dim tensor.

        Reading it as a Python number (`.item()`) breaks the graph and bakes the number into it: a new graph every
        step. So here the clip values t**clip_exponent come from `step_scalars` (fp64, one stacked buffer), and the
        first call's "v only" branch is taken for the parameters whose state this call created (`fresh`, from
        `_run_step`: a Python fact at trace time, so the first call and the later ones compile to different graphs,
        and the later ones' loops carry no first-call select; not an attribute: torch 2.11's dynamo cannot set one
        on the optimizer). Written per tensor: Inductor fuses each tensor's update
        into one loop either way.
        """
        lr, eps, wd, clip_exponent = group["lr"], group["eps"], group["weight_decay"], group["clip_exponent"]
        beta1, beta2 = group["betas"]
        steps = [self.state[p]["step"] for p in params]
        clips = step_scalars(steps, lambda t: t ** clip_exponent) if clip_exponent is not None else [None] * len(steps)
        for p, new, c in zip(params, fresh, clips):
            state = self.state[p]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            g = p.grad.to(v.dtype)
            if new:  # first call: initialize the second moment only
                v.copy_(g * g)
                continue
            w = p.float() if p.dtype in LOW_PRECISION else p
            n = g / v.sqrt().clamp(min=eps)
            if clip_exponent is not None:
                n = torch.minimum(torch.maximum(n, -c), c)
            if wd != 0:
                w.mul_(1 - lr * wd)
            m.lerp_(n, 1 - beta1)
            w.sub_(lr * m)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            if w is not p:
                p.copy_(w)


register(OptimizerSpec.of_class(
    "adopt", ADOPT,
    "Taniguchi et al. 2024 (arXiv 2411.02853)", "2 fp32 (exp_avg, exp_avg_sq)", source="here",
    notes="first call only initializes v; normalized gradient clipped to step**clip_exponent (0.25; null disables "
          "the clip, which can diverge early); decoupled weight decay; a linear warmup is advised",
    compile="pays",  # step time / fused AdamW, eager -> compiled (CPU): 5.49 -> 0.99
    ema_keys=("betas",), state_bytes=8, mup="adam"))
