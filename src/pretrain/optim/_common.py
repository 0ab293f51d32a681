"""Helpers shared by the optimizers written in this package (adopt, lion, sophia, lamb, lars; the betas check
also by hypergradient and rdbd). Registers no optimizer (the package's registration loop skips `_*` modules).

- Precision: optimizer state is fp32 (fp64 for fp64 parameters, `state_dtype`); bf16/fp16 parameters
  (`LOW_PRECISION`) are updated through an fp32 working copy that `write_back` copies into them.
- Validation: `check_betas` (numbers: `errors.check_number`) raises `ConfigError` naming the field.
- `FP32StateOptimizer`: the base class (validated groups, state creation, fp32 state through
  `load_state_dict`, the step loop); `buckets` groups tensors for one foreach call.
- `step_scalars`: per-tensor scalars that depend on the step (bias corrections, ADOPT's clip value), tensors
  under torch.compile (see fast/compiled.py); `materialize`: a small tensor that Inductor computes once instead
  of inlining its math into every vector loop; `bias_corrected_direction` / `corrected_direction` /
  `adam_direction_foreach`: the multi-tensor Adam direction (lamb, rdbd, hypergradient).
- `dots` (hypergradient's h) and `sq_norms` (lars's and lamb's squared norms): plain torch ops; `sq_norms` has a
  fused CPU kernel in the opt-in speed layer (`fast/`).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError, check_number

LOW_PRECISION = (torch.float16, torch.bfloat16)


def state_dtype(p: torch.Tensor) -> torch.dtype:
    """Optimizer state is fp32 (fp64 for fp64 parameters)."""
    return torch.promote_types(p.dtype, torch.float32)


def check_betas(betas) -> None:
    """`betas` must be a list or tuple of two numbers in [0, 1) (each through `check_number`: a bool, a string or
    NaN is refused as "must be a number")."""
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise ConfigError("optim.betas", f"must be a pair [beta1, beta2], got {betas!r}")
    for i, b in enumerate(betas):
        check_number(f"optim.betas[{i}]", b, lo=0.0, hi=1.0, hi_open=True)


def buckets(params: list, key) -> dict:
    """Split tensors into lists that one foreach call can take: key(p) -> the tensors with that key (the key holds
    the device and state dtype, and whatever else the caller's update must share: the step, the treatment)."""
    out: dict = {}
    for p in params:
        out.setdefault(key(p), []).append(p)
    return out


def step_scalars(steps: list, fn) -> list:
    """`fn(t)` for each tensor's step t (a 0-dim tensor or a Python int): the per-tensor scalars of a foreach call.

    Eagerly t is a Python number, so the scalars are exactly the reference path's. Under torch.compile t is a 0-dim
    fp64 tensor (fn must work on one: `1 - beta ** t`, `t ** e`): a Python number read from a tensor (`.item()`)
    breaks the graph and is baked into it (a new graph every step), and a list of symbolic numbers (what Python-int
    steps become) is not fused by Inductor (it falls back to the unfused aten::_foreach_* kernel).
    """
    if torch.compiler.is_compiling():
        out = [fn(t.double() if torch.is_tensor(t) else torch.scalar_tensor(t, dtype=torch.float64)) for t in steps]
        # One buffer, computed once (`materialize`), that each tensor's update loop loads. Left as separate 0-dim
        # values, or as a plain stack, the scalar math (a pow) is inlined into the update loop and recomputed at
        # every vector iteration (the loop reloads the step: it cannot prove that the outputs do not alias it),
        # which made compiled ADOPT 1.45x, not 1.0x, torch's fused AdamW.
        return list(materialize(torch.stack(out)).unbind(0)) if out else out
    return [fn(t.item() if torch.is_tensor(t) else t) for t in steps]


@torch.library.custom_op("pretrain::materialize", mutates_args=())
def materialize(x: torch.Tensor) -> torch.Tensor:
    """A copy of x that torch.compile cannot see through: Inductor computes x once into a buffer, and the loops that
    use it load the values. Without it, Inductor inlines the scalar math that makes a small tensor (a pow, a sqrt, a
    division: bias corrections, trust ratios) into every vectorized loop that reads it, and recomputes it at every
    16-element iteration (seen in the generated C++). For small tensors (per-tensor scalars) only."""
    return x.clone()


@materialize.register_fake
def _(x):
    return torch.empty_like(x)


def closure_loss(closure):
    """The start of a step: the closure's loss, evaluated with grad enabled (None without a closure)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def params_with_grads(group: dict, name: str) -> list:
    """A param group's parameters that have a gradient; a sparse one raises "`name` does not support sparse
    gradients"."""
    params = [p for p in group["params"] if p.grad is not None]
    for p in params:
        if p.grad.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients")
    return params


def write_back(params: list, work: list) -> None:
    """Copy each fp32 working copy into its low-precision parameter (a parameter updated in place is skipped)."""
    for p, w in zip(params, work):
        if w is not p:
            p.copy_(w)


class FP32StateOptimizer(torch.optim.Optimizer):
    """Base of ADOPT, Lion, Sophia, LAMB and LARS: the parts of those optimizers that are the same.

    - `__init__` validates the defaults with `check_group`, then every param group, and stores `foreach`
      (`_step_foreach` when true, `_step_reference` when false).
    - `_init_state(p)` creates a parameter's state on first use: `step` (0-dim fp32 CPU tensor) and one zero
      tensor in `state_dtype(p)` per name in the class's `STATE_KEYS`, in that order.
    - `load_state_dict` keeps that state fp32 for bf16/fp16 parameters (torch casts it to the parameter dtype).
    - `_run_step(closure, name)` is the usual step loop. Each subclass still writes its own `step` (calling
      `_run_step` or not): torch.compile keeps one cache per `step` function (see compiled.py).
    """

    STATE_KEYS: tuple[str, ...] = ()
    # True where `_step_reference` reads the step as a Python number (`.item()`): a compiled step (compiled.py)
    # then runs `_step_foreach`, which keeps it a tensor, even with foreach=False.
    COMPILE_FOREACH = False

    def __init__(self, params, defaults: dict, *, foreach: bool, check_group) -> None:
        check_group(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            check_group(group)
        self.foreach = bool(foreach)

    def _init_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            for key in self.STATE_KEYS:
                state[key] = torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.preserve_format)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        ids = {i: p for saved, group in zip(state_dict["param_groups"], self.param_groups)
               for i, p in zip(saved["params"], group["params"])}
        for i, saved in state_dict["state"].items():
            p = ids.get(i)
            if p is None or p.dtype not in LOW_PRECISION:
                continue
            for key, value in saved.items():
                if key != "step" and torch.is_tensor(value) and value.is_floating_point():
                    self.state[p][key] = value.to(device=p.device, dtype=state_dtype(p), copy=True)

    def _run_step(self, closure, name: str, *, count_first: bool = False):
        """The body of `step(closure)` (called from the subclass's `step`, under its `torch.no_grad()`).

        Evaluates the closure (with grad enabled), then for every param group: the parameters with a gradient
        (a sparse one raises "`name` does not support sparse gradients"), `_init_state(p)` for each, and
        `_step_foreach(group, params)` or `_step_reference(group, params)` as `foreach` says; in a compiled step
        `_step_compiling(group, params, fresh)` where the class has one (ADOPT; fresh[i]: this call created
        params[i]'s state), else `_step_foreach` where COMPILE_FOREACH. Each parameter's `step` counter goes up by
        one after the update (the update sees the number of calls before this one, ADOPT's t), or with
        count_first=True before it, as its state is initialized (the update sees the number of calls including
        this one, LAMB's t). Returns the closure's loss (None without a closure).
        """
        loss = closure_loss(closure)
        for group in self.param_groups:
            params = params_with_grads(group, name)
            if not params:
                continue
            # Whether each parameter's state is created by this call (its step is 0): a Python fact, fixed in a
            # compiled step's graph (dynamo guards on the state dict, so the first call has its own graph), which
            # `_step_compiling` may use to leave the first-call branch out of the later calls' update loops.
            fresh = [len(self.state[p]) == 0 for p in params]
            for p in params:
                state = self._init_state(p)
                if count_first:
                    state["step"] += 1
            if torch.compiler.is_compiling() and hasattr(self, "_step_compiling"):
                self._step_compiling(group, params, fresh)
            elif self.foreach or (self.COMPILE_FOREACH and torch.compiler.is_compiling()):
                self._step_foreach(group, params)
            else:
                self._step_reference(group, params)
            if not count_first:
                for p in params:
                    self.state[p]["step"] += 1
        return loss


def bias_corrected_direction(ms: list, vs: list, steps: list, betas, eps) -> list:
    """Multi-tensor Adam direction `(m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)`, with the bias
    corrections of each tensor's step t (the reference paths' expression, op for op)."""
    beta1, beta2 = betas
    return corrected_direction(ms, vs, step_scalars(steps, lambda t: 1 - beta1 ** t),
                               step_scalars(steps, lambda t: 1 - beta2 ** t), eps)


def corrected_direction(ms: list, vs: list, c1s: list, c2s: list, eps) -> list:
    """Multi-tensor `(m / c1) / (sqrt(v / c2) + eps)` with each tensor's corrections c1, c2."""
    denom = torch._foreach_div(vs, c2s)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    out = torch._foreach_div(ms, c1s)
    torch._foreach_div_(out, denom)
    return out


def adam_direction_foreach(states, grads, betas, eps):
    """Multi-tensor Adam moments update and bias-corrected direction m_hat / (sqrt(v_hat) + eps), for states
    holding exp_avg, exp_avg_sq and an already incremented step (RDBD's adam base)."""
    beta1, beta2 = betas
    ms = [s["exp_avg"] for s in states]
    vs = [s["exp_avg_sq"] for s in states]
    torch._foreach_mul_(ms, beta1)
    torch._foreach_add_(ms, grads, alpha=1 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
    return bias_corrected_direction(ms, vs, [s["step"] for s in states], betas, eps)


def dots(gs: list, qs: list, device=None) -> torch.Tensor:
    """sum_k dot(gs[k], qs[k]) as a 0-dim float64 (fp16/bf16 dot products in fp32; 0 on `device` for no pairs):
    the hypergradient optimizers' h."""
    def flat(t):
        return t.reshape(-1).float() if t.dtype in LOW_PRECISION else t.reshape(-1)

    per_pair = [torch.dot(flat(g), flat(q)).double() for g, q in zip(gs, qs)]
    return torch.stack(per_pair).sum() if per_pair else torch.zeros((), dtype=torch.float64, device=device)


def sq_norms(xs: list, ys: list) -> torch.Tensor:
    """(len(xs), 2) float64: row k = (sum(xs[k]^2), sum(ys[k]^2)) (LARS's ||w||^2, ||g||^2; LAMB's ||w||^2,
    ||r||^2). Fused into one pass over both by `fast.kernel("sq_norms", sq_norms)` where enabled."""
    x2 = torch.stack(torch._foreach_norm(xs)).double() ** 2
    y2 = torch.stack(torch._foreach_norm(ys)).double() ** 2
    return torch.stack([x2, y2], dim=1)
