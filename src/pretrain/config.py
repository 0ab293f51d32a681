"""Recipes: Hydra composition from `recipes/`, a typed schema, and validation before anything is built.

`load_config(overrides)` composes `recipes/train.yaml` with Hydra overrides (`recipe=1b_wsd optim=lion
optim.lr=3e-4 ...`), checks every field against the schema below (unknown keys with a did-you-mean, types,
ranges, registry names, optimizer and schedule keywords, divisibility of the batch) and returns a
`RunConfig` of plain dataclasses. Every error is a `ConfigError` naming the field and what is allowed: the command
line is parsed first (`parse_overrides`: Hydra's syntax, no `hydra.*`, no sweeps, group values that are files of
their group), recipe files are plain YAML (no tags that build objects), and no number anywhere may be NaN or
infinite. The config holds resolved values: `schedule.warmup_fraction` becomes `schedule.warmup_steps`, and
without a validation set (`data.val_fraction=0`) `train.eval_every` is 0.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Optional

from .errors import ConfigError, check_number, check_range

RECIPES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "recipes")


@dataclass
class ModelConfig:
    name: str = "tiny"
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: Optional[int] = None
    d_ff: Optional[int] = None
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    activation_checkpointing: bool = False  # recompute each block in the backward pass (saves activation memory)


@dataclass
class DataConfig:
    source: str = "stdlib"  # stdlib | text_files | hub
    paths: list = field(default_factory=list)
    hub_name: Optional[str] = None
    hub_config: Optional[str] = None
    split: str = "train"
    text_field: str = "text"
    tokenizer: str = "bpe"  # "bpe" (trained locally, cached) or a hub tokenizer name
    vocab_size: int = 4096
    val_fraction: float = 0.05
    val_docs: int = 1000  # hub: the first N streamed documents are held out
    split_seed: int = 1234
    shuffle_buffer: int = 10000
    max_bytes: Optional[int] = None
    cache_dir: str = "~/.cache/pretrain"


@dataclass
class TrainConfig:
    steps: int = 300
    global_batch_size: int = 16  # sequences per optimizer step, = micro_batch_size x accumulation x world_size
    micro_batch_size: int = 8
    seq_len: int = 128
    eval_every: int = 50
    eval_batches: int = 8
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2  # newest N kept; 0 keeps all
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model
    compile_optimizer: str = "auto"  # auto (on CPU where bench/ measured it pays, runs >= 500 steps) | always | never
    fast_kernels: bool = True  # fused CPU kernels for the reduction passes of sgd_hd, adam_hd, lars, lamb (optim/fast)
    init_from: Optional[str] = None  # a checkpoint directory to branch from (e.g. a WSD cooldown)
    init_weights_only: bool = False  # with init_from: only the model's weights (fresh optimizer, step 0)
    progress: bool = True
    ignore_plan: bool = False  # on a GPU, launch even when the memory plan (pretrain.plan) says it does not fit
    batch_ramp: typing.Any = None  # null | auto | {start, increment, tokens} (sequences; pretrain.batch_size)
    noise_scale: bool = True  # log the gradient noise scale b_noise (pretrain.noise_scale; DDP / one process)
    noise_scale_ema: float = 0.99  # its EMA decay per measured step
    max_bad_steps: int = 10  # non-finite steps (each skipped) in a row before the run stops (exit 3)
    checkpoint_hf_copy: bool = False  # also store the model in Hugging Face format in every checkpoint (model/)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len


@dataclass
class ClipConfig:
    """Gradient clipping (pretrain.clipping states each rule)."""
    policy: str = "norm"  # none | norm | value | percentile | zscore | agc
    max_norm: float = 1.0  # norm: the global-norm threshold
    value: float = 1.0  # value: clamp every gradient element to [-value, value]
    percentile: float = 90.0  # percentile: the threshold is this percentile of the previous steps' norms
    window: int = 1000  # percentile: how many previous norms (0: all)
    warmup_steps: int = 100  # percentile, zscore: steps seen before clipping starts
    z: float = 2.5  # zscore: threshold = EMA mean + z * EMA std of the norm
    beta: float = 0.97  # zscore: EMA decay
    agc_lambda: float = 0.01  # agc: clip where |G_i| > agc_lambda * max(|W_i|, agc_eps), unit-wise
    agc_eps: float = 1e-3


@dataclass
class ScalingConfig:
    batch_lr_rule: str = "none"  # none | linear (Goyal et al. 2017) | sqrt (Malladi et al. 2022)
    base_batch_size: Optional[int] = None  # the global batch the recipe's lr was tuned at
    # muP / CompleteP (src/pretrain/model/parametrization.py): the proxy the hyperparameters were tuned on
    parametrization: str = "sp"  # sp | mup | completep
    base_width: Optional[int] = None  # the proxy's d_model (mup, completep)
    base_head_dim: Optional[int] = None  # null: base_width / model.n_head
    base_d_ff: Optional[int] = None  # null: the proxy's default SwiGLU width (or model.d_ff scaled like the width)
    base_depth: Optional[int] = None  # the proxy's n_layer (completep)
    depth_alpha: float = 1.0  # completep: residual branches x (n_layer / base_depth)^-depth_alpha, in [0.5, 1]
    input_multiplier: float = 1.0  # alpha_in: embedding output x this
    output_multiplier: float = 1.0  # alpha_out: logits x this (/ width multiplier under mup, completep)


@dataclass
class HardwareConfig:
    """What the recipe is sized for: the plan tool's defaults and the README's recipe table (null: not stated)."""
    gpus: Optional[int] = None
    gpu: Optional[str] = None  # a hardware.GPUS key, e.g. h100-80gb
    strategy: Optional[str] = None  # ddp | zero1 | zero2 | zero3 | fsdp


@dataclass
class LogConfig:
    wandb: bool = False
    project: str = "pretrain"
    run_name: Optional[str] = None
    tags: list = field(default_factory=list)
    log_every: int = 10
    job_type: str = "train"  # W&B job_type: train | sweep | coordcheck | bench
    target_loss: Optional[float] = None  # W&B summary: the first eval step at or below it (steps_to_target)


@dataclass
class RunConfig:
    recipe: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: dict = field(default_factory=lambda: {"name": "adamw"})  # name + the optimizer's hyperparameters
    schedule: dict = field(default_factory=lambda: {"name": "cosine"})  # name + the schedule's keywords
    train: TrainConfig = field(default_factory=TrainConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    log: LogConfig = field(default_factory=LogConfig)
    run_dir: str = "runs/tiny"
    seed: int = 0
    resume: str = "none"  # none | auto | <checkpoint dir>
    resume_overrides: bool = False  # apply changed optimizer / schedule / clip keys and train.steps on resume
    notes: str = ""  # free text kept with the run (sizing, hardware)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "data.source": ["stdlib", "text_files", "hub"],
    "train.precision": ["auto", "fp32", "bf16"],
    "train.compile_optimizer": ["auto", "always", "never"],
    "clip.policy": ["none", "norm", "value", "percentile", "zscore", "agc"],
    "scaling.batch_lr_rule": ["none", "linear", "sqrt"],
    "log.job_type": ["train", "sweep", "coordcheck", "bench"],
    "scaling.parametrization": ["sp", "mup", "completep"],
    "hardware.strategy": [None, "ddp", "zero1", "zero2", "zero3", "fsdp"],
}


def _type_ok(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp in (list, dict, str):
        return isinstance(value, tp)
    return True


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _build(cls, data: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}{key}", "unknown key", names, got=key)
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        value, tp = data[name], hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}", f"must be a mapping, got {value!r}")
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
            continue
        if not _type_ok(value, tp):
            raise ConfigError(f"{prefix}{name}", f"must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        if tp is float and isinstance(value, int):
            value = float(value)
        kwargs[name] = value
    return cls(**kwargs)


def _choice(field_name: str, value):
    allowed = CHOICES[field_name]
    if value not in allowed:
        raise ConfigError(field_name, f"unknown value {value!r}", allowed, got=value)


def validate(cfg: RunConfig) -> RunConfig:
    """Range, choice, registry and consistency checks; raises ConfigError on the first problem."""
    from .optim import get_spec as optim_spec, validate_hparams
    from .schedules import get_spec as sched_spec, validate_kwargs

    for name in CHOICES:
        section, key = name.split(".")
        _choice(name, getattr(getattr(cfg, section), key))
    m, t, d = cfg.model, cfg.train, cfg.data
    for f, v in [("model.d_model", m.d_model), ("model.n_layer", m.n_layer), ("model.n_head", m.n_head),
                 ("train.steps", t.steps), ("train.global_batch_size", t.global_batch_size),
                 ("train.micro_batch_size", t.micro_batch_size), ("train.seq_len", t.seq_len),
                 ("train.eval_batches", t.eval_batches), ("data.vocab_size", d.vocab_size),
                 ("log.log_every", cfg.log.log_every)]:
        check_range(f, v, lo=1)
    check_range("train.max_bad_steps", t.max_bad_steps, lo=1)
    if cfg.log.target_loss is not None:
        check_number("log.target_loss", cfg.log.target_loss, lo=-math.inf, hi=math.inf, lo_open=True, hi_open=True)
    for f, v in [("train.eval_every", t.eval_every), ("train.save_every", t.save_every),
                 ("train.keep_checkpoints", t.keep_checkpoints), ("seed", cfg.seed)]:
        check_range(f, v, lo=0)
    if m.d_model % m.n_head:
        raise ConfigError("model.n_head", f"must divide model.d_model ({m.d_model}), got {m.n_head}")
    if (m.d_model // m.n_head) % 2:
        raise ConfigError("model.n_head", f"head dim d_model/n_head = {m.d_model // m.n_head} must be even (RoPE)")
    if m.n_kv_head is not None and (m.n_kv_head < 1 or m.n_head % m.n_kv_head):
        raise ConfigError("model.n_kv_head", f"must be a positive divisor of model.n_head ({m.n_head}), got {m.n_kv_head}")
    check_range("model.init_std", m.init_std, lo=0.0, lo_open=True)
    check_range("data.val_fraction", d.val_fraction, lo=0.0, hi=1.0, hi_open=True)
    from .clipping import check_clip
    check_clip(cfg.clip)
    check_number("train.noise_scale_ema", t.noise_scale_ema, lo=0.0, hi=1.0, hi_open=True)
    from .batch_size import check_ramp
    check_ramp(t)
    if d.source == "text_files" and not d.paths:
        raise ConfigError("data.paths", "data.source=text_files needs data.paths (files, folders or globs)")
    if d.source == "text_files":
        from .data.corpus import check_size, local_files
        local_files(d.paths)  # each path matches text files: not binary, not empty
        check_size(d, t)  # at least one global batch of tokens is possible
    if (d.val_docs if d.source == "hub" else d.val_fraction) == 0:
        t.eval_every = 0  # no validation set: nothing to evaluate (build_data logs it)
    check_range("data.val_docs", d.val_docs, lo=0)
    if d.source == "hub" and not d.hub_name:
        raise ConfigError("data.hub_name", "data.source=hub needs data.hub_name (e.g. HuggingFaceFW/fineweb-edu)")
    if t.global_batch_size % t.micro_batch_size:
        raise ConfigError("train.global_batch_size", f"{t.global_batch_size} is not divisible by "
                          f"train.micro_batch_size ({t.micro_batch_size})")
    if cfg.scaling.batch_lr_rule != "none" and not cfg.scaling.base_batch_size:
        raise ConfigError("scaling.base_batch_size", "a batch-size lr rule needs the batch size the lr was tuned at")
    if t.init_from is not None and not os.path.isdir(os.path.expanduser(t.init_from)):
        raise ConfigError("train.init_from", f"checkpoint directory {t.init_from!r} does not exist")
    if cfg.resume not in ("none", "auto") and not os.path.isdir(os.path.expanduser(cfg.resume)):
        raise ConfigError("resume", f"{cfg.resume!r} is neither 'none', 'auto' nor an existing checkpoint directory")

    resolve_warmup(cfg)
    for section, spec_fn, check in (("optim", optim_spec, validate_hparams), ("schedule", sched_spec, validate_kwargs)):
        block = dict(getattr(cfg, section))
        if "name" not in block:
            raise ConfigError(f"{section}.name", "missing")
        name = block.pop("name")
        spec_fn(name)
        check(name, block)
    from .model.parametrization import check_config as check_parametrization
    check_parametrization(cfg)  # scaling.parametrization against the model and the optimizer's muP rule
    spec = optim_spec(cfg.optim["name"])
    if t.compile_optimizer == "always" and not spec.compilable:
        raise ConfigError("train.compile_optimizer", f"the step of {spec.name!r} cannot be compiled: "
                          f"{spec.compile}", ["auto", "never"])
    if cfg.hardware.gpu is not None:
        from .hardware import gpu_named
        gpu_named(cfg.hardware.gpu, "hardware.gpu")
    if cfg.hardware.gpus is not None:
        check_range("hardware.gpus", cfg.hardware.gpus, lo=1)
    check_finite(cfg.to_dict())
    check_engine(cfg, launch_engine())
    build_run_schedule(cfg)  # range checks that need the run length (warmup, decay, MPL file)
    return cfg


def check_finite(value, key: str = "") -> None:
    """ConfigError naming the first NaN or infinite number anywhere in the config (lists included)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        check_finite(v, f"{key}.{k}" if isinstance(k, str) and key else f"{key}[{k}]" if key else str(k))


