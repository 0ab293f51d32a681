"""The gradient noise scale, online: McCandlish, Kaplan, Amodei et al. (2018), "An Empirical Model of Large-Batch
Training", Appendix A.1.

The simple noise scale B_simple = tr(Sigma) / |G|^2 (Sigma: the per-example gradient covariance, G: the true
gradient) estimates the critical batch size. From gradients measured at two batch sizes B_small < B_big,
E|G_B|^2 = |G|^2 + tr(Sigma) / B gives the unbiased estimates

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

each averaged by an exponential moving average (separately, as the appendix does: the ratio of two noisy
estimates is biased), bias-corrected, and B_noise = EMA(tr Sigma) / EMA(|G|^2). Batch sizes are counted in
tokens (the logged `b_noise` is in tokens; divide by the sequence length for sequences).

The two sizes come for free in the loop's step (`step.LoopEngine`): one process: the first micro-batch's
gradient (B_small = micro batch) vs the accumulated gradient (B_big = the step's batch); several processes (DDP):
each rank's gradient before the all-reduce, read in a DDP communication hook, averaged over ranks (B_small =
batch / processes) vs the all-reduced gradient. The estimates stay on the device (no host sync); `value()` reads
them. Not measured: DeepSpeed and FSDP (their engines own the gradient reduction), and one process with one
micro-batch (a single batch size).
"""
from __future__ import annotations

import torch


def grad_sq(params) -> torch.Tensor:
    """|g|^2 over the parameters' gradients, as a float32 tensor on their device."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.stack([g.float().pow(2).sum() for g in grads]).sum()


class NoiseScale:
    def __init__(self, beta: float = 0.99):
        self.beta = beta
        self.g2 = self.trace = None  # EMAs (tensors)
        self.n = 0  # observations

    def observe(self, small_sq: torch.Tensor, b_small: float, big_sq: torch.Tensor, b_big: float) -> None:
        """One measurement: |G_small|^2 at batch b_small and |G_big|^2 at b_big (tokens)."""
        small_sq, big_sq = small_sq.double(), big_sq.double()  # float64: exact in a checkpoint's JSON
        g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
        trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
        if self.n == 0:
            self.g2, self.trace = (1 - self.beta) * g2, (1 - self.beta) * trace
        else:
            self.g2 = self.beta * self.g2 + (1 - self.beta) * g2
            self.trace = self.beta * self.trace + (1 - self.beta) * trace
        self.n += 1

    def value(self) -> float:
        """B_noise in tokens (bias-corrected EMAs; NaN before the first measurement; inf when the |G|^2 estimate is
        not positive yet: the noise swamps the signal at these batch sizes)."""
        if self.n == 0:
            return float("nan")
        g2, trace = float(self.g2), float(self.trace)  # the same bias correction cancels in the ratio
        return trace / g2 if g2 > 0 else float("inf")

    def state_dict(self) -> dict:
        f = (lambda t: None if t is None else float(t))
        return {"g2": f(self.g2), "trace": f(self.trace), "n": self.n, "beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.n = int(state["n"])
        self.g2 = None if state["g2"] is None else torch.tensor(state["g2"], dtype=torch.float64)
        self.trace = None if state["trace"] is None else torch.tensor(state["trace"], dtype=torch.float64)


class RankGradSq:
    """A DDP communication hook that adds |local bucket|^2 (this rank's gradient before the all-reduce) into
    `self.sq`, then all-reduces the bucket as DDP's default hook does."""

    def __init__(self, ddp_model):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.sq = None
        self._allreduce = allreduce_hook
        ddp_model.register_comm_hook(None, self._hook)

    def _hook(self, state, bucket):
        part = bucket.buffer().float().pow(2).sum()
        self.sq = part if self.sq is None else self.sq + part
        return self._allreduce(None, bucket)

    def take(self):
        sq, self.sq = self.sq, None
        return sq
