"""The optimizer registry: one place that maps a recipe's `optim.name` to an optimizer.

`OPTIMIZERS[name]` is an `OptimizerSpec`; `build_optimizer(name, model_or_params, **hparams)` validates the
hyperparameters against the spec's defaults, builds parameter groups (see `param_groups.py`) and returns a
`torch.optim.Optimizer`.

What an optimizer's step needs from the training step (a closure, a Hessian estimate, train/eval modes,
whole matrices, the tokens per step) is declared once, on its spec (`Needs`), and asked from there: by config
validation (engine conflicts, before anything is built), by the step protocol (`pretrain.step`, shared by the
loop and the Trainer) through `needs_of(optimizer)`; never by the optimizer's name. So is whether a compiled
step pays (`compile`). Defaults are declared once: `OptimizerSpec.of_class` reads them from the optimizer
class's signature.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import ConfigError, check_number
from .param_groups import build_param_groups


@dataclass(frozen=True)
class Needs:
    """What an optimizer's step needs from the training step (see `pretrain.step`).

    closure        step(closure): closure() is the loss on this step's batch at the current parameters (no
                   graph); closure(backward=True) also recomputes the gradients (line searches, vSGD)
    hessian_loss   every `optimizer.hessian_update_interval` steps, after the step: backward of
                   hessian_loss(logits, mask=, generator=) averaged over the step's micro-batches, then
                   `optimizer.update_hessian()` (Sophia's Gauss-Newton-Bartlett estimate)
    train_eval     the parameters differ between training and evaluation: optimizer.eval() before evaluating,
                   saving and exporting, optimizer.train() after (Schedule-Free)
    matrix_params  updates whole 2-D matrices (Muon): not on DeepSpeed ZeRO's flattened partitions
    tokens_per_step  param-group keys that, left None, are filled with the tokens per optimizer step (Sophia's bs)
    """
    closure: bool = False
    hessian_loss: Callable | None = None
    train_eval: bool = False
    matrix_params: bool = False
    tokens_per_step: tuple[str, ...] = ()

    def engine_conflict(self, engine: str) -> str | None:
        """Why this optimizer cannot run under `engine` ("deepspeed", "fp16"), or None."""
        if engine in ("deepspeed", "fp16") and (self.closure or self.hessian_loss):
            return ("needs a loss closure or a Hessian estimate, which the DeepSpeed engine's step and the fp16 "
                    "gradient scaler do not provide")
        if engine == "deepspeed" and self.matrix_params:
            return "updates whole 2-D matrices, which DeepSpeed ZeRO flattens into partitions"
        return None


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
    needs: Needs = Needs()
    # compiled step (train.compile_optimizer, pretrain.optim.fast.compiled): "pays" where bench/optim_step.py
    # measured it faster than the eager step on CPU (auto compiles it), "no_gain", or why it cannot compile
    compile: str = "no_gain"
    cls: type | None = None  # the optimizer class, where the factory is a class's constructor (`of_class`)
    # optimizer state in bytes per parameter (fp32 state; the memory planner, pretrain.plan): a number, a dict
    # {parameter kind: bytes} ("other" for the kinds not named), or a function of the hyperparameters giving either;
    # `temp_bytes`: what the step allocates beyond it, per parameter (a closure's parameter copies, vSGD's probes)
    state_bytes: Any = 0.0
    temp_bytes: float = 0.0
    # hyperparameters that are EMA decay rates (a number or a pair): the square-root batch rule
    # (scaling.batch_lr_rule=sqrt, Malladi et al. 2022) also sets 1 - beta' = k (1 - beta) and eps' = eps / sqrt(k)
    ema_keys: tuple[str, ...] = ()
    # the muP / CompleteP per-parameter rule this optimizer gets (scaling.parametrization; model/parametrization.py):
    # "adam" (Adam family: lr ~ 1/fan_in for hidden matrices), "sgd" (SGD family: MuSGD's rule), "muon" (Muon on
    # the hidden matrices, AdamW elsewhere), a function of the hyperparameters giving one of them or None, or None:
    # no rule is defined, and scaling.parametrization=mup|completep is refused for it
    mup: Any = None

    @classmethod
    def of_class(cls, name: str, opt_cls, paper: str, state: str, **kw) -> "OptimizerSpec":
        """A spec for an optimizer class whose signature declares the hyperparameters and their defaults
        (every parameter after the parameter list, but `foreach`)."""
        return cls(name, lambda groups, hp: opt_cls(groups, **hp), signature_defaults(opt_cls), paper, state,
                   cls=opt_cls, **kw)

    @property
    def compilable(self) -> bool:
        return self.compile in ("pays", "no_gain")

    def state_bytes_per_kind(self, hparams: dict | None = None) -> dict[str, float]:
        """Optimizer state bytes per parameter of each kind (param_groups.KINDS) at these hyperparameters."""
        from .param_groups import KINDS

        value = self.state_bytes
        if callable(value):
            value = value({**self.defaults, **(hparams or {})})
        if not isinstance(value, dict):
            return {k: float(value) for k in KINDS}
        return {k: float(value.get(k, value.get("other", 0.0))) for k in KINDS}


def signature_defaults(opt_cls) -> dict[str, Any]:
    """The keyword defaults of `opt_cls.__init__` after its first (parameters) argument, `foreach` excluded."""
    params = list(inspect.signature(opt_cls.__init__).parameters.values())[2:]
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.kind != p.VAR_KEYWORD]
    if missing:
        raise TypeError(f"{opt_cls.__name__}: every hyperparameter needs a default in the signature: {missing}")
    return {p.name: p.default for p in params if p.name != "foreach" and p.kind != p.VAR_KEYWORD}


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
            check_number(f, value, lo=0.0, hi=math.inf, hi_open=True)  # finite
        elif key == "betas" and value is not None:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f, f"must be a list of numbers, got {value!r}")
            merged[key] = tuple(check_number(f"{f}[{i}]", b, lo=0.0, hi=1.0, hi_open=True)
                                for i, b in enumerate(value))
        elif key == "momentum" and value is not None:
            check_number(f, value, lo=0.0, hi=1.0, hi_open=True)
        elif isinstance(allowed[key], bool) and not isinstance(value, bool):
            raise ConfigError(f, "must be true or false", ["true", "false"], got=value)
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
    opt.pretrain_needs = spec.needs
    return opt


def unwrap(opt):
    """The innermost optimizer under accelerate / DeepSpeed wrappers."""
    for _ in range(5):
        module = type(opt).__module__
        if not (module.startswith("accelerate") or module.startswith("deepspeed")) or not hasattr(opt, "optimizer"):
            break
        opt = opt.optimizer
    return opt


def needs_of(opt) -> Needs:
    """What `opt`'s step needs: its spec's declaration (stamped on it by `build_optimizer`; for one of our classes
    built directly, the spec of its class), or, for any other optimizer (e.g. passed to the Trainer), what it
    declares itself: a `pretrain_needs` attribute, or `requires_closure`, `hessian_update_interval` +
    `hessian_loss`, callable `train()` / `eval()`."""
    inner = unwrap(opt)
    declared = getattr(inner, "pretrain_needs", None)
    if isinstance(declared, Needs):
        return declared
    spec = next((s for s in OPTIMIZERS.values() if s.cls is type(inner)), None)
    if spec is not None:
        return spec.needs
    return Needs(closure=bool(getattr(inner, "requires_closure", False)),
                 hessian_loss=getattr(inner, "hessian_loss", None) if getattr(inner, "hessian_update_interval", 0)
                 else None,
                 train_eval=callable(getattr(inner, "train", None)) and callable(getattr(inner, "eval", None)))


def requires_closure(opt) -> bool:
    """The optimizer re-evaluates the loss on the same batch (line searches): step(closure) is required."""
    return needs_of(opt).closure


def hessian_interval(opt) -> int:
    """Every how many steps the step protocol runs the Hessian estimate for `opt`; 0 = never."""
    if needs_of(opt).hessian_loss is None:
        return 0
    return int(getattr(unwrap(opt), "hessian_update_interval", 0) or 0)


def has_train_eval(opt) -> bool:
    """Schedule-Free style: parameters differ between train and eval; opt.eval()/opt.train() around evaluation."""
    return needs_of(opt).train_eval