def launch_engine() -> str:
    """The engine `accelerate launch` set up for this process (from its environment): deepspeed, fsdp or ddp
    (also one process)."""
    for engine in ("deepspeed", "fsdp"):
        if os.environ.get(f"ACCELERATE_USE_{engine.upper()}", "false").lower() == "true":
            return engine
    return "ddp"


def check_engine(cfg: RunConfig, engine: str) -> None:
    """What the engine cannot do, from the specs (before anything is built): DeepSpeed owns the optimizer step
    and flattens the parameters into partitions."""
    from .optim import get_spec as optim_spec
    from .schedules import get_spec as sched_spec

    name = cfg.optim["name"]
    conflict = optim_spec(name).needs.engine_conflict(engine)
    if conflict:
        raise ConfigError("optim.name", f"{name} {conflict}; use DDP or FSDP")
    if engine == "deepspeed" and cfg.clip.policy not in ("none", "norm"):
        raise ConfigError("clip.policy", f"{cfg.clip.policy!r}: DeepSpeed clips inside its engine, by the global "
                          "norm only; use norm (or none), or DDP / FSDP", ["none", "norm"], got=cfg.clip.policy)
    if engine == "fsdp" and cfg.clip.policy == "agc":
        raise ConfigError("clip.policy", "agc needs whole parameters (unit-wise norms), which FSDP shards; use "
                          "percentile, zscore, norm or value, or DDP", ["none", "norm", "value", "percentile",
                                                                        "zscore"], got="agc")
    if engine == "deepspeed" and cfg.train.batch_ramp is not None:
        raise ConfigError("train.batch_ramp", "DeepSpeed fixes the batch (its gradient accumulation) when its engine "
                          "is built; use DDP or FSDP for a batch-size ramp, or batch_ramp=null", ["null"])
    if engine != "ddp" and cfg.train.batch_ramp is not None and (
            cfg.train.batch_ramp == "auto" or cfg.train.batch_ramp.get("tokens") == "auto"):
        raise ConfigError("train.batch_ramp", f"auto follows the gradient noise scale, which is measured under DDP "
                          f"(or one process) only, not under {engine}; use a linear ramp (start, increment, tokens)")
    if engine == "deepspeed" and sched_spec(cfg.schedule["name"]).controller:
        raise ConfigError("schedule.name", f"{cfg.schedule['name']} restores model and optimizer snapshots, which "
                          "the DeepSpeed engine does not support here; use DDP or FSDP")


