"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675).

The update, per parameter tensor p with gradient g and momentum m (`exp_avg`):

    p <- p * (1 - lr * wd)                       decoupled weight decay
    u  = b1 * m + (1 - b1) * g                   interpolation used only for the update direction
    p <- p - lr * sign(u)
    m <- b2 * m + (1 - b2) * g                   momentum, with the second beta

Defaults are the paper's and its reference code's: lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0. The paper
advises an lr 3-10x smaller and a weight decay 3-10x larger than AdamW's for the same model.

State per parameter: `step` (0-dim fp32 CPU tensor, number of updates made) and `exp_avg` (fp32, or fp64
for fp64 parameters; bf16/fp16 parameters are updated through an fp32 copy).
`foreach=True` (default) runs the multi-tensor path; `foreach=False` the per-tensor reference path below.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError, check_range
from .registry import OptimizerSpec, register

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _state_dtype(p: torch.Tensor) -> torch.dtype:
    """Optimizer state is fp32 (fp64 for fp64 parameters)."""
    return torch.promote_types(p.dtype, torch.float32)


def _number(field: str, value, lo=None, hi=None, lo_open=False, hi_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, f"must be a number, got {value!r}")
    check_range(field, float(value), lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
    return float(value)


def _check_group(group: dict) -> None:
    _number("optim.lr", group["lr"], lo=0.0)
    _number("optim.weight_decay", group["weight_decay"], lo=0.0)
    betas = group["betas"]
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise ConfigError("optim.betas", f"must be a pair [beta1, beta2], got {betas!r}")
    for i, b in enumerate(betas):
        _number(f"optim.betas[{i}]", b, lo=0.0, hi=1.0, hi_open=True)


class Lion(torch.optim.Optimizer):
    """Lion: sign of an interpolated momentum, decoupled weight decay."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0, *,
                 foreach: bool = True):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, weight_decay=weight_decay)
        _check_group(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_group(group)
        self.foreach = bool(foreach)

    # -- state ----------------------------------------------------------------------------------------------
    def _init_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=_state_dtype(p), memory_format=torch.preserve_format)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        _keep_fp32_state(self, state_dict)

    # -- step -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                self._init_state(p)
            if self.foreach:
                self._step_foreach(group, params)
            else:
                self._step_reference(group, params)
            for p in params:
                self.state[p]["step"] += 1
        return loss

    def _step_reference(self, group: dict, params: list) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        for p in params:
            m = self.state[p]["exp_avg"]
            g = p.grad.to(m.dtype)
            w = p.float() if p.dtype in _LOW_PRECISION else p  # fp32 working copy of a low-precision parameter
            w.mul_(1 - lr * wd)
            u = m.lerp(g, 1 - beta1)  # b1*m + (1-b1)*g
            w.add_(u.sign_(), alpha=-lr)
            m.lerp_(g, 1 - beta2)  # m = b2*m + (1-b2)*g
            if w is not p:
                p.copy_(w)

    def _step_foreach(self, group: dict, params: list) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        for ps in _buckets(params, lambda p: (p.device, _state_dtype(p))).values():
            ms = [self.state[p]["exp_avg"] for p in ps]
            gs = [p.grad.to(m.dtype) for p, m in zip(ps, ms)]
            ws = [p.float() if p.dtype in _LOW_PRECISION else p for p in ps]
            if wd != 0:
                torch._foreach_mul_(ws, 1 - lr * wd)
            us = torch._foreach_lerp(ms, gs, 1 - beta1)
            torch._foreach_sign_(us)
            torch._foreach_add_(ws, us, alpha=-lr)
            torch._foreach_lerp_(ms, gs, 1 - beta2)
            _write_back(ps, ws)


def _buckets(params: list, key) -> dict:
    """Split tensors into lists that one foreach call can take (same device and dtype)."""
    out: dict = {}
    for p in params:
        out.setdefault(key(p), []).append(p)
    return out


def _write_back(params: list, work: list) -> None:
    for p, w in zip(params, work):
        if w is not p:
            p.copy_(w)


def _keep_fp32_state(opt: torch.optim.Optimizer, state_dict: dict) -> None:
    """torch's load_state_dict casts floating state to the parameter dtype; keep fp32 state for bf16/fp16 ones."""
    ids = {i: p for saved, group in zip(state_dict["param_groups"], opt.param_groups)
           for i, p in zip(saved["params"], group["params"])}
    for i, saved in state_dict["state"].items():
        p = ids.get(i)
        if p is None or p.dtype not in _LOW_PRECISION:
            continue
        for key, value in saved.items():
            if key != "step" and torch.is_tensor(value) and value.is_floating_point():
                opt.state[p][key] = value.to(device=p.device, dtype=_state_dtype(p), copy=True)


register(OptimizerSpec(
    "lion", lambda groups, hp: Lion(groups, **hp),
    {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0},
    "Chen et al. 2023 (arXiv 2302.06675)", "1 fp32 (exp_avg)", source="here",
    notes="decoupled weight decay; use lr 3-10x smaller and weight decay 3-10x larger than AdamW's"))
