"""Optimizers: `OPTIMIZERS` (name -> OptimizerSpec) and `build_optimizer(name, model_or_params, **hparams)`.

Importing this package registers every optimizer: torch's and the official packages' in `torch_optimizers`,
Muon+AdamW in `muon`, and one module per optimizer written here (each calls `register(OptimizerSpec(...))`).
The opt-in speed layer (fused CPU kernels, the compiled step) is the subpackage `fast`.
"""
from .registry import (OPTIMIZERS, Needs, OptimizerSpec, build_optimizer, get_spec, has_train_eval,
                       hessian_interval, needs_of, register, requires_closure, unwrap, validate_hparams)
from .param_groups import KINDS, build_param_groups, classify
import importlib as _importlib
import pkgutil as _pkgutil

# registration: every module of this package registers its optimizers on import (`_common`: shared helpers only;
# subpackages, such as the opt-in speed layer `fast`, register nothing)
for _m in sorted(m.name for m in _pkgutil.iter_modules(__path__) if not m.ispkg):
    if _m not in ("registry", "param_groups") and not _m.startswith("_"):
        _importlib.import_module(f"{__name__}.{_m}")

__all__ = ["OPTIMIZERS", "OptimizerSpec", "Needs", "needs_of", "build_optimizer", "get_spec", "register",
           "validate_hparams", "requires_closure", "hessian_interval", "has_train_eval", "unwrap", "KINDS",
           "build_param_groups", "classify"]
