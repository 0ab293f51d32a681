"""SGD with an Armijo backtracking line search on each mini-batch ("Painless SGD", Vaswani et al. 2019, NeurIPS;
reference code IssamLaradji/sls, class ``Sls`` with ``line_search_fn="armijo"``, ``reset_option=1``).

Contract with the training step (its spec declares ``Needs(closure=True)``; ``pretrain.step``): when
``step(closure)`` is called, ``p.grad`` already holds the mini-batch gradient at the current parameters, and
``closure()`` returns the loss (a float or a 0-dim tensor) on the *same* mini-batch at the parameters' *current*
values, without building a graph (deterministic: the same dropout masks / data every call), averaged across
processes.

One step, with g the gradient of the objective F (below) and d = lr_mult * g per parameter group:

    eta   = min(eta_prev * gamma ** (1 / n_batches_per_epoch), eta_max)     # sls reset_option=1, every step,
                                                                            # the first one too (eta_prev = lr)
    F0    = F(p)                                                            # one closure() call
    if ||g|| >= 1e-8:                                                       # as sls: else no update at all
        repeat at most max_backtracks times:
            F1 = F(p - eta * d)                                             # one closure() call per trial
            if F1 <= F0 - c * eta * <g, d>:  accept: p <- p - eta * d; stop
            eta *= beta_b                                                   # one backtrack
        if nothing was accepted: p <- p - 1e-6 * d                          # sls's fallback step; the stored
                                                                            # eta is the last reduced one
    eta_prev = eta

With every lr_mult = 1 (no muP), d = g and <g, d> = ||g||^2: exactly sls's Armijo condition. lr_mult (a muP
multiplier) acts as a diagonal preconditioner of the search direction. The step size is the line search's
own: the group's scheduled ``group["lr"]`` is *not* used (run it with schedule=constant).

Weight decay is coupled (L2): F(p) = loss(p) + sum over groups of weight_decay / 2 * ||p||^2 and
g = grad + weight_decay * p, so the line search sees one consistent objective (decoupled decay would not be
part of the function whose decrease is tested). Default 0.

Defaults are sls's: lr (initial step size) 1, c 0.1, beta_b 0.9, gamma 2, n_batches_per_epoch 500, eta_max 10,
at most 100 backtracks. State: the step size, the number of backtracks of the last step and a step counter
(Python numbers in the state of the first parameter, as torch.optim.LBFGS keeps its global state); the
search needs one temporary copy of the parameters (and of the direction when weight decay or lr_mult != 1).
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError, check_number, check_range
from .registry import Needs, OptimizerSpec, register

_MIN_GRAD_NORM = 1e-8  # sls: no line search (and no step) below this gradient norm
_FALLBACK_STEP = 1e-6  # sls: the step taken when no trial step size satisfied the condition


def _sum_of_squares(tensors) -> float:
    norms = torch._foreach_norm(tensors)
    return float(torch.stack([n.double() for n in norms]).pow(2).sum())


def _validate(lr, c, beta_b, gamma, n_batches_per_epoch, eta_max, max_backtracks, weight_decay) -> None:
    check_number("optim.lr", lr, lo=0.0, lo_open=True)
    check_number("optim.c", c, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    check_number("optim.beta_b", beta_b, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    check_number("optim.gamma", gamma, lo=1.0)
    for name, value in (("n_batches_per_epoch", n_batches_per_epoch), ("max_backtracks", max_backtracks)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"optim.{name}", f"must be an integer >= 1, got {value!r}")
        check_range(f"optim.{name}", value, lo=1)
    check_number("optim.eta_max", eta_max, lo=0.0, lo_open=True)
    check_number("optim.weight_decay", weight_decay, lo=0.0)


class SGDArmijo(torch.optim.Optimizer):
    """SGD whose step size comes from a backtracking Armijo line search on the mini-batch (see the module doc)."""

    def __init__(self, params, lr: float = 1.0, c: float = 0.1, beta_b: float = 0.9, gamma: float = 2.0,
                 n_batches_per_epoch: int = 500, eta_max: float = 10.0, max_backtracks: int = 100,
                 weight_decay: float = 0.0):
        _validate(lr, c, beta_b, gamma, n_batches_per_epoch, eta_max, max_backtracks, weight_decay)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        for group in self.param_groups:
            check_number("optim.weight_decay", group["weight_decay"], lo=0.0)
        self.init_step_size = float(lr)
        self.c, self.beta_b, self.gamma = float(c), float(beta_b), float(gamma)
        self.n_batches_per_epoch, self.eta_max = int(n_batches_per_epoch), float(eta_max)
        self.max_backtracks = int(max_backtracks)

    def _global_state(self) -> dict:
        state = self.state[self.param_groups[0]["params"][0]]
        if "step_size" not in state:
            state.update(step_size=self.init_step_size, backtracks=0, step=0)
        return state

    def _objective(self, closure, groups) -> float:
        """F(p): the closure's mini-batch loss plus the L2 term."""
        value = float(closure())
        for group, params, _ in groups:
            wd = group["weight_decay"]
            if wd != 0:
                value += 0.5 * wd * _sum_of_squares(params)
        return value

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise RuntimeError("sgd_armijo needs step(closure): closure() must return the loss on the same "
                               "mini-batch at the current parameters")
        gstate = self._global_state()
        eta = min(gstate["step_size"] * self.gamma ** (1.0 / self.n_batches_per_epoch), self.eta_max)

        # gradient g of F, direction d = lr_mult * g, per group
        groups = []
        g_dot_d, g_sq = 0.0, 0.0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            wd, mult = group["weight_decay"], float(group.get("lr_mult", 1.0))
            grads = [p.grad.add(p, alpha=wd) if wd != 0 else p.grad for p in params]
            directions = [g.mul(mult) for g in grads] if mult != 1.0 else grads
            sq = _sum_of_squares(grads)
            g_sq += sq
            g_dot_d += mult * sq  # <g, d> with d = lr_mult * g
            groups.append((group, params, directions))
        grad_norm = math.sqrt(g_sq)

        loss = self._objective(closure, groups)
        backtracks = 0
        if grad_norm >= _MIN_GRAD_NORM:
            originals = [[p.detach().clone() for p in params] for _, params, _ in groups]
            found = False
            for _ in range(self.max_backtracks):
                self._move(groups, originals, eta)
                loss_next = self._objective(closure, groups)
                if loss_next <= loss - self.c * eta * g_dot_d:
                    found = True
                    break
                eta *= self.beta_b
                backtracks += 1
            if not found:
                self._move(groups, originals, _FALLBACK_STEP)
        gstate["step_size"] = eta
        gstate["backtracks"] = backtracks
        gstate["step"] += 1
        return loss

    @staticmethod
    def _move(groups, originals, eta: float) -> None:
        """p <- p_original - eta * d for every parameter."""
        for (_, params, directions), p0s in zip(groups, originals):
            torch._foreach_copy_(params, p0s)
            torch._foreach_add_(params, directions, alpha=-eta)

    def metrics(self) -> dict:
        gstate = self.state.get(self.param_groups[0]["params"][0], {})
        return {"armijo_step_size": float(gstate.get("step_size", self.init_step_size)),
                "armijo_backtracks": int(gstate.get("backtracks", 0))}


register(OptimizerSpec.of_class(
    "sgd_armijo", SGDArmijo,
    "Vaswani et al. 2019 (Painless SGD: stochastic line search); IssamLaradji/sls",
    "0 (global step size); 1 x param temporary during the search",
    source="here",
    notes="needs step(closure); lr is the initial step size; Armijo backtracking on the mini-batch, step reset "
          "eta*gamma**(1/n_batches_per_epoch) capped at eta_max; ignores the lr schedule (use schedule=constant); "
          "L2 weight decay",
    needs=Needs(closure=True),
    compile="needs step(closure): the closure's forward passes cannot be traced in the step (runs eager)",
    state_bytes=0, temp_bytes=4))