def optimizer_hparams(cfg: RunConfig) -> dict:
    """The optimizer's keyword arguments: the recipe's, scaled by the batch-size rule (`scaling.batch_lr_rule`,
    k = train.global_batch_size / scaling.base_batch_size): `linear` (Goyal et al. 2017): lr * k; `sqrt` (Malladi
    et al. 2022, the SDE scaling rule of adaptive methods): lr * sqrt(k), and for the optimizers whose spec names
    EMA decay rates (`ema_keys`: Adam's betas, RMSprop's alpha) 1 - beta' = k (1 - beta) and eps' = eps / sqrt(k)."""
    from .optim import get_spec

    spec = get_spec(cfg.optim["name"])
    hp = {k: v for k, v in cfg.optim.items() if k != "name"}
    merged = {**spec.defaults, **hp}
    rule, base = cfg.scaling.batch_lr_rule, cfg.scaling.base_batch_size
    if rule == "none":
        return {**hp, "lr": merged.get("lr")}
    k = cfg.train.global_batch_size / base
    hp["lr"] = merged.get("lr") * (k if rule == "linear" else math.sqrt(k))
    if rule == "sqrt" and spec.ema_keys:
        for key in spec.ema_keys:
            hp[key] = _sde_decay(merged[key], k, f"optim.{key}")
        if isinstance(merged.get("eps"), (int, float)):
            hp["eps"] = merged["eps"] / math.sqrt(k)
    return hp


