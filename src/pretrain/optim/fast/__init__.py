"""The optimizer speed layer, opt-in: nothing here changes what an optimizer computes, only how fast.

- `cpu_kernels.py`: fused C++ CPU kernels (built on first use with `torch.utils.cpp_extension.load_inline`) for
  the reduction passes of sgd_hd, adam_hd, lars and lamb. Each replaces a plain torch-op function that sits with
  its update rule (`_common.dots`, `_common.sq_norms`, `lamb.lamb_moments_norms_`, `hypergradient.dot_update_`,
  `hypergradient.dot_adam_moments_`); an optimizer calls `kernel(name, plain)(...)`, which is `plain` unless the
  kernels are enabled, built, and the tensors are contiguous fp32 CPU ones.
  Enable with `enable_kernels()` (the training loop does), undo with `disable_kernels()`; `kernels_enabled()`.
  `PRETRAIN_CPU_KERNELS=0` keeps them off whatever is enabled. Off by default: the plain functions run.
- `compiled.py`: `compile_step(optimizer)` runs `optimizer.step()` through `torch.compile` (`uncompile_step`
  undoes it; `train.compile_optimizer` in the training loop). Enabled kernels are custom ops inside the graph.
"""
from __future__ import annotations

import os

from . import cpu_kernels

_enabled = False


def enable_kernels() -> None:
    """Use the fused CPU kernels from now on (built on first use; see `prepare`)."""
    global _enabled
    _enabled = True


def disable_kernels() -> None:
    """Back to the plain torch-op functions."""
    global _enabled
    _enabled = False


def kernels_enabled() -> bool:
    """Whether `enable_kernels()` is in effect (and `PRETRAIN_CPU_KERNELS=0` does not veto it)."""
    return _enabled and os.environ.get("PRETRAIN_CPU_KERNELS", "1") != "0"


def prepare(param_groups) -> None:
    """Where the kernels are enabled and some parameter could use them, build them now (an optimizer's
    __init__: its first step may be traced by torch.compile, which cannot run the build)."""
    if _enabled:
        cpu_kernels.prepare(param_groups)


def kernel(name: str, plain):
    """The function to call for the pass `name` ("dot_update_", "sq_norms", "lamb_moments_norms_",
    "dot_adam_moments_"): `plain` itself unless the kernels are enabled and built; then a function that runs the
    fused kernel where every tensor it takes is contiguous fp32 CPU (`cpu_kernels.eligible`) and `plain`
    otherwise. The fused kernel returns what `plain` returns, to rounding (lamb_moments_norms_: r is None)."""
    if not _enabled or not cpu_kernels.available():
        return plain
    fused, n_lists = getattr(cpu_kernels, name), cpu_kernels.TENSOR_LISTS[name]

    def fused_or_plain(*args):
        if args[0] and cpu_kernels.eligible(*args[:n_lists]):
            return fused(*args)
        return plain(*args)

    return fused_or_plain


__all__ = ["enable_kernels", "disable_kernels", "kernels_enabled", "kernel", "prepare"]
