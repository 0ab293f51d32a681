"""Exactly reversible momentum SGD and its hypergradients (Maclaurin, Duvenaud & Adams 2015, "Gradient-based
Hyperparameter Optimization through Reversible Learning", Algorithms 1-2; reference code HIPS/hypergrad).

Training rule, per step t (every tensor flat, one entry per parameter; each parameter belongs to one *unit*,
a layer or a parameter group, and hyperparameters are per unit and per block of `block_len` steps):

    G(x, t) = clip(grad loss(x, batch_t)) + lambda_l x     (clip: torch's global-norm clipping, when set;
    v      <- gamma * v - (1 - gamma) * G(x, t)              lambda_l: L2 weight decay per unit, as torch's SGD)
    x      <- x + alpha * v                                  x_0 = exp(s_l) * x_init

Exactness. x and v are held in fixed point, integers with radix 2^52 (`RADIX`); additions of a rounded float
are undone by subtracting the same rounded float. The decay `v <- gamma * v` loses information, so gamma is the
rational n/d with d = 2^16 and n = floor(gamma * d) + 1 (the reference's rule; n/d is the gamma used
everywhere, also in (1 - gamma)), applied exactly with a per-parameter integer information buffer B:

    B <- B * d + (v mod d);   v <- (v div d) * n + (B mod n);   B <- B div n          (forward)
    B <- B * n + (v mod n);   v <- (v div n) * d + (B mod d);   B <- B div d          (reverse)

B grows by about log2(d / n) = log2(1 / gamma) bits per step. Here B is an int64 per parameter; whenever
it reaches 2^32 its low 32 bits are moved to a stack (`InfoBuffer`: the indices of the parameters that spilled,
int32, and their 32 bits), so the memory the buffer holds is measured, not assumed: `InfoBuffer.nbytes()`.

Reverse pass (Algorithm 2): from x_T, v_T it recomputes x_{t-1}, v_{t-1} and G exactly, step by step, and
accumulates dx (starting at grad f(x_T), f the validation loss), dv and the hypergradients:

    d alpha_t = <dx, v_t>;  x_{t-1} = x_t - alpha v_t;  g = G(x_{t-1}, t);  v_{t-1} = (v_t + (1-gamma) g) / gamma
    dv += alpha dx;  d gamma_t = <dv, v_{t-1} + g>;  dx -= J^T (1-gamma) dv;  d lambda -= d<G, (1-gamma) dv>/d lambda
    dv *= gamma

(J the Jacobian of G in x, the Hessian of the loss without clipping: a vector-Jacobian product by autograd,
through a math-kernel attention since the fused one has no double backward; each inner product sums a unit's
entries). Then d s_l = <dx_l, x0_l>. The G that undoes the momentum step comes from the same computation as
the forward's (no graph), so it is bitwise the same; the vector-Jacobian product is a separate pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

RADIX = 2 ** 52      # fixed-point scale of x and v: |x| must stay below 2^11
DENOM = 2 ** 16      # gamma = n / DENOM
SPILL_BITS = 32      # the buffer moves 32 bits to its stack when an entry reaches 2^32


def to_fixed(x: torch.Tensor) -> torch.Tensor:
    """float64 -> int64 fixed point (truncated toward zero)."""
    return (x.double() * RADIX).to(torch.int64)


def from_fixed(i: torch.Tensor) -> torch.Tensor:
    return i.to(torch.float64) / RADIX


def gamma_numerators(gamma: torch.Tensor) -> torch.Tensor:
    """n with gamma ~ n / DENOM (HIPS/hypergrad's rule n = floor(gamma d) + 1), for 0 < gamma < 1."""
    return (torch.floor(gamma.double() * DENOM) + 1).clamp(1, DENOM).to(torch.int64)


class InfoBuffer:
    """A per-parameter integer store of the information that `v <- gamma v` would lose: push(N, M) / pop(M) on
    the per-entry integer `cur` (mixed radix), with the low 32 bits of entries >= 2^32 moved to a stack after
    each multiplication (`spill`) and back before its inverse (`unspill`)."""

    def __init__(self, numel: int):
        self.cur = torch.zeros(numel, dtype=torch.int64)
        self.stack: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        self.peak_bytes = 0

    def push(self, value: torch.Tensor, modulus) -> None:
        self.cur = self.cur * modulus + value

    def pop(self, modulus) -> torch.Tensor:
        value = torch.remainder(self.cur, modulus)
        self.cur = torch.div(self.cur, modulus, rounding_mode="floor")
        return value

    def spill(self) -> None:
        idx = torch.nonzero(self.cur >= 2 ** SPILL_BITS).flatten()
        if idx.numel() == 0:
            self.stack.append(None)
            return
        low = self.cur[idx] & (2 ** SPILL_BITS - 1)
        self.cur[idx] = self.cur[idx] >> SPILL_BITS
        self.stack.append((idx.to(torch.int32), (low - 2 ** 31).to(torch.int32)))
        self.peak_bytes = max(self.peak_bytes, self.nbytes())

    def unspill(self) -> None:
        rec = self.stack.pop()
        if rec is not None:
            idx, low = rec[0].long(), rec[1].long() + 2 ** 31
            self.cur[idx] = (self.cur[idx] << SPILL_BITS) + low

    def nbytes(self) -> int:
        """Bytes on the stack (grows with the steps); `cur` adds a fixed 8 bytes per parameter."""
        return sum(i.nbytes + v.nbytes for rec in self.stack if rec is not None for i, v in [rec])


def mul_exact(v: torch.Tensor, buf: InfoBuffer, n: torch.Tensor) -> torch.Tensor:
    """v * n / DENOM exactly invertible (information kept in buf)."""
    buf.push(torch.remainder(v, DENOM), DENOM)
    v = torch.div(v, DENOM, rounding_mode="floor") * n + buf.pop(n)
    buf.spill()
    return v


def div_exact(v: torch.Tensor, buf: InfoBuffer, n: torch.Tensor) -> torch.Tensor:
    """The inverse of mul_exact."""
    buf.unspill()
    buf.push(torch.remainder(v, n), n)
    return torch.div(v, n, rounding_mode="floor") * DENOM + buf.pop(DENOM)


# -- the problem and the hyperparameters --------------------------------------------------------------------
@dataclass
class Problem:
    """What reversible training needs: the units (names and sizes, in the order of the flat vector), the unit
    initialization x_init (x_0 = exp(log_init_scale) * x_init per unit), the training loss on step t's batch
    and the validation loss (both of a flat float64 vector)."""
    units: list[str]
    sizes: list[int]
    x_init: torch.Tensor
    loss: Callable[[torch.Tensor, int], torch.Tensor]
    val_loss: Callable[[torch.Tensor], torch.Tensor]
    max_norm: float | None = None  # gradient clipping (torch.nn.utils.clip_grad_norm_) inside the update

    @property
    def numel(self) -> int:
        return int(sum(self.sizes))

    def expand(self, per_unit: torch.Tensor) -> torch.Tensor:
        """Per-unit values -> one per parameter."""
        return torch.repeat_interleave(per_unit, torch.tensor(self.sizes))

    def unit_sums(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([s.sum() for s in torch.split(x, self.sizes)])


@dataclass
class Hypers:
    """The meta-parameters, float64: log lr (alpha) and logit momentum (gamma) per unit and block, log init
    scale and L2 weight decay (lambda >= 0) per unit."""
    log_lr: torch.Tensor          # (units, blocks)
    logit_momentum: torch.Tensor  # (units, blocks)
    log_init_scale: torch.Tensor  # (units,)
    weight_decay: torch.Tensor    # (units,)
    block_len: int

    @classmethod
    def constant(cls, units: int, steps: int, block_len: int, *, lr: float, momentum: float,
                 weight_decay: float = 0.0) -> "Hypers":
        blocks = -(-steps // block_len)
        g = torch.full((units, blocks), float(momentum), dtype=torch.float64)
        return cls(torch.full((units, blocks), float(lr), dtype=torch.float64).log(), torch.log(g / (1 - g)),
                   torch.zeros(units, dtype=torch.float64), torch.full((units,), float(weight_decay),
                                                                      dtype=torch.float64), block_len)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"log_lr": self.log_lr, "logit_momentum": self.logit_momentum,
                "log_init_scale": self.log_init_scale, "weight_decay": self.weight_decay}

    def alpha(self) -> torch.Tensor:
        return self.log_lr.exp()

    def gamma(self) -> torch.Tensor:
        """The momentum actually used: n / DENOM."""
        return gamma_numerators(torch.sigmoid(self.logit_momentum)).double() / DENOM


@dataclass
class Trajectory:
    """The end of a reversible forward pass: x_T and v_T in fixed point, the buffer, and the start x_0."""
    X: torch.Tensor
    V: torch.Tensor
    buf: InfoBuffer
    X0: torch.Tensor
    steps: int
    stats: dict = field(default_factory=dict)

    def x(self) -> torch.Tensor:
        return from_fixed(self.X)


def _per_step(problem: Problem, hp: Hypers, t: int):
    b = t // hp.block_len
    alpha = problem.expand(hp.alpha()[:, b])
    n = problem.expand(gamma_numerators(torch.sigmoid(hp.logit_momentum[:, b])))
    return alpha, n, n.double() / DENOM


def direction(problem: Problem, x: torch.Tensor, t: int, wd: torch.Tensor, graph: bool = False) -> torch.Tensor:
    """G(x, t) = clip(grad loss(x, t)) + lambda * x: the gradient the momentum step uses (clipped to
    problem.max_norm as torch.nn.utils.clip_grad_norm_ does, when set; L2 weight decay added after clipping, as
    torch's SGD does). graph=False: no graph, the same computation forward and backward (bitwise); graph=True:
    differentiable in x and wd (for the vector-Jacobian products of the reverse pass)."""
    if not graph:
        x, wd = x.detach().requires_grad_(True), wd.detach()
    with torch.enable_grad():
        (g,) = torch.autograd.grad(problem.loss(x, t), x, create_graph=graph)
    g = g.double()
    if problem.max_norm:
        g = g * torch.clamp(problem.max_norm / (g.norm() + 1e-6), max=1.0)
    return g + wd * x if graph else (g + wd * x).detach()


def forward(problem: Problem, hp: Hypers, steps: int) -> Trajectory:
    """T steps of exactly reversible momentum SGD from x_0 = exp(s) * x_init, v_0 = 0."""
    with torch.no_grad():
        x0 = problem.expand(hp.log_init_scale.exp()) * problem.x_init
    X0 = to_fixed(x0)
    X, V, buf = X0.clone(), torch.zeros_like(X0), InfoBuffer(problem.numel)
    wd = problem.expand(hp.weight_decay.detach())
    for t in range(steps):
        alpha, n, gamma = _per_step(problem, hp, t)
        g = direction(problem, from_fixed(X), t, wd)
        V = mul_exact(V, buf, n) - to_fixed((1 - gamma) * g)
        X = X + to_fixed(alpha * from_fixed(V))
    return Trajectory(X, V, buf, X0, steps, {"buffer_peak_bytes": buf.peak_bytes})


def hypergradient(problem: Problem, hp: Hypers, traj: Trajectory) -> tuple[dict[str, torch.Tensor], float]:
    """Reverse pass: (d val_loss(x_T) / d each Hypers tensor, val_loss(x_T)); restores traj to x_0 exactly
    (checked bitwise: RuntimeError otherwise)."""
    U, blocks = hp.log_lr.shape
    xT = traj.x().requires_grad_(True)
    with torch.enable_grad():
        f = problem.val_loss(xT)
        (dx,) = torch.autograd.grad(f, xT)
    dx, dv = dx.double(), torch.zeros(problem.numel, dtype=torch.float64)
    d_alpha = torch.zeros(U, blocks, dtype=torch.float64)
    d_gamma = torch.zeros(U, blocks, dtype=torch.float64)
    lam = hp.weight_decay.detach().clone().requires_grad_(True)
    d_lam = torch.zeros(U, dtype=torch.float64)
    X, V, buf = traj.X, traj.V, traj.buf
    for t in reversed(range(traj.steps)):
        b = t // hp.block_len
        alpha, n, gamma = _per_step(problem, hp, t)
        v = from_fixed(V)
        d_alpha[:, b] += problem.unit_sums(dx * v)
        X = X - to_fixed(alpha * v)
        x = from_fixed(X)
        g = direction(problem, x, t, problem.expand(hp.weight_decay.detach()))
        V = div_exact(V + to_fixed((1 - gamma) * g), buf, n)
        dv = dv + alpha * dx
        d_gamma[:, b] += problem.unit_sums(dv * (from_fixed(V) + g))
        w = (1 - gamma) * dv
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):  # fused attention has no double backward
            gg = direction(problem, xg, t, problem.expand(lam), graph=True)
            hv, hl = torch.autograd.grad((gg * w).sum(), (xg, lam))
        dx = dx - hv.double()
        d_lam -= hl.double()
        dv = dv * gamma
    if not (torch.equal(X, traj.X0) and torch.equal(V, torch.zeros_like(V)) and
            torch.equal(buf.cur, torch.zeros_like(buf.cur)) and not buf.stack):
        raise RuntimeError("reverse pass did not end bitwise at x_0, v_0 = 0 (non-deterministic gradient?)")
    traj.X, traj.V = X, V
    x0 = from_fixed(traj.X0)
    sig = torch.sigmoid(hp.logit_momentum)
    grads = {"log_lr": d_alpha * hp.alpha(),
             "logit_momentum": d_gamma * sig * (1 - sig),  # through the sigmoid (n/d's rounding: straight through)
             "log_init_scale": problem.unit_sums(dx * x0),
             "weight_decay": d_lam}
    return grads, float(f.detach())


def reverse_only(problem: Problem, hp: Hypers, traj: Trajectory) -> None:
    """Undo the T steps without hypergradients (the bitwise check of the reversal alone)."""
    X, V, buf = traj.X, traj.V, traj.buf
    wd = problem.expand(hp.weight_decay.detach())
    for t in reversed(range(traj.steps)):
        alpha, n, gamma = _per_step(problem, hp, t)
        X = X - to_fixed(alpha * from_fixed(V))
        g = direction(problem, from_fixed(X), t, wd)
        V = div_exact(V + to_fixed((1 - gamma) * g), buf, n)
    traj.X, traj.V = X, V


def val_loss_of(problem: Problem, hp: Hypers, steps: int) -> float:
    """The validation loss after training with hp (a forward pass only)."""
    traj = forward(problem, hp, steps)
    with torch.no_grad():
        return float(problem.val_loss(traj.x()))
