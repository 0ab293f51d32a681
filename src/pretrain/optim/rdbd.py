"""RDBD: Regrettable Delta-Bar-Delta (Song & Yang 2023, arXiv 2310.11291) on top of SGD, momentum or Adam.

Only the paper's abstract could be read, so this is *this project's reading* of it (REFERENCES.md, "Optimizers"):
Jacobs' (1988) delta-bar-delta per-coordinate rates, with a "regret" that promptly takes back a rate increase
that mini-batch noise got wrong, applied as a multiplier on any base optimizer's update.

Every coordinate i of every parameter carries a multiplier ``a_i`` (starts at 1), a gradient trace ``gbar_i``
(starts at 0) and ``last_raise_i``, the increase of ``a_i`` made by the previous step, signed by the gradient that
caused it (0 where the previous step did not raise ``a_i``). With ``g`` the mini-batch gradient of step t:

    1. regret    where last_raise_i * g_i < 0 (the previous step raised a_i and g_i has the opposite sign of
                 the previous gradient):                       a_i -= |last_raise_i|     (undo that raise)
    2. DBD       s_i = g_i * gbar_i  (gbar from the steps before t)
                 s_i > 0:  a_i += kappa            (additive increase)
                 s_i < 0:  a_i *= 1 - phi          (multiplicative decrease)
    3. clamp     a_i = clamp(a_i, a_min, a_max);   last_raise_i = (increase made by 2-3) * sign(g_i) where s_i > 0,
                                                   else 0
    4. trace     gbar_i = theta * gbar_i + (1 - theta) * g_i
    5. base      base="sgd":      u = g
                 base="momentum": buf = momentum * buf + g;  u = buf
                 base="adam":     m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;
                                  u = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
    6. step      p *= 1 - lr * weight_decay   (decoupled, AdamW-style, not scaled by a)
                 p -= lr * a * u

Where the regret fires, the decrease of step 2 follows it: the previous raise needed g_{t-1} * gbar_{t-2} > 0,
so gbar_{t-1} has the sign of g_{t-1}, which g_t opposes; net effect a_i = (a_i - raise) * (1 - phi), i.e. the
increase is "regretted" first, then the rate is cut. On the first step gbar = 0, so a stays 1 and the step is a
plain base-optimizer step. ``lr`` is the group's scheduled learning rate (schedules scale it as usual).

Defaults (this project's choices): theta=0.7 (Jacobs 1988); kappa=0.05 (additive, small next to a=1: Jacobs'
kappa was small and additive); phi=0.1 (the low end of the 0.1-0.5 range of multiplicative decreases used with
delta-bar-delta); a in [0.01, 10] (a guard rail, this project's choice); base="adam" with Adam's defaults.
State per parameter: a, gbar, last_raise (3 x param, in the parameter's dtype) + the base's (0, 1 or 2 x param).

``foreach=True`` (default) runs the multi-tensor path (torch._foreach_*); ``foreach=False`` the per-tensor
reference path written like the rule above; both compute the same update.
"""
from __future__ import annotations


import torch

from ..errors import ConfigError, check_number
from ._common import adam_direction_foreach, check_betas, closure_loss, params_with_grads
from .registry import OptimizerSpec, register

BASES = ("sgd", "momentum", "adam")


def _validate(hp: dict) -> None:
    if hp["base"] not in BASES:
        raise ConfigError("optim.base", "unknown base optimizer for RDBD", BASES, got=hp["base"])
    check_number("optim.lr", hp["lr"], lo=0.0)
    check_number("optim.theta", hp["theta"], lo=0.0, hi=1.0, hi_open=True)
    check_number("optim.kappa", hp["kappa"], lo=0.0)
    check_number("optim.phi", hp["phi"], lo=0.0, hi=1.0, hi_open=True)
    check_number("optim.a_min", hp["a_min"], lo=0.0, hi=1.0)
    check_number("optim.a_max", hp["a_max"], lo=1.0)
    check_betas(hp["betas"])
    check_number("optim.eps", hp["eps"], lo=0.0)
    check_number("optim.momentum", hp["momentum"], lo=0.0, hi=1.0, hi_open=True)
    check_number("optim.weight_decay", hp["weight_decay"], lo=0.0)