def _sde_decay(beta, k: float, field: str):
    """1 - beta' = k (1 - beta), for a number or a tuple of them; refused where beta' leaves [0, 1)."""
    if isinstance(beta, (list, tuple)):
        return tuple(_sde_decay(b, k, f"{field}[{i}]") for i, b in enumerate(beta))
    scaled = 1 - k * (1 - beta)
    if not 0 <= scaled < 1:
        raise ConfigError("scaling.base_batch_size", f"the square-root rule scales {field} = {beta} to "
                          f"1 - k (1 - beta) = {scaled:g} for k = {k:g}, outside [0, 1); use a base batch closer "
                          "to train.global_batch_size or batch_lr_rule=linear")
    return scaled


def build_run_schedule(cfg: RunConfig):
    """The run's schedule, peaking at the optimizer's (batch-scaled) lr."""
    from .schedules import build_schedule

    return build_schedule(cfg.schedule["name"], peak_lr=optimizer_hparams(cfg)["lr"], total_steps=cfg.train.steps,
                          **schedule_kwargs(cfg))


def resolve_warmup(cfg: RunConfig) -> None:
    """`schedule.warmup_fraction` (f, in [0, 1]) becomes `schedule.warmup_steps` = round(f x train.steps), so a
    recipe that states its warmup as a fraction stays valid when the run is shortened (`train.steps=20`); the
    fraction is dropped and the config holds (and config.yaml records) the steps. `load_config` drops the fraction
    first where the command line sets `schedule.warmup_steps` (the user's word over the recipe's). A schedule
    without a `warmup_steps` keyword (one_cycle: pct_start) ignores a recipe's fraction."""
    from .schedules import SCHEDULES

    fraction = cfg.schedule.pop("warmup_fraction", None)
    if fraction is None:
        return
    check_number("schedule.warmup_fraction", fraction, lo=0.0, hi=1.0)
    spec = SCHEDULES.get(cfg.schedule.get("name"))  # an unknown name is reported by validate
    if spec is not None and "warmup_steps" in spec.defaults:
        cfg.schedule["warmup_steps"] = int(round(fraction * cfg.train.steps))


