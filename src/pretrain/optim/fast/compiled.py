"""A compiled optimizer step: `compile_step(optimizer)` runs `optimizer.step()` through `torch.compile`.

How it works (torch 2.13; checked on CPU only):

- The optimizer's own `step` function (the one written in its class, found under torch's profiling and
  no-grad wrappers) is compiled. Each optimizer class thus has its own dynamo cache (the wrappers are shared by
  every optimizer class and would share one cache, and its recompile limit). Step pre/post hooks still run,
  eagerly, around the compiled call; the call runs under `torch.no_grad()`.
- The learning rate changes every step (schedules write `group["lr"] = initial_lr * factor`, a float). A float
  that reaches an operator as a Python scalar (`alpha=-lr`, `1 - lr * wd`) is specialized by dynamo: a new graph
  for every lr. So, for the duration of each compiled call only, `group["lr"]` is a 0-dim float64 tensor (one
  per group, refilled in place every step) and dynamo runs with `capture_scalar_outputs=True`, so that a
  tensor lr used as a scalar stays a graph input. Outside the call `group["lr"]` is the schedule's float again:
  state_dict, logging and schedules see no difference. torch's own optimizers accept a tensor lr only with
  `capturable=True`; for them `capturable` is also set for the duration of the call.
- Step counters: under compile, reading a tensor as a Python number (`.item()`) is a graph break and bakes the
  number into the graph (a new graph every step), and Inductor does not fuse a foreach op whose scalars are a
  list of symbolic numbers (it falls back to the unfused aten::_foreach_* kernel). So the optimizers written
  here turn the step into per-tensor scalars with `_common.step_scalars` (while compiling, one fp64 buffer that
  `_common.materialize`, an opaque custom op, makes Inductor compute once, not a 0-dim value whose `pow` it
  would inline into, and recompute at every iteration of, each update loop: LAMB's, rdbd's and adam_hd's bias
  corrections, ADOPT's clip value; LAMB's and LARS's trust ratios go through `materialize` too), ADOPT has a
  tensor-step update for compiling (`_step_compiling`), and a compiled LAMB step takes the foreach path even
  with foreach=False (`COMPILE_FOREACH`: its reference path reads the step with `.item()`).
- The reduction passes of sgd_hd, adam_hd, lars and lamb are fused CPU kernels (`fast/cpu_kernels.py`), custom ops
  that the compiled step calls; Inductor fuses the rest of the step around them.
- Checked on CPU only. On an H100 with torch 2.11 (bench/README.md, "On a GPU") compiled rdbd ran (2.17x fused
  AdamW); the FP32StateOptimizer subclasses failed (dynamo refused an attribute that `_run_step` then set on the
  optimizer, since removed; not rerun), sgd_hd and adam_hd failed inside Inductor at 124M parameters (sgd_hd ran
  on two small tensors), and a compiled ADOPT step in training failed with "CUDA driver error: invalid
  argument". So `train.compile_optimizer: auto` compiles on CPU only.
- The hypergradient optimizers' `group["hd_lr"]` (a float their step writes) is passed the same way as lr.
- A call with a closure (line searches: `requires_closure`) runs the eager step.
- Dynamo settings are patched around each call (`torch._dynamo.config.patch`), never set globally.

Whether a compiled step pays is declared on each optimizer's spec (`OptimizerSpec.compile`: "pays" where the
compiled step was faster than the eager one on CPU in `bench/optim_step.py`, a 124M-parameter GPT's parameter
set, see bench/README.md, and so `train.compile_optimizer: auto` compiles it; "no_gain"; or why it cannot be
compiled: graph breaks or a recompilation every step). The compile itself takes 3-400 s on 2 cores (once per
run; inductor caches it on disk). `compile_pays(name)`, `not_compilable()` read the specs.

This module registers no optimizer and imports nothing heavy at import time (torch._dynamo is imported lazily).
"""
from __future__ import annotations

from typing import Any

import torch

# param-group floats that change every step: a 0-dim tensor during the compiled call. "lr": the schedule's;
# "hd_lr": the hypergradient optimizers' adapted rate (written by their step).
_TENSOR_KEYS = ("lr", "hd_lr")

