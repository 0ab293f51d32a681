"""vSGD: "No More Pesky Learning Rates" (Schaul, Zhang & LeCun 2013, ICML; arXiv 1206.1106), the per-parameter
("vSGD-l") variant, with the finite-difference curvature of Schaul & LeCun 2013 ("Adaptive learning rates and
parallelization for stochastic, sparse, non-smooth gradients", arXiv 1301.3764) instead of bbprop.

Every coordinate i keeps running averages with an adaptive memory tau_i: gbar_i (gradient), vbar_i (squared
gradient), hbar_i (curvature). One step, with g the mini-batch gradient (each mini-batch counts as one sample):

    curvature  delta = gbar (g itself during the slow start, when there is no gbar yet)
               g2 = gradient at p + delta on the same mini-batch      (one closure(backward=True) call)
               h_i = |g2_i - g_i| / (|delta_i| + eps)
    averages   w_i = 1 / tau_i
               gbar_i = (1 - w_i) gbar_i + w_i g_i
               vbar_i = (1 - w_i) vbar_i + w_i g_i^2
               hbar_i = (1 - w_i) hbar_i + w_i h_i
    rate       eta_i = gbar_i^2 / (hbar_i * vbar_i + eps)
    memory     tau_i = (1 - gbar_i^2 / (vbar_i + eps)) * tau_i + 1
    step       p_i -= lr * eta_i * g_i

Slow start (the paper's initialization): the first ``n0`` steps only collect statistics and do not move the
parameters; after them gbar, vbar, hbar are the plain means of those n0 samples, then vbar and hbar are
multiplied by ``c`` (overestimated, so the first rates are conservative) and tau_i = n0. The paper suggests
C = d/10 (d = number of parameters), unusable at LLM scale; the authors' own code (Schaul's py-optim vSGD) uses
C = 2 and 10 initial samples: the defaults here (n0=10, c=2). c >= 1 keeps vbar >= gbar^2, hence tau >= 1.

``lr``: vSGD has no learning rate. ``lr`` is a multiplier on the adapted rates (default 1.0 = the paper), so
schedules (warmup, decay) and muP lr multipliers can scale them. ``eps`` (1e-12) only guards the divisions.
Weight decay is coupled (L2): g = grad + weight_decay * p and g2 = grad2 + weight_decay * (p + delta), so the
rates and curvature are those of the regularized objective. Default 0.

Contract with the training loop (``requires_closure = True``): ``step(closure)`` is called with ``p.grad``
holding the mini-batch gradient at the current parameters; ``closure(backward=True)`` must zero the gradients,
recompute the loss AND the gradients (into p.grad) at the parameters' current values on the *same* mini-batch,
and return the loss. step() perturbs the parameters to p + delta, calls it once, reads g2, then restores the
parameters (bit-exact, from a copy) and p.grad (= the original gradient), and updates. step() returns None.

Deviations, named: the 2013 finite-difference paper also replaces 1/hbar by hbar / mean(h^2) and adds outlier
detection and a mini-batch correction of the variance term; none of those are implemented (this is vSGD-l's
rate with a finite-difference h). delta = gbar is the paper's choice of difference step; for strongly non-linear
models it is a large probe. State per parameter: gbar, vbar, hbar, tau (4 x param) and a step count; a step
needs temporary copies of the parameters and gradients (2 x param).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError, check_range
from .registry import OptimizerSpec, register


def _validate(group: dict) -> None:
    check_range("optim.lr", float(group["lr"]), lo=0.0)
    n0 = group["n0"]
    if isinstance(n0, bool) or not isinstance(n0, int):
        raise ConfigError("optim.n0", f"must be an integer >= 1 (slow-start samples), got {n0!r}")
    check_range("optim.n0", n0, lo=1)
    check_range("optim.c", float(group["c"]), lo=1.0)
    check_range("optim.eps", float(group["eps"]), lo=0.0, lo_open=True)
    check_range("optim.weight_decay", float(group["weight_decay"]), lo=0.0)


def _rate(state: dict, eps: float) -> torch.Tensor:
    gbar, vbar, hbar, vhbar = state["gbar"], state["vbar"], state["hbar"], state["vhbar"]
    return gbar.square().div_(vbar + eps).mul_(hbar).div_(vhbar + eps)


class VSGD(torch.optim.Optimizer):
    """vSGD-l with finite-difference curvature (see the module docstring)."""

    requires_closure = True

    def __init__(self, params, lr: float = 1.0, n0: int = 10, c: float = 2.0, eps: float = 1e-12,
                 weight_decay: float = 0.0):
        defaults = dict(lr=lr, n0=n0, c=c, eps=eps, weight_decay=weight_decay)
        _validate(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _validate(group)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise RuntimeError("vsgd needs step(closure): closure(backward=True) must recompute the loss and the "
                               "gradients on the same mini-batch at the current parameters")
        work = []  # (group, p, state, received gradient, p0)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("vSGD does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    for key in ("gbar", "vbar", "hbar", "vhbar", "tau"):
                        state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                work.append((group, p, state, p.grad.clone(), p.detach().clone()))
        if not work:
            return None

        def gradients():
            # the gradient of the (L2-regularized) objective at the parameters' current values, as the closure
            # computes it: never clipped or otherwise changed by the loop
            with torch.enable_grad():
                closure(backward=True)
            out = []
            for group, p, _, _, _ in work:
                g = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                if group["weight_decay"] != 0:
                    g.add_(p, alpha=group["weight_decay"])
                out.append(g)
            return out

        gs = gradients()  # at p0
        deltas = [g if state["step"] < group["n0"] else state["gbar"].clone()
                  for (group, _, state, _, _), g in zip(work, gs)]
        for (_, p, _, _, _), delta in zip(work, deltas):
            p.add_(delta)
        g2s = gradients()  # at p0 + delta, same mini-batch
        for _, p, _, received, p0 in work:  # restore the parameters and the loop's gradient (bit-exact)
            p.copy_(p0)
            if p.grad is None:
                p.grad = received
            else:
                p.grad.copy_(received)

        for (group, p, state, received, _), g, g2, delta in zip(work, gs, g2s, deltas):
            eps, n0 = group["eps"], group["n0"]
            h = g2.sub_(g).abs_().div_(delta.abs().add_(eps))
            gbar, vbar, hbar, vhbar, tau = (state[k] for k in ("gbar", "vbar", "hbar", "vhbar", "tau"))
            state["step"] += 1
            if state["step"] <= n0:
                # slow start: plain means of the first n0 samples (running mean = average with memory k)
                w = 1.0 / state["step"]
                gbar.mul_(1 - w).add_(g, alpha=w)
                vbar.mul_(1 - w).addcmul_(g, g, value=w)
                hbar.mul_(1 - w).add_(h, alpha=w)
                vhbar.mul_(1 - w).addcmul_(h, h, value=w)
                if state["step"] == n0:
                    c = group["c"]
                    vbar.mul_(c)
                    hbar.mul_(c)
                    vhbar.mul_(c * c)
                    tau.fill_(n0)
                continue
            # outliers (more than 2 standard deviations from the running mean, gradient or curvature) lengthen
            # the memory by one sample, before the averages take the new sample in
            outlier = (g - gbar).abs_() > (vbar - gbar * gbar).clamp_(min=0).sqrt_().mul_(2)
            outlier |= (h - hbar).abs_() > (vhbar - hbar * hbar).clamp_(min=0).sqrt_().mul_(2)
            tau.add_(outlier.to(tau.dtype))
            w = tau.reciprocal()
            gbar.mul_(1 - w).addcmul_(w, g)
            vbar.mul_(1 - w).addcmul_(w, g * g)
            hbar.mul_(1 - w).addcmul_(w, h)
            vhbar.mul_(1 - w).addcmul_(w, h * h)
            ratio = gbar * gbar / (vbar + eps)
            eta = ratio * hbar / (vhbar + eps)
            tau.mul_(1 - ratio).add_(1)
            p.addcmul_(eta, received, value=-group["lr"])
        return None

    @torch.no_grad()
    def metrics(self) -> dict:
        total, count = 0.0, 0
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state or state["step"] < group["n0"]:
                    continue
                eta = _rate(state, group["eps"])
                total += float(eta.sum(dtype=torch.float64))
                count += eta.numel()
        return {"vsgd_mean_rate": total / count if count else 0.0}


register(OptimizerSpec(
    "vsgd", lambda groups, hp: VSGD(groups, **hp),
    {"lr": 1.0, "n0": 10, "c": 2.0, "eps": 1e-12, "weight_decay": 0.0},
    "Schaul, Zhang & LeCun 2013 (No More Pesky Learning Rates); Schaul & LeCun 2013 (finite-difference curvature)",
    "4 x param (gbar, vbar, hbar, tau); 2 x param temporary per step",
    source="here",
    notes="needs step(closure) with closure(backward=True); eta_i = gbar^2/(hbar*vbar), tau adaptive; first n0 "
          "steps only collect statistics (slow start, vbar/hbar x c); lr is a multiplier (1 = paper); L2 decay"))