def schedule_kwargs(cfg: RunConfig) -> dict:
    """The schedule's keywords, with the ones a recipe leaves null filled from the run (tokens per step, batch)."""
    from .schedules import SCHEDULES

    name = cfg.schedule["name"]
    kw = {k: v for k, v in cfg.schedule.items() if k != "name"}
    defaults = SCHEDULES[name].defaults
    fill = {"tokens_per_step": cfg.train.tokens_per_step, "batch_size": cfg.train.global_batch_size}
    for key, value in fill.items():
        if key in defaults and kw.get(key, defaults[key]) is None:
            kw[key] = value
    return kw


def world_size_check(cfg: RunConfig, world: int) -> int:
    """The gradient-accumulation steps: global = micro x accumulation x world, checked."""
    t = cfg.train
    if t.global_batch_size % (t.micro_batch_size * world):
        raise ConfigError("train.global_batch_size", f"{t.global_batch_size} must be a multiple of "
                          f"train.micro_batch_size x world size = {t.micro_batch_size} x {world}")
    return t.global_batch_size // (t.micro_batch_size * world)


_OVERRIDE_KEY = re.compile(r"Could not override '([^']+)'")
GROUPS = ("recipe", "model", "data", "optim", "schedule")  # config groups: recipes/<group>/<name>.yaml