_DYNAMO_CONFIG = {
    "capture_scalar_outputs": True,  # a tensor lr used as a Python scalar (alpha=-lr) stays in the graph
    "recompile_limit": 64,  # one cache entry per optimizer instance of a class (tests, benchmarks)
}


def _raw_step(cls) -> Any:
    """The `step` function written in the optimizer's class, under torch's profiling/no-grad wrappers."""
    f = cls.step
    while hasattr(f, "__wrapped__"):
        f = f.__wrapped__
    return f


class CompiledStep:
    """Callable that replaces `optimizer.step`; `.eager` is the original step, `.compiled` the compiled one."""

    def __init__(self, optimizer: torch.optim.Optimizer, **compile_kwargs):
        self.optimizer = optimizer
        self.eager = optimizer.step  # the bound, hooked step of the class
        self.compiled = torch.compile(_raw_step(type(optimizer)), **compile_kwargs)
        self._lr: list[torch.Tensor] = []
        # torch's hook wrapper around our compiled call: pre/post hooks and the profiler entry run eagerly
        self._hooked = torch.optim.Optimizer.profile_hook_step(self._run)

    def _run(self, optimizer, closure=None, **kwargs):
        return self._call_compiled(**kwargs)

    def __call__(self, closure=None, **kwargs):
        if closure is not None:
            return self.eager(closure, **kwargs)
        return self._hooked(self.optimizer, **kwargs)

    def _call_compiled(self, **kwargs):
        import torch._dynamo

        groups = self.optimizer.param_groups
        while len(self._lr) < len(groups):
            self._lr.append({key: torch.zeros((), dtype=torch.float64) for key in _TENSOR_KEYS})
        saved = []
        try:
            for g, ts in zip(groups, self._lr):
                for key, t in ts.items():
                    value = g.get(key)
                    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
                        t.fill_(value)
                        g[key] = t
                        saved.append((g, key, value, t))
                if g.get("capturable") is False:  # torch's optimizers (muon's AdamW too) take a tensor lr only so
                    g["capturable"] = True
                    saved.append((g, "capturable", False, True))
            with torch._dynamo.config.patch(**_DYNAMO_CONFIG), torch.no_grad():
                return self.compiled(self.optimizer, **kwargs)
        finally:
            for g, key, old, new in saved:
                value = g.get(key)
                if value is new:
                    g[key] = old
                elif torch.is_tensor(value) and value.numel() == 1:  # the step wrote a new value: keep it, as a float
                    g[key] = float(value)


def compile_step(optimizer: torch.optim.Optimizer, **compile_kwargs) -> torch.optim.Optimizer:
    """Make `optimizer.step` run through `torch.compile` (see the module docstring); returns the optimizer.

    `compile_kwargs` go to `torch.compile` (e.g. `mode=`, `fullgraph=True`). The first two calls compile (the
    first step initializes the optimizer state, the second sees it); later calls reuse the graph even though
    the lr changes. Calling it again on a compiled optimizer does nothing. `uncompile_step(optimizer)` undoes it.
    """
    if isinstance(getattr(optimizer, "step", None), CompiledStep):
        return optimizer
    optimizer.step = CompiledStep(optimizer, **compile_kwargs)
    return optimizer


def uncompile_step(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Back to the eager step."""
    if isinstance(optimizer.__dict__.get("step"), CompiledStep):
        del optimizer.step
    return optimizer


def is_compiled(optimizer) -> bool:
    return isinstance(getattr(optimizer, "step", None), CompiledStep)


def compile_pays(name: str) -> bool:
    """Whether `train.compile_optimizer: auto` compiles the registered optimizer `name` (a CPU measurement)."""
    from ..registry import get_spec
    return get_spec(name).compile == "pays"


def not_compilable() -> dict[str, str]:
    """Registered optimizers whose step does not compile (torch 2.13, CPU), and why."""
    from ..registry import OPTIMIZERS
    return {n: s.compile for n, s in OPTIMIZERS.items() if not s.compilable}


__all__ = ["CompiledStep", "compile_step", "uncompile_step", "is_compiled", "compile_pays", "not_compilable"]
