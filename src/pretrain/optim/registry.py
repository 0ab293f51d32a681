"""The optimizer registry: one place that maps a recipe's `optim.name` to an optimizer.

`OPTIMIZERS[name]` is an `OptimizerSpec`; `build_optimizer(name, model_or_params, **hparams)` validates the
hyperparameters against the spec's defaults, builds parameter groups (see `param_groups.py`) and returns a
`torch.optim.Optimizer`. Capabilities the loop needs (closure, Hessian estimate, train/eval modes) are
asked from the optimizer object itself through the helpers at the bottom, never by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import ConfigError, check_range
from .param_groups import build_param_groups


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    factory: Callable[[list[dict], dict], torch.optim.Optimizer]  # (param groups, hyperparameters) -> optimizer
    defaults: dict[str, Any]  # the paper's defaults; every accepted hyperparameter appears here
    paper: str
    state: str  # optimizer state per parameter, e.g. "2 fp32 (m, v)"
    source: str = "here"  # "torch", "schedulefree", "bitsandbytes", or "here" (written in this package)
    notes: str = ""
    # group-building options that are not optimizer kwargs (accepted in hparams, consumed by build_optimizer)
    group_options: dict[str, Any] = field(default_factory=lambda: {"decay_embeddings": False})


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    if spec.name in OPTIMIZERS:
        raise KeyError(f"optimizer {spec.name!r} registered twice")
    OPTIMIZERS[spec.name] = spec
    return spec


def get_spec(name: str) -> OptimizerSpec:
    if name not in OPTIMIZERS:
        raise ConfigError("optim.name", f"unknown optimizer {name!r}", sorted(OPTIMIZERS), got=name)
    return OPTIMIZERS[name]


def validate_hparams(name: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Merge `hparams` over the spec's defaults; reject unknown names and out-of-range values."""
    spec = get_spec(name)
    allowed = {**spec.defaults, **spec.group_options}
    for key in hparams:
        if key not in allowed:
            raise ConfigError(f"optim.{key}", f"not a hyperparameter of {name!r}", sorted(allowed), got=key)
    merged = {**allowed, **hparams}
    for key, value in merged.items():
        f = f"optim.{key}"
        if key in ("lr", "eps", "weight_decay", "hyper_lr") and value is not None and not (
                key == "eps" and isinstance(value, (list, tuple))):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f, f"must be a number, got {value!r}")
            check_range(f, float(value), lo=0.0)
        elif key == "betas" and value is not None:
            if not isinstance(value, (list, tuple)) or not all(isinstance(b, (int, float)) for b in value):
                raise ConfigError(f, f"must be a list of numbers, got {value!r}")
            for i, b in enumerate(value):
                check_range(f"{f}[{i}]", float(b), lo=0.0, hi=1.0, hi_open=True)
            merged[key] = tuple(float(b) for b in value)
        elif key == "momentum" and value is not None:
            check_range(f, float(value), lo=0.0, hi=1.0, hi_open=True)
    return merged


def build_optimizer(name: str, model_or_params, *, lr_multipliers: dict[str, float] | None = None,
                    **hparams) -> torch.optim.Optimizer:
    """Build the registered optimizer `name` over a module (parameter groups built here) or parameters.

    `lr_multipliers` maps a parameter-group kind ("embedding", "hidden", "head", "vector") to a factor on
    the learning rate (muP uses it). Every group keeps its own base lr in `group["initial_lr"]`; schedules
    scale that, never overwrite it.
    """
    spec = get_spec(name)
    hp = validate_hparams(name, hparams)
    opts = {k: hp.pop(k) for k in spec.group_options}
    groups = build_param_groups(model_or_params, lr=hp.get("lr"), weight_decay=hp.get("weight_decay", 0.0),
                                lr_multipliers=lr_multipliers, **opts)
    opt = spec.factory(groups, hp)
    for g in opt.param_groups:
        g.setdefault("initial_lr", g["lr"])
    return opt


def unwrap(opt):
    """The innermost optimizer under accelerate / DeepSpeed wrappers."""
    for _ in range(5):
        module = type(opt).__module__
        if not (module.startswith("accelerate") or module.startswith("deepspeed")) or not hasattr(opt, "optimizer"):
            break
        opt = opt.optimizer
    return opt


def requires_closure(opt) -> bool:
    """The optimizer re-evaluates the loss on the same batch (line searches): step(closure) is required."""
    return bool(getattr(unwrap(opt), "requires_closure", False))


def hessian_interval(opt) -> int:
    """Every how many steps the loop must call `opt.update_hessian()` after a sampled-label backward; 0 = never."""
    return int(getattr(unwrap(opt), "hessian_update_interval", 0) or 0)


def has_train_eval(opt) -> bool:
    """Schedule-Free style: parameters differ between train and eval; the loop calls opt.eval()/opt.train()."""
    inner = unwrap(opt)
    return callable(getattr(inner, "train", None)) and callable(getattr(inner, "eval", None))