def group_names(group: str) -> list[str]:
    """The choices of a config group: the YAML files in recipes/<group>/."""
    return sorted(f[:-5] for f in os.listdir(os.path.join(RECIPES_DIR, group)) if f.endswith(".yaml"))


def parse_overrides(overrides: list[str]) -> list:
    """Hydra's parse of the command line (its `Override` objects); ConfigError where Hydra cannot parse an
    override or where it asks for more than one recipe: a group value that is not a file of the group
    (`recipe=../x`, a path), a sweep (`optim.lr=1e-3,3e-3`), a `hydra.*` setting (train.py composes recipes
    but does not run Hydra's app, so those would be ignored), a package override (`group@pkg=name`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, parsed = OverridesParser.create(), []
    for text in overrides:
        if text.startswith("-"):
            raise ConfigError("command line", f"unknown option {text!r} (see python train.py --help)",
                              ["--help", "--cfg job", "key=value"])
        try:
            (o,) = parser.parse_overrides([text])
        except HydraException as e:
            raise ConfigError("command line", f"cannot parse {text!r} ({str(e).splitlines()[0]}); an override is "
                              "key=value in Hydra's syntax, e.g. optim.lr=3e-4 optim.betas=[0.9,0.95]") from None
        key = o.key_or_group
        if re.split(r"[./]", key)[0] == "hydra":
            raise ConfigError(key, "train.py does not run Hydra's app, so hydra.* settings would be ignored: a run "
                              "writes to run_dir and its config to run_dir/config.yaml; drop the override")
        if o.is_sweep_override():
            raise ConfigError(key, f"{text!r} is a sweep; train.py runs one configuration: give one value")
        if o.package is not None or "/" in key:
            raise ConfigError(key, "not a config group or key; pick a group's file with group=name", GROUPS)
        if key in GROUPS:
            if o.is_delete():
                raise ConfigError(key, "a config group cannot be removed; pick one of its files", group_names(key))
            value = o.value()
            if not isinstance(value, str) or value not in group_names(key):
                raise ConfigError(key, f"no recipe file {key}/{value}.yaml (names of files in recipes/{key}/, "
                                  "no paths)", group_names(key), got=value)
        parsed.append(o)
    return parsed


def _yaml_error(e) -> ConfigError:
    """One line for a recipe file PyYAML cannot read: the file, the line, and the problem."""
    mark = getattr(e, "problem_mark", None)
    where = ("recipes/" + os.path.relpath(mark.name, RECIPES_DIR)) if mark is not None else "recipes"
    line = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    tag = re.search(r"tag '(?:tag:yaml\.org,2002:)?([^']+)'", problem)
    if tag:
        bang = "!!" if "tag:yaml.org,2002:" in problem else ""
        return ConfigError(where, f"{line}YAML tag {bang}{tag.group(1)} refused: recipes are plain data (no tags "
                           "that build Python objects)")
    return ConfigError(where, f"{line}malformed YAML: {problem}")


def compose(overrides: list[str]) -> dict:
    """Hydra composition of recipes/train.yaml with command-line overrides, as a plain dict."""
    import yaml
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=RECIPES_DIR, version_base=None):
            cfg = hydra_compose("train", overrides=list(overrides))
    except yaml.YAMLError as e:
        raise _yaml_error(e) from None
    except MissingConfigException as e:
        group = next((g for g in ("recipe", "optim", "schedule", "model", "data") if f"'{g}/" in str(e)
                      or f"{g}:" in str(e) or f"in {g}" in str(e)), None)
        if group:
            allowed = sorted(f[:-5] for f in os.listdir(os.path.join(RECIPES_DIR, group)) if f.endswith(".yaml"))
            bad = next((o.split("=", 1)[1] for o in overrides if o.startswith(group + "=")), None)
            raise ConfigError(group, f"no recipe file {group}/{bad}.yaml", allowed, got=bad) from None
        raise ConfigError("overrides", str(e)) from None
    except ConfigCompositionException as e:
        text = str(e) + " " + str(e.__cause__ or "")
        match = _OVERRIDE_KEY.search(text)
        if match:
            key = match.group(1)
            parent, _, leaf = key.rpartition(".")
            with initialize_config_dir(config_dir=RECIPES_DIR, version_base=None):
                base = OmegaConf.to_container(hydra_compose("train", overrides=[o for o in overrides
                                                                                 if not o.startswith(key)]))
            node = base
            for part in parent.split(".") if parent else []:
                node = node.get(part, {}) if isinstance(node, dict) else {}
            allowed = sorted(node) if isinstance(node, dict) else []
            raise ConfigError(key, "unknown key", allowed, got=leaf) from None
        raise ConfigError("overrides", text.strip()) from None
    except HydraException as e:  # e.g. a recipe file that is not a mapping
        raise ConfigError("recipes", " ".join(str(e).split())) from None
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:  # an interpolation that does not resolve
        raise ConfigError(getattr(e, "full_key", None) or "overrides", str(e).splitlines()[0]) from None


def load_config(overrides: list[str] = ()) -> RunConfig:
    """The validated config of recipes/train.yaml + command-line overrides (`parse_overrides` checks them
    first). An explicit `schedule.warmup_steps` wins over a recipe's `schedule.warmup_fraction`."""
    given = {o.key_or_group.lstrip("+~") for o in parse_overrides(list(overrides)) if not o.is_delete()}
    raw = compose(list(overrides))
    raw.pop("hydra", None)
    sched = raw.get("schedule")
    if isinstance(sched, dict) and "schedule.warmup_steps" in given:
        if "schedule.warmup_fraction" in given and sched.get("warmup_fraction") is not None:
            raise ConfigError("schedule.warmup_fraction", "give schedule.warmup_steps or schedule.warmup_fraction, "
                              "not both")
        sched["warmup_fraction"] = None  # the user's steps over the recipe's fraction
    elif isinstance(sched, dict) and "schedule.warmup_fraction" in given and sched.get("warmup_fraction") is not None:
        from .schedules import SCHEDULES
        spec = SCHEDULES.get(sched.get("name"))
        if spec is not None and "warmup_steps" not in spec.defaults:
            raise ConfigError("schedule.warmup_fraction", f"schedule {spec.name!r} has no warmup to size",
                              sorted(spec.defaults))
    return validate(_build(RunConfig, raw, ""))


def from_dict(raw: dict) -> RunConfig:
    return validate(_build(RunConfig, raw, ""))

