"""vSGD: "No More Pesky Learning Rates" (Schaul, Zhang & LeCun 2013, ICML; arXiv 1206.1106), the per-parameter
("vSGD-l") variant, with curvature by finite differences as in Schaul & LeCun 2013 ("Adaptive learning rates and
parallelization for stochastic, sparse, non-smooth gradients", ICLR; arXiv 1301.3764; its authors' Lua code
"vsgdfd" by Sixin Zhang and Tom Schaul) instead of bbprop, including that paper's two robustness measures: the
curvature-variance rate and the outlier rule.

Every coordinate i keeps running averages with an adaptive memory tau_i: gbar_i (gradient), vbar_i (squared
gradient), hbar_i (curvature), vhbar_i (squared curvature). One step, with g the mini-batch gradient (each
mini-batch counts as one sample, n = 1 in the 2013 paper's mini-batch formulas):

    gradients  g  = gradient at p on the mini-batch                   (closure(backward=True) at p)
               g2 = gradient at p + delta on the same mini-batch      (closure(backward=True) at p + delta)
               delta = gbar (g itself during the slow start, when there is no gbar yet)
    curvature  h_i = |g2_i - g_i| / (|delta_i| + eps)
    outliers   if |g_i - gbar_i| > 2 sqrt(vbar_i - gbar_i^2) or |h_i - hbar_i| > 2 sqrt(vhbar_i - hbar_i^2):
                   tau_i += 1                                          (with the averages before this sample)
    averages   w_i = 1 / tau_i
               gbar_i = (1 - w_i) gbar_i + w_i g_i          vbar_i  = (1 - w_i) vbar_i  + w_i g_i^2
               hbar_i = (1 - w_i) hbar_i + w_i h_i          vhbar_i = (1 - w_i) vhbar_i + w_i h_i^2
    rate       eta_i = gbar_i^2 / (vbar_i + eps) * hbar_i / (vhbar_i + eps)
    memory     tau_i = (1 - gbar_i^2 / (vbar_i + eps)) * tau_i + 1
    step       p_i -= lr * eta_i * gl_i      (gl = the gradient the loop handed over in p.grad, see clipping)

Why the robustness measures (measured on the tiny GPT of tests/helpers.py, 30 steps, lr=1, schedule=constant):
vSGD-l's memory rule has a fixed point at tau = 1: there gbar = g and vbar = g^2, so gbar^2 / vbar = 1 and the
memory update gives tau = (1-1)*1+1 = 1 again. Coordinates whose gradient keeps its sign (many, early in training)
shorten their memory towards it, and then the rate is 1 / h of one single finite-difference sample. h_i is the i-th
component of H delta divided by delta_i, which is often near 0 by cancellation. With only 1 / hbar (the vSGD-l rate)
and no outlier rule, 5400 of the 140k coordinates had tau < 1.1 ten steps after the slow start, the largest rate
grew 0.9 -> 5400, an update of norm 16 followed and the loss jumped 5.9 -> 15 and stayed above 10 (with the loop's
gradient clipping, which then also inflated h, see below; without clipping the loss spiked to 6.5 at step 22 and,
depending on floating-point noise, came back to 5.8 or reached 12.9 at step 30). The outlier rule makes tau = 1
unstable (a new sample against a zero running variance is always an outlier, so tau -> 2 before it is averaged in)
and hbar / vhbar (<= 1 / hbar; 1 / h for a single sample) is the 2013 paper's rate for noisy, non-smooth curvature
estimates. With both, the loss falls 6.25 -> 5.65 in the same run, with or without clipping, and keeps falling (5.0
at step 120). Ablated: hbar / vhbar without the outlier rule falls without clipping but gives a non-finite loss with
it; 1 / hbar with the outlier rule falls (5.5).

Clipping (the loop clips p.grad, e.g. clip.policy=norm, before optimizer.step): g and g2 are both recomputed by
the closure, so the finite difference compares two gradients evaluated the same way (a clipped g against an
unclipped g2 would add (1 - s) |g_i| / |delta_i| to h, s the clip factor, and shrink every rate when clipping
acts), and the statistics gbar, vbar are those of the true gradient. The loop's gradient gl (clipped, or as it
was) is used only as the step direction, so clipping still shortens the step it was meant to shorten. Without
clipping gl = g (the same mini-batch and parameters; up to the nondeterminism of the kernels). The price is one
gradient evaluation more than the paper's two per step: the loop's, then two closure calls.

Slow start (the paper's initialization): the first ``n0`` steps only collect statistics and do not move the
parameters; after them gbar, vbar, hbar, vhbar are the plain means of those n0 samples, then vbar and hbar are
multiplied by ``c`` and vhbar by c^2 (overestimated, so the first rates are conservative: hbar / vhbar is divided
by c, as 1 / hbar was; as in the authors' Lua code) and tau_i = n0. The paper suggests
C = d/10 (d = number of parameters), unusable at LLM scale; the authors' own code (Schaul's py-optim vSGD) uses
C = 2 and 10 initial samples: the defaults here (n0=10, c=2). c >= 1 keeps vbar >= gbar^2 and vhbar >= hbar^2,
hence tau >= 1.

``lr``: vSGD has no learning rate. ``lr`` is a multiplier on the adapted rates (default 1.0 = the paper), so
schedules (warmup, decay) and muP lr multipliers can scale them. ``eps`` (1e-12) only guards the divisions.
Weight decay is coupled (L2): g = grad + weight_decay * p, g2 = grad2 + weight_decay * (p + delta) and
gl = p.grad + weight_decay * p, so the rates and curvature are those of the regularized objective. Default 0.

Contract with the training step (its spec declares ``Needs(closure=True)``; ``pretrain.step``): ``step(closure)``
is called with ``p.grad`` holding the mini-batch gradient at the current parameters (possibly clipped);
``closure(backward=True)`` must zero the gradients, recompute the loss AND the gradients (into p.grad,
unclipped) at the parameters' current values on the *same* mini-batch, deterministically (no fresh dropout masks),
and return the loss. step() calls it twice (at p, then at p + delta), restores the parameters (bit-exact, from a
copy) and p.grad (= the loop's gradient), and updates. step() returns None.

Deviations, named: delta = gbar is the paper's choice of difference step (a forward difference; for strongly
non-linear models it is a large probe: here it is about the SGD step of lr 1, and h is the secant curvature along
it, which is what the rate is used for); the paper's mini-batch correction of the variance term (per-sample
gradients) is not implemented: each mini-batch is one sample. State per parameter: gbar, vbar, hbar, vhbar, tau (5 x
param) and a step count; a step needs temporary copies of the parameters, the loop's gradient and the two closure
gradients (4 x param).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError, check_number, check_range
from .registry import Needs, OptimizerSpec, register


def _validate(group: dict) -> None:
    check_number("optim.lr", group["lr"], lo=0.0)
    n0 = group["n0"]
    if isinstance(n0, bool) or not isinstance(n0, int):
        raise ConfigError("optim.n0", f"must be an integer >= 1 (slow-start samples), got {n0!r}")
    check_range("optim.n0", n0, lo=1)
    check_number("optim.c", group["c"], lo=1.0)
    check_number("optim.eps", group["eps"], lo=0.0, lo_open=True)
    check_number("optim.weight_decay", group["weight_decay"], lo=0.0)


def _rate(state: dict, eps: float) -> torch.Tensor:
    gbar, vbar, hbar, vhbar = state["gbar"], state["vbar"], state["hbar"], state["vhbar"]
    return gbar.square().div_(vbar + eps).mul_(hbar).div_(vhbar + eps)


class VSGD(torch.optim.Optimizer):
    """vSGD-l with finite-difference curvature (see the module docstring)."""

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
        # difference step: the running mean gradient, or this step's gradient during the slow start (gbar is only
        # written after h is computed, so it can serve as delta without a copy)
        deltas = [g if state["step"] < group["n0"] else state["gbar"] for (group, _, state, _, _), g in zip(work, gs)]
        for (_, p, _, _, _), delta in zip(work, deltas):
            p.add_(delta)
        g2s = gradients()  # at p0 + delta, same mini-batch
        for _, p, _, received, p0 in work:  # restore the parameters and the loop's gradient (bit-exact)
            p.copy_(p0)
            if p.grad is None:
                p.grad = received
            else:
                p.grad.copy_(received)

        for (group, p, state, received, p0), g, g2, delta in zip(work, gs, g2s, deltas):
            eps, n0, wd = group["eps"], group["n0"], group["weight_decay"]
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
            direction = received.add(p0, alpha=wd) if wd != 0 else received  # the loop's (clipped) gradient
            p.addcmul_(eta, direction, value=-group["lr"])
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


register(OptimizerSpec.of_class(
    "vsgd", VSGD,
    "Schaul, Zhang & LeCun 2013 (No More Pesky Learning Rates); Schaul & LeCun 2013 (finite-difference curvature)",
    "5 x param (gbar, vbar, hbar, vhbar, tau); 4 x param temporary per step",
    source="here",
    notes="needs step(closure) with closure(backward=True), called twice a step (g at p and at p + gbar, unclipped); "
          "eta_i = gbar^2/vbar * hbar/vhbar, tau adaptive with the outlier rule; first n0 steps only collect "
          "statistics (slow start, vbar/hbar x c, vhbar x c^2); lr is a multiplier (1 = paper); L2 decay",
    needs=Needs(closure=True),
    compile="needs step(closure): the closure's forward/backward cannot be traced in the step (runs eager)",
    state_bytes=20, temp_bytes=16))
