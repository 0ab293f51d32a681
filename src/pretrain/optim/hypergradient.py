"""Hypergradient descent: SGD-HD and Adam-HD (Baydin et al. 2018, ICLR; repo gbaydin/hypergradient-descent).

The learning rate is itself learned by gradient descent on the loss. With u_{t-1} the previous update direction
(p_t = p_{t-1} - alpha * u_{t-1}), d f(p_t) / d alpha = -g_t . u_{t-1}, so every step first does

    h_t     = sum over the group's parameters of dot(g_t, u_{t-1})
    alpha_t = alpha_{t-1} + hyper_lr * h_t

and then the base step with alpha_t. On the first step there is no previous direction: h_1 = 0, alpha unchanged.
alpha is not clipped (as in the paper and the repo).

``sgd_hd``:  g_t = grad + weight_decay * p (L2, as torch.optim.SGD and the repo);
             u = g (momentum=0) | buf = momentum*buf + g, u = buf (heavy ball) | u = g + momentum*buf (nesterov)
             p -= lr_t * u
``adam_hd``: g_t = grad (raw; the hypergradient uses the previous Adam direction, not the decay term);
             m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;  u = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
             p *= 1 - lr_t * weight_decay   (decoupled);   p -= lr_t * u
             u_{t-1} is recomputed at step t from m, v and the step count before they are updated: it is exactly
             the previous direction and needs no extra buffer.

Schedules (the interaction chosen here): the adapted rate alpha lives in ``group["hd_lr"]``, a float in the
param group (visible, and saved/restored exactly by state_dict()/load_state_dict()); it starts at
``group["initial_lr"]`` (the group's base lr = lr * lr_mult). The training loop's schedule keeps writing
``group["lr"] = initial_lr * factor``; this optimizer never writes ``group["lr"]`` and steps with

    lr_t = alpha_t * group["lr"] / group["initial_lr"]          (factor taken as 1 when initial_lr == 0)

so the schedule multiplies the hypergradient-adapted rate (warmup and decay still act), while alpha follows the
paper's rule exactly (h carries no schedule factor). With no schedule this is the paper's algorithm. ``lr=0``
(the README's "start from zero") works: alpha grows from 0 and the factor stays 1.

Parameter groups: each group adapts its own alpha from its own parameters' h (the derivative of the loss with
respect to that group's rate); with one group this is the paper's global rule. muP multipliers only set each
group's starting alpha.

Defaults: paper section 5 and the repo's run.sh: alpha_0 = 1e-3; hyper_lr (beta) = 1e-3 for SGD-HD/SGDN-HD and
1e-7 for Adam-HD (1e-8 in the VGG runs; the repo's class defaults are 1e-6 and 1e-8). Differences from the repo:
Adam's eps is added to sqrt(v_hat) (torch's current Adam; the repo adds it to sqrt(v)); Adam-HD weight decay is
decoupled (the repo's is L2); the repo updates lr parameter by parameter inside its loop, here h is summed over
the whole group first and then every parameter steps with the same alpha_t.

``foreach=True`` (default) runs the multi-tensor path, ``foreach=False`` the per-tensor reference path. The
multi-tensor path makes the hypergradient and the state update that does not depend on the new rate in one pass
(SGD-HD: h and u_prev <- g, or the heavy-ball buffer; Adam-HD: h from the old moments, then the moments):
`dot_update_` and `dot_adam_moments_` below, torch ops (with the opt-in speed layer, `fast.enable_kernels()`, a
fused CPU kernel for contiguous fp32 CPU tensors, fast/cpu_kernels.py); then the parameters move.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError, check_number
from . import fast
from ._common import (bias_corrected_direction, check_betas, closure_loss, corrected_direction, dots,
                      params_with_grads, step_scalars)
from .registry import OptimizerSpec, register


def dot_update_(gs: list, qs: list, a: float, b: float) -> torch.Tensor:
    """SGD-HD's first pass: h = sum_k dot(gs[k], qs[k]) (0-dim float64, before the update), then
    qs[k] <- a * qs[k] + b * gs[k] (a=0, b=1: a copy of gs[k])."""
    h = dots(gs, qs)
    if a == 0.0 and b == 1.0:
        torch._foreach_copy_(qs, gs)
    else:
        torch._foreach_mul_(qs, a)
        torch._foreach_add_(qs, gs, alpha=b)
    return h


def dot_adam_moments_(gs: list, ms: list, vs: list, betas, c1s: list, c2s: list, use: list, eps: float):
    """Adam-HD's first pass: h = sum over tensors k with use[k] of dot(g_k, (m_k / c1_k) / (sqrt(v_k / c2_k) + eps))
    (0-dim float64; the moments and bias corrections of the previous step), then the moments updated in place with
    the gradients gs."""
    beta1, beta2 = betas
    idx = [k for k, u in enumerate(use) if u]
    prev = corrected_direction([ms[k] for k in idx], [vs[k] for k in idx], [c1s[k] for k in idx],
                               [c2s[k] for k in idx], eps) if idx else []
    h = dots([gs[k] for k in idx], prev, gs[0].device)
    torch._foreach_mul_(ms, beta1)
    torch._foreach_add_(ms, gs, alpha=1 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
    return h


class _HypergradientOptimizer(torch.optim.Optimizer):
    """Shared driver: per group, h from the previous direction, alpha update, then the base step."""

    def __init__(self, params, defaults: dict, foreach: bool):
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._validate(group)
            group.setdefault("initial_lr", group["lr"])
            group.setdefault("hd_lr", float(group["initial_lr"]))
        self.foreach = bool(foreach)
        if self.foreach:
            fast.prepare(self.param_groups)  # builds the opt-in fused kernels where enabled

    @staticmethod
    def _validate(group: dict) -> None:
        check_number("optim.lr", group["lr"], lo=0.0)
        check_number("optim.hyper_lr", group["hyper_lr"], lo=0.0)
        check_number("optim.weight_decay", group["weight_decay"], lo=0.0)

    @staticmethod
    def schedule_factor(group: dict) -> float:
        base = group["initial_lr"]
        return group["lr"] / base if base != 0 else 1.0

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            params = params_with_grads(group, type(self).__name__)
            if not params:
                continue
            grads = self._init_and_grads(group, params)
            h = self._hypergradient(group, params, grads)
            group["hd_lr"] = group["hd_lr"] + group["hyper_lr"] * float(h)
            lr_t = group["hd_lr"] * self.schedule_factor(group)
            if self.foreach:
                self._update_foreach(group, params, grads, lr_t)
            else:
                self._update_reference(group, params, grads, lr_t)
        return loss

    def metrics(self) -> dict:
        return {"hd_lr": float(self.param_groups[0]["hd_lr"])}


class SGDHD(_HypergradientOptimizer):
    """SGD-HD / SGDN-HD (see the module docstring)."""

    def __init__(self, params, lr: float = 1e-3, hyper_lr: float = 1e-3, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, *, foreach: bool = True):
        defaults = dict(lr=lr, hyper_lr=hyper_lr, momentum=momentum, nesterov=bool(nesterov),
                        weight_decay=weight_decay)
        self._validate({**defaults})
        super().__init__(params, defaults, foreach)

    @staticmethod
    def _validate(group: dict) -> None:
        _HypergradientOptimizer._validate(group)
        check_number("optim.momentum", group["momentum"], lo=0.0, hi=1.0, hi_open=True)
        if group["nesterov"] and group["momentum"] <= 0:
            raise ConfigError("optim.nesterov", "Nesterov momentum needs momentum in (0, 1)",
                              got=group["momentum"])

    @staticmethod
    def _keeps_prev_direction(group: dict) -> bool:
        # heavy ball: the previous direction is the momentum buffer itself (before this step's update)
        return group["momentum"] == 0 or group["nesterov"]

    @classmethod
    def _direction_key(cls, group: dict) -> str:
        """The state holding the previous direction u_{t-1} (after `_hypergradient`'s fused pass: u_t)."""
        return "prev_direction" if cls._keeps_prev_direction(group) else "momentum_buffer"

    def _init_and_grads(self, group, params):
        for p in params:
            state = self.state[p]
            if not state:
                if group["momentum"] != 0:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if self._keeps_prev_direction(group):
                    state["prev_direction"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        grads = [p.grad for p in params]
        wd = group["weight_decay"]
        if wd != 0:
            if self.foreach:
                grads = torch._foreach_add(grads, params, alpha=wd)
            else:
                grads = [p.grad.add(p, alpha=wd) for p in params]
        return grads

    def _hypergradient(self, group, params, grads):
        key = self._direction_key(group)
        if self.foreach and not group["nesterov"]:
            # One pass over g and the previous direction q: h = sum dot(g, q), and q becomes this step's
            # direction (plain SGD: q <- g; heavy ball: q <- momentum * q + g), which does not depend on the new
            # rate; `_update_foreach` then only moves the parameters along q.
            first_pass = fast.kernel("dot_update_", dot_update_)
            return first_pass(grads, [self.state[p][key] for p in params], group["momentum"], 1.0)
        return dots(grads, [self.state[p][key] for p in params], params[0].device)

    def _update_reference(self, group, params, grads, lr_t):
        momentum = group["momentum"]
        for p, g in zip(params, grads):
            state = self.state[p]
            if momentum != 0:
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(g)
                u = g.add(buf, alpha=momentum) if group["nesterov"] else buf
            else:
                u = g
            p.add_(u, alpha=-lr_t)
            if "prev_direction" in state:
                state["prev_direction"].copy_(u)

    def _update_foreach(self, group, params, grads, lr_t):
        momentum = group["momentum"]
        states = [self.state[p] for p in params]
        if not group["nesterov"]:  # `_hypergradient` already made the direction (prev_direction / momentum_buffer)
            torch._foreach_add_(params, [s[self._direction_key(group)] for s in states], alpha=-lr_t)
            return
        bufs = [s["momentum_buffer"] for s in states]  # nesterov: u = g + momentum * buf, after the buffer's update
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads)
        directions = torch._foreach_add(grads, bufs, alpha=momentum)
        torch._foreach_add_(params, directions, alpha=-lr_t)
        torch._foreach_copy_([s["prev_direction"] for s in states], directions)


class AdamHD(_HypergradientOptimizer):
    """Adam-HD (see the module docstring)."""

    def __init__(self, params, lr: float = 1e-3, hyper_lr: float = 1e-7, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, foreach: bool = True):
        defaults = dict(lr=lr, hyper_lr=hyper_lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        self._validate({**defaults})
        super().__init__(params, defaults, foreach)

    @staticmethod
    def _validate(group: dict) -> None:
        _HypergradientOptimizer._validate(group)
        check_betas(group["betas"])
        check_number("optim.eps", group["eps"], lo=0.0)

    def _init_and_grads(self, group, params):
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return [p.grad for p in params]

    @staticmethod
    def _direction(m, v, step, beta1, beta2, eps):
        """The Adam direction m_hat / (sqrt(v_hat) + eps) of step `step` (reference form)."""
        return (m / (1 - beta1 ** step)) / ((v / (1 - beta2 ** step)).sqrt() + eps)

    def _hypergradient(self, group, params, grads):
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        steps = [self.state[p]["step"] for p in params]
        if self.foreach:
            # One pass over g, m, v: h from the previous direction (the moments and step before this one; tensors
            # stepped before only), then the moments updated with g, which does not depend on the new rate;
            # `_update_foreach` then reads the new moments to move the parameters.
            seen = [t > 0 for t in steps]
            first_pass = fast.kernel("dot_adam_moments_", dot_adam_moments_)
            return first_pass(
                grads, [self.state[p]["exp_avg"] for p in params], [self.state[p]["exp_avg_sq"] for p in params],
                (beta1, beta2), step_scalars(steps, lambda t: 1 - beta1 ** t),
                step_scalars(steps, lambda t: 1 - beta2 ** t), seen, eps)
        seen = [(p, g) for p, g in zip(params, grads) if self.state[p]["step"] > 0]
        states = [self.state[p] for p, _ in seen]
        prev = [self._direction(s["exp_avg"], s["exp_avg_sq"], s["step"], beta1, beta2, eps) for s in states]
        return dots([g for _, g in seen], prev, params[0].device)

    def _update_reference(self, group, params, grads, lr_t):
        beta1, beta2 = group["betas"]
        wd = group["weight_decay"]
        for p, g in zip(params, grads):
            state = self.state[p]
            state["step"] += 1
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            u = self._direction(m, v, state["step"], beta1, beta2, group["eps"])
            if wd != 0:
                p.mul_(1 - lr_t * wd)
            p.add_(u, alpha=-lr_t)

    def _update_foreach(self, group, params, grads, lr_t):
        wd = group["weight_decay"]
        states = [self.state[p] for p in params]
        for s in states:
            s["step"] += 1
        # the moments were updated by `_hypergradient`
        update = bias_corrected_direction([s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                                          [s["step"] for s in states], group["betas"], group["eps"])
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr_t * wd)
        torch._foreach_add_(params, update, alpha=-lr_t)


register(OptimizerSpec.of_class(
    "sgd_hd", SGDHD,
    "Baydin et al. 2018 (hypergradient descent)",
    "1 x param (previous direction; heavy ball: the momentum buffer only; nesterov: both)",
    source="here",
    notes="lr adapted by hyper_lr * dot(g_t, u_{t-1}) per group, kept in group['hd_lr']; effective lr = "
          "hd_lr * schedule factor (group['lr'] / group['initial_lr']); momentum > 0: heavy-ball HD, nesterov=true: "
          "SGDN-HD; L2 weight decay (torch SGD's)",
    compile="no_gain",  # step time / fused AdamW, eager -> compiled (CPU): 0.92 -> 0.88 (eager: one fused pass)
    state_bytes=lambda hp: 8 if hp["nesterov"] else 4))
register(OptimizerSpec.of_class(
    "adam_hd", AdamHD,
    "Baydin et al. 2018 (hypergradient descent)", "2 x param (m, v)",
    source="here",
    notes="Adam whose lr is adapted by hyper_lr * dot(g_t, m_hat/(sqrt(v_hat)+eps) of t-1) per group, kept in "
          "group['hd_lr']; effective lr = hd_lr * schedule factor; decoupled weight decay",
    compile="pays",  # step time / fused AdamW, eager -> compiled (CPU): 3.34 -> 1.59
    ema_keys=("betas",), state_bytes=8))
