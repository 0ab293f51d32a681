"""Sophia-G (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training", arXiv 2305.14342), following the official code (Liuhong99/Sophia, `SophiaG`).

Every step, per parameter tensor p with gradient g, momentum m (`exp_avg`) and diagonal Hessian estimate
h (`hessian`):

    p <- p * (1 - lr * wd)                                       decoupled weight decay
    m <- b1 * m + (1 - b1) * g
    p <- p - lr * sign(m) * min(|m| / (rho * bs * h + 1e-15), 1)  per-coordinate clipped Newton-like step

Every k steps the training loop computes the Gauss-Newton-Bartlett (GNB) estimate and calls
`update_hessian()`: forward the same batch, sample labels from the model's own softmax
(`gnb_sampled_loss(logits)`: mean cross-entropy against the sampled labels), backward, then

    h <- b2 * h + (1 - b2) * g_hat * g_hat                      (g_hat = p.grad of the sampled loss)

As in the official code, h stores the EMA of the squared gradient of the *mean* sampled loss, and the batch
size `bs` (tokens per optimizer step) enters the update's denominator: bs * g_hat^2 is the GNB estimate of the
diagonal Gauss-Newton matrix. h is 0 before the first estimate, so the first steps are sign(m) steps.
The official loop calls `update_hessian()` after the optimizer step of every step with step % k == k - 1.

Defaults are the official `SophiaG` class's: lr=1e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1, k=10
(the paper's GPT-2 small run: lr 6e-4, rho 0.05, wd 0.2). `bs=None` means the training loop fills
`group["bs"]` with the tokens per optimizer step (or passes `step(bs=...)`); stepping without it raises.

`metrics()` returns {"sophia_unclipped_frac": ...}: the fraction of coordinates whose ratio
|m| / (rho * bs * h + 1e-15) was below 1 (not clipped) in the last step; 0.1-0.5 is healthy.

State per parameter: `step` (0-dim fp32 CPU tensor), `exp_avg`, `hessian` (fp32; fp64 for fp64 parameters).
`foreach=True` (default) runs the multi-tensor path, `foreach=False` the per-tensor reference path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError, check_number
from ._common import FP32StateOptimizer, LOW_PRECISION, buckets, check_betas, state_dtype, write_back
from .registry import Needs, OptimizerSpec, register

_DENOM_EPS = 1e-15  # the official code's constant in rho * bs * h + 1e-15


def _check_bs(bs) -> None:
    if bs is not None:
        check_number("optim.bs", bs, lo=0.0, lo_open=True)


def _check_group(group: dict) -> None:
    check_number("optim.lr", group["lr"], lo=0.0)
    check_number("optim.rho", group["rho"], lo=0.0)
    check_number("optim.weight_decay", group["weight_decay"], lo=0.0)
    check_betas(group["betas"])
    _check_bs(group["bs"])


def gnb_sampled_loss(logits: torch.Tensor, *, mask: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The Gauss-Newton-Bartlett loss: mean cross-entropy of `logits` against labels sampled from them.

    `logits` is (..., vocab); labels are drawn from softmax(logits) without gradient through the sampling.
    `mask` (logits.shape[:-1], bool) keeps only the given positions (e.g. not padding). Backward of the
    returned loss fills p.grad with g_hat for `Sophia.update_hessian()`.
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()
    if mask is not None:
        flat = flat[mask.reshape(-1)]
    with torch.no_grad():
        probs = torch.softmax(flat.detach(), dim=-1)
        labels = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return F.cross_entropy(flat, labels)


class Sophia(FP32StateOptimizer):
    """Sophia-G: momentum preconditioned by a periodic GNB diagonal Hessian estimate, clipped per coordinate."""

    STATE_KEYS = ("exp_avg", "hessian")
    hessian_update_interval = 10  # class default; instances carry their own `k`

    def __init__(self, params, lr: float = 1e-4, betas=(0.965, 0.99), rho: float = 0.04,
                 weight_decay: float = 0.1, k: int = 10, bs: float | None = None, *, foreach: bool = True):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, rho=rho,
                        weight_decay=weight_decay, bs=bs)
        _check_group(defaults)  # a bad default is reported before a bad k (the base checks both again)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError("optim.k", f"the Hessian update interval must be an integer >= 1, got {k!r}")
        super().__init__(params, defaults, foreach=foreach, check_group=_check_group)
        self.hessian_update_interval = k
        self._unclipped = None  # tensor: unclipped coordinates in the last step
        self._numel = 0

    def metrics(self) -> dict:
        """{"sophia_unclipped_frac": fraction of coordinates not clipped in the last step} (empty before one)."""
        if self._unclipped is None or self._numel == 0:
            return {}
        return {"sophia_unclipped_frac": float(self._unclipped) / self._numel}

    # -- Hessian estimate -------------------------------------------------------------------------------------
    @torch.no_grad()
    def update_hessian(self) -> None:
        """h <- b2*h + (1-b2)*g_hat^2 from the current p.grad (the gradient of `gnb_sampled_loss`)."""
        for group in self.param_groups:
            beta2 = group["betas"][1]
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                self._init_state(p)
            if self.foreach:
                for ps in buckets(params, lambda p: (p.device, state_dtype(p))).values():
                    hs = [self.state[p]["hessian"] for p in ps]
                    gs = [p.grad.to(h.dtype) for p, h in zip(ps, hs)]
                    torch._foreach_mul_(hs, beta2)
                    torch._foreach_addcmul_(hs, gs, gs, value=1 - beta2)
            else:
                for p in params:
                    h = self.state[p]["hessian"]
                    g_hat = p.grad.to(h.dtype)
                    h.mul_(beta2).addcmul_(g_hat, g_hat, value=1 - beta2)

    # -- step -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None, bs: float | None = None):
        """One Sophia step; `bs` (tokens in this step) overrides the groups' `bs` when given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        _check_bs(bs)
        self._unclipped, self._numel = None, 0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            group_bs = bs if bs is not None else group["bs"]
            if group_bs is None:
                raise ConfigError("optim.bs", "Sophia needs bs = tokens per optimizer step (it scales the Hessian "
                                  "in the update); set optim.bs, let the training loop fill group['bs'], or call "
                                  "step(bs=...)")
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("Sophia does not support sparse gradients")
                self._init_state(p)
            if self.foreach:
                unclipped = self._step_foreach(group, params, float(group_bs))
            else:
                unclipped = self._step_reference(group, params, float(group_bs))
            self._unclipped = unclipped if self._unclipped is None else self._unclipped + unclipped
            self._numel += sum(p.numel() for p in params)
            for p in params:
                self.state[p]["step"] += 1
        return loss

    def _step_reference(self, group: dict, params: list, bs: float) -> torch.Tensor:
        lr, rho, wd = group["lr"], group["rho"], group["weight_decay"]
        beta1 = group["betas"][0]
        unclipped = 0
        for p in params:
            state = self.state[p]
            m, h = state["exp_avg"], state["hessian"]
            g = p.grad.to(m.dtype)
            w = p.float() if p.dtype in LOW_PRECISION else p  # fp32 working copy of a low-precision parameter
            w.mul_(1 - lr * wd)
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            ratio = m.abs() / (rho * bs * h + _DENOM_EPS)
            unclipped = unclipped + (ratio < 1).sum()
            w.addcmul_(m.sign(), ratio.clamp_(max=1.0), value=-lr)
            if w is not p:
                p.copy_(w)
        return unclipped

    def _step_foreach(self, group: dict, params: list, bs: float) -> torch.Tensor:
        lr, rho, wd = group["lr"], group["rho"], group["weight_decay"]
        beta1 = group["betas"][0]
        unclipped = 0
        for ps in buckets(params, lambda p: (p.device, state_dtype(p))).values():
            ms = [self.state[p]["exp_avg"] for p in ps]
            hs = [self.state[p]["hessian"] for p in ps]
            gs = [p.grad.to(m.dtype) for p, m in zip(ps, ms)]
            ws = [p.float() if p.dtype in LOW_PRECISION else p for p in ps]
            if wd != 0:
                torch._foreach_mul_(ws, 1 - lr * wd)
            torch._foreach_mul_(ms, beta1)
            torch._foreach_add_(ms, gs, alpha=1 - beta1)
            denom = torch._foreach_mul(hs, rho * bs)
            torch._foreach_add_(denom, _DENOM_EPS)
            ratios = torch._foreach_div(torch._foreach_abs(ms), denom)
            unclipped = unclipped + sum((r < 1).sum() for r in ratios)
            torch._foreach_clamp_max_(ratios, 1.0)
            torch._foreach_addcmul_(ws, torch._foreach_sign(ms), ratios, value=-lr)
            write_back(ps, ws)
        return unclipped



register(OptimizerSpec.of_class(
    "sophia", Sophia,
    "Liu et al. 2023 (arXiv 2305.14342); official SophiaG", "2 fp32 (exp_avg, hessian)", source="here",
    notes="Sophia-G: every k steps the loop backpropagates gnb_sampled_loss(logits) (the Gauss-Newton-Bartlett "
          "Hessian estimate) and calls update_hessian(); bs = tokens per optimizer step (filled by the loop when "
          "null); decoupled weight decay; GPT-2 small in the paper: lr 6e-4, rho 0.05, weight_decay 0.2",
    needs=Needs(hessian_loss=gnb_sampled_loss, tokens_per_step=("bs",)),
    compile="pays",  # step time / fused AdamW, eager -> compiled (CPU): 9.26 -> 0.96
    state_bytes=8, mup="adam"))