class RDBD(torch.optim.Optimizer):
    """Regrettable Delta-Bar-Delta per-coordinate multipliers on a base update (see the module docstring)."""

    def __init__(self, params, lr: float = 1e-3, base: str = "adam", theta: float = 0.7, kappa: float = 0.05,
                 phi: float = 0.1, a_min: float = 0.01, a_max: float = 10.0, betas=(0.9, 0.999),
                 eps: float = 1e-8, momentum: float = 0.9, weight_decay: float = 0.0, *, foreach: bool = True):
        defaults = dict(lr=lr, base=base, theta=theta, kappa=kappa, phi=phi, a_min=a_min, a_max=a_max,
                        betas=tuple(betas), eps=eps, momentum=momentum, weight_decay=weight_decay)
        _validate(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _validate(group)
        self.foreach = bool(foreach)

    # ---------------------------------------------------------------------------------------------- state
    def _init_state(self, p: torch.Tensor, base: str) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["a"] = torch.ones_like(p, memory_format=torch.preserve_format)
            state["gbar"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["last_raise"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if base == "momentum":
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif base == "adam":
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            params = params_with_grads(group, "RDBD")
            if not params:
                continue
            for p in params:
                self._init_state(p, group["base"])
            if self.foreach:
                self._step_foreach(group, params)
            else:
                self._step_reference(group, params)
        return loss

    # ----------------------------------------------------------------------------------- reference path
    def _step_reference(self, group: dict, params: list) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        theta, kappa, phi = group["theta"], group["kappa"], group["phi"]
        for p in params:
            g = p.grad
            state = self.state[p]
            state["step"] += 1
            a, gbar, last_raise = state["a"], state["gbar"], state["last_raise"]

            # 1. regret: take back the previous raise where the gradient flipped sign
            flipped = last_raise * g < 0
            a.sub_(torch.where(flipped, last_raise.abs(), torch.zeros_like(a)))
            # 2. delta-bar-delta: agreement of the gradient with the trace of past gradients
            agreement = g * gbar
            a_before = a.clone()
            a.copy_(torch.where(agreement > 0, a + kappa, torch.where(agreement < 0, a * (1 - phi), a)))
            # 3. clamp, and remember the raise (signed by the gradient) for the next step's regret
            a.clamp_(group["a_min"], group["a_max"])
            last_raise.copy_(torch.where(agreement > 0, (a - a_before) * g.sign(), torch.zeros_like(a)))
            # 4. trace
            gbar.mul_(theta).add_(g, alpha=1 - theta)
            # 5. base update u
            u = self._base_direction(group, state, g)
            # 6. step
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.add_(a * u, alpha=-lr)

    @staticmethod
    def _base_direction(group: dict, state: dict, g: torch.Tensor) -> torch.Tensor:
        base = group["base"]
        if base == "sgd":
            return g
        if base == "momentum":
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(g)
            return buf
        beta1, beta2 = group["betas"]
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        return m_hat / (v_hat.sqrt() + group["eps"])

    # -------------------------------------------------------------------------------------- foreach path
    def _step_foreach(self, group: dict, params: list) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        theta, kappa, phi = group["theta"], group["kappa"], group["phi"]
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        a_s = [s["a"] for s in states]
        gbars = [s["gbar"] for s in states]
        raises = [s["last_raise"] for s in states]
        for s in states:
            s["step"] += 1

        sign_g = torch._foreach_sign(grads)
        # 1. regret: last_raise * sign(g) is -|last_raise| exactly where the gradient flipped sign
        undo = torch._foreach_mul(raises, sign_g)
        torch._foreach_clamp_max_(undo, 0.0)
        torch._foreach_add_(a_s, undo)
        del undo
        # 2. delta-bar-delta: agree = +1 / -1 / 0 as g * gbar is > 0 / < 0 / = 0
        agree = torch._foreach_mul(grads, gbars)
        torch._foreach_sign_(agree)
        increase = torch._foreach_clamp_min(agree, 0.0)  # 1 where g * gbar > 0
        decrease = torch._foreach_clamp_max(agree, 0.0)  # -1 where g * gbar < 0
        del agree
        a_before = torch._foreach_add(a_s, 0.0)
        torch._foreach_mul_(decrease, phi)
        torch._foreach_add_(decrease, 1.0)  # 1 - phi where decreasing, else 1
        torch._foreach_mul_(a_s, decrease)
        del decrease
        torch._foreach_add_(a_s, increase, alpha=kappa)
        # 3. clamp, remember the signed raise
        torch._foreach_clamp_min_(a_s, group["a_min"])
        torch._foreach_clamp_max_(a_s, group["a_max"])
        raised = torch._foreach_sub(a_s, a_before)
        del a_before
        torch._foreach_mul_(raised, increase)
        torch._foreach_mul_(raised, sign_g)
        torch._foreach_copy_(raises, raised)
        del raised, increase, sign_g
        # 4. trace
        torch._foreach_mul_(gbars, theta)
        torch._foreach_add_(gbars, grads, alpha=1 - theta)
        # 5. base update, multiplied by a
        base = group["base"]
        if base == "sgd":
            update = torch._foreach_mul(a_s, grads)
        elif base == "momentum":
            bufs = [s["momentum_buffer"] for s in states]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            update = torch._foreach_mul(a_s, bufs)
        else:
            update = adam_direction_foreach(states, grads, group["betas"], group["eps"])
            torch._foreach_mul_(update, a_s)
        # 6. step
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_add_(params, update, alpha=-lr)

    # ------------------------------------------------------------------------------------------ metrics
    @torch.no_grad()
    def metrics(self) -> dict:
        total, count = 0.0, 0
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "a" in state:
                    total += float(state["a"].sum(dtype=torch.float64))
                    count += state["a"].numel()
                elif p.requires_grad:
                    total += p.numel()  # not stepped yet: a = 1
                    count += p.numel()
        return {"rdbd_mean_multiplier": total / count if count else 1.0}


register(OptimizerSpec.of_class(
    "rdbd", RDBD,
    "Song & Yang 2023, arXiv 2310.11291 (this project's reading of the abstract); Jacobs 1988",
    "3 x param (a, gbar, last_raise) + base state (adam: m, v; momentum: buffer)",
    source="here",
    notes="delta-bar-delta multipliers a in [a_min, a_max] with regret (undo last raise on a sign flip) on "
          "base=sgd|momentum|adam (betas, eps: base=adam only; momentum: base=momentum only); p -= lr*a*u; "
          "decoupled weight decay; kappa, phi, a_min, a_max are this project's choices",
    compile="pays",  # step time / fused AdamW, eager -> compiled (CPU): 31.0 -> 1.66
    state_bytes=lambda hp: 12 + {"adam": 8, "momentum": 4, "sgd": 0}[hp["base"]],
    mup=lambda hp: {"adam": "adam", "momentum": "sgd", "sgd": "sgd"}[hp["base"]]))  # the base's rule
