"""Hugging Face Trainer integration: `TrainingArguments` and `Trainer`, drop-in for the transformers classes,
that also accept every registered name in `optim=` (`pretrain.optim.OPTIMIZERS`) and `lr_scheduler_type=`
(`pretrain.schedules.SCHEDULES`).

    from pretrain.hf import Trainer, TrainingArguments
    args = TrainingArguments(output_dir="out", optim="lion", optim_args="betas=0.95|0.98",
                             lr_scheduler_type="wsd", lr_scheduler_kwargs={"decay_fraction": 0.2},
                             learning_rate=3e-4, weight_decay=0.1, max_steps=1000)
    Trainer(model=model, args=args, train_dataset=ds).train()

Names. A transformers name (`OptimizerNames`, `SchedulerType`) keeps its transformers meaning, so existing
scripts run unchanged; a registry name is ours only where transformers would reject it ("adopt", "lion",
"muon", "wsd", "power", ...). Names in both ("sgd", "adagrad", "rmsprop", "adafactor", "adamw_8bit";
"linear", "cosine", "constant", "inverse_sqrt") are transformers'; the prefix `pretrain:` always picks ours
("pretrain:adamw", "pretrain:cosine"). An unknown name fails when the arguments are built, listing both sets.

Optimizer hyperparameters (ours). `optim_args` is a dict or transformers' "k=v,k2=v2" string; values are
Python literals (`1e-3`, `10`, `true`/`false`, `none`, `(0.9,0.95)`, `[0.9,0.95]`) or tuples written
`0.9|0.95`; anything else stays a string. `learning_rate` and `weight_decay` map onto `lr` and `weight_decay`
unless `optim_args` sets them; every other hyperparameter keeps the registry's (paper's) default, and
`adam_beta1/2`, `adam_epsilon` are not used (write `betas=...` in `optim_args`). Parameter groups are ours
(no weight decay on norms, biases, embeddings). Hyperparameters are validated when the arguments are built.

Schedules (ours). `build_schedule(name, peak_lr=<optimizer lr>, total_steps=<max_steps>,
warmup_steps=args.get_warmup_steps(max_steps), **lr_scheduler_kwargs)` (a `warmup_steps` in
`lr_scheduler_kwargs` wins), applied as `LambdaLR(optimizer, lambda step: schedule.factor(step))`, so each
parameter group keeps its own base lr.

The step protocol. What an optimizer's step needs is declared on its spec (`pretrain.optim.Needs`; an
optimizer passed in `Trainer(optimizers=...)` may declare `pretrain_needs`, or `requires_closure = True`) and
carried out by `pretrain.step.StepProtocol`, the same code the training loop runs, through torch's optimizer
step hooks (so it works whatever wraps the optimizer: accelerate, DDP, FSDP). `TrainerEngine` tells it how
this Trainer runs a micro-batch (the step's batch is recorded by `get_batch_samples`, called once per
optimizer step by transformers' loop):
  * closure: `step(closure)`; `closure()` is the loss on this optimizer step's batch (all its micro-batches,
    averaged over processes) at the current parameters, without a graph; `closure(backward=True)` zeroes the
    gradients and recomputes loss and gradients.
  * Hessian estimate (Sophia): after every k-th optimizer step, the declared loss of the step's logits
    (`gnb_sampled_loss`, averaged over micro-batches) is backpropagated and `opt.update_hessian()` called.
  * tokens per step: a parameter group with `bs=None` (Sophia) gets the total train batch size (per device x
    accumulation x data-parallel world) x the sequence length of the first batch, at step 1.
  * train/eval modes (Schedule-Free): transformers already calls `optimizer.train()` in each training step
    and `optimizer.eval()` for evaluation; here the optimizer is also put in eval mode for `save_model`
    (checkpoints) and at the end of `train()`, so the model holds the weights one evaluates.

Clipping. `clip_policy` (with `clip_kwargs`) runs one of the loop's policies (`pretrain.clipping`) in place of
transformers' `max_grad_norm` clipping, through its `_clip_grad_norm` / `_get_grad_norm` hooks; training log rows
get `clip_threshold`, `clipped`, `clip_fraction`. The policy's statistics restart when a Trainer run resumes.

Limitations: closure and Hessian optimizers are rejected with DeepSpeed (its engine steps the optimizer on
its own flat partitions) and with fp16 (the gradient scaler does not support closures and would scale the
recomputed gradients), Muon with DeepSpeed (ZeRO flattens its matrices); use bf16 or fp32, DDP or FSDP.
Controller schedules (AutoLRS) are rejected: their lr search needs the training loop's snapshots (train.py).
A closure re-runs the model in training mode: models with dropout give a line search a different mask per
call (use dropout 0 for line-search optimizers).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field

import torch
import transformers
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from .errors import ConfigError
from .optim import OPTIMIZERS, build_optimizer, get_spec, needs_of, unwrap, validate_hparams
from .schedules import SCHEDULES, build_schedule, validate_kwargs
from .schedules import get_spec as get_schedule_spec
from .step import StepProtocol

PREFIX = "pretrain:"

__all__ = ["TrainingArguments", "Trainer", "parse_optim_args", "PREFIX"]


def _is_transformers_name(enum_cls, value) -> bool:
    try:
        enum_cls(value)
        return True
    except ValueError:
        return False


def _registry_name(value, registry: dict, enum_cls, field: str, what: str) -> str | None:
    """Our registry name for `value`, or None when transformers handles it; unknown names raise."""
    if isinstance(value, str) and value.startswith(PREFIX):
        name = value[len(PREFIX):]
        if name not in registry:
            raise ConfigError(field, f"unknown {what} {value!r}", [PREFIX + n for n in sorted(registry)], got=value)
        return name
    if _is_transformers_name(enum_cls, value):
        return None
    if value in registry:
        return value
    allowed = [e.value for e in enum_cls] + sorted(set(registry) - {e.value for e in enum_cls})
    raise ConfigError(field, f"unknown {what} {value!r} (transformers' names, then pretrain's; prefix "
                      f"'{PREFIX}' picks pretrain's where both have a name)", allowed, got=value)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses / brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _parse_value(raw: str):
    if "|" in raw:
        return tuple(_parse_value(r.strip()) for r in raw.split("|"))
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def parse_optim_args(value) -> dict:
    """`optim_args` as a dict: a dict as is, or "k=v,k2=v2" with literal values (see the module doc)."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    out = {}
    for item in _split_top_level(str(value)):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("optim_args", f"expected 'key=value' items separated by commas, got {item!r}")
        out[key.strip()] = _parse_value(raw.strip())
    return out


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """transformers.TrainingArguments whose `optim` / `lr_scheduler_type` also take pretrain's registry names."""

    # redeclared as plain strings so that HfArgumentParser (--optim adopt) does not restrict them to the enums
    optim: str = field(default=transformers.TrainingArguments.__dataclass_fields__["optim"].default, metadata={
        "help": "A transformers OptimizerNames value or a pretrain.optim.OPTIMIZERS name ('pretrain:<name>' "
                "picks ours where both have the name)."})
    lr_scheduler_type: str = field(default="linear", metadata={
        "help": "A transformers SchedulerType value or a pretrain.schedules.SCHEDULES name ('pretrain:<name>' "
                "picks ours where both have the name)."})
    optim_args: str | None = field(default=None, metadata={
        "help": "Optimizer keywords as 'k=v,k2=v2' (or a dict in Python); for pretrain's optimizers values are "
                "Python literals and 'a|b' is a tuple."})
    clip_policy: str | None = field(default=None, metadata={
        "help": "A pretrain.clipping policy (none, norm, value, percentile, zscore, agc) in place of "
                "transformers' max_grad_norm clipping; None keeps transformers'. norm clips at max_grad_norm."})
    clip_kwargs: dict | None = field(default=None, metadata={
        "help": "The policy's keywords (pretrain.config.ClipConfig: percentile, window, warmup_steps, z, beta, "
                "value, agc_lambda, agc_eps)."})

    def __post_init__(self):
        # transformers' __post_init__ turns both fields into enums: hand it placeholders for our names
        optim, schedule = self.optim, self.lr_scheduler_type
        ours_optim = _registry_name(optim, OPTIMIZERS, OptimizerNames, "optim", "optimizer")
        ours_schedule = _registry_name(schedule, SCHEDULES, SchedulerType, "lr_scheduler_type", "schedule")
        if ours_optim:
            self.optim = OptimizerNames.ADAMW_TORCH
        if ours_schedule:
            self.lr_scheduler_type = SchedulerType.CONSTANT
        super().__post_init__()
        if ours_optim:
            self.optim = optim
            self.optimizer_hparams()  # validate now
        elif isinstance(self.optim_args, dict):  # transformers' optimizers read a "k=v,..." string
            self.optim_args = ",".join(f"{k}={v}" for k, v in self.optim_args.items())
        if self.clip_policy is not None:
            self.clip_config()  # validate now
        if ours_schedule:
            self.lr_scheduler_type = schedule
            if get_schedule_spec(ours_schedule).controller:
                raise ConfigError("lr_scheduler_type", f"{ours_schedule!r} searches its lr with trial runs from "
                                  "model and optimizer snapshots, which only the training loop (train.py) takes; "
                                  "pick a schedule", sorted(n for n, sp in SCHEDULES.items() if not sp.controller))
            if self.max_steps > 0:
                self.build_schedule(self.max_steps)  # validate names and values now
            else:
                validate_kwargs(ours_schedule, self.schedule_kwargs(1))

    def clip_config(self):
        """The `clip_policy` as a ClipConfig (norm's threshold: max_grad_norm), validated."""
        import dataclasses

        from .clipping import POLICIES, check_clip
        from .config import ClipConfig

        if self.clip_policy not in POLICIES:
            raise ConfigError("clip_policy", f"unknown policy {self.clip_policy!r}", list(POLICIES),
                              got=self.clip_policy)
        kw = dict(self.clip_kwargs or {})
        names = [f.name for f in dataclasses.fields(ClipConfig) if f.name not in ("policy", "max_norm")]
        for k in kw:
            if k not in names:
                raise ConfigError(f"clip_kwargs.{k}", "unknown key", names, got=k)
        c = ClipConfig(policy=self.clip_policy, max_norm=self.max_grad_norm if self.max_grad_norm > 0 else 1.0, **kw)
        check_clip(c, prefix="clip_kwargs.")
        if self.deepspeed and c.policy not in ("none", "norm"):
            raise ConfigError("clip_policy", f"{c.policy!r}: DeepSpeed clips inside its engine, by the global norm "
                              "only", ["none", "norm"], got=c.policy)
        return c

    @property
    def registry_optimizer(self) -> str | None:
        """The pretrain registry name `optim` resolves to, or None for a transformers optimizer."""
        return _registry_name(self.optim, OPTIMIZERS, OptimizerNames, "optim", "optimizer")

    @property
    def registry_schedule(self) -> str | None:
        """The pretrain registry name `lr_scheduler_type` resolves to, or None for a transformers scheduler."""
        return _registry_name(self.lr_scheduler_type, SCHEDULES, SchedulerType, "lr_scheduler_type", "schedule")

    def optimizer_hparams(self) -> dict:
        """Keyword arguments for `build_optimizer(self.registry_optimizer, model, **hparams)` (validated)."""
        name = self.registry_optimizer
        hp = parse_optim_args(self.optim_args)
        defaults = get_spec(name).defaults
        for key, value in (("lr", self.learning_rate), ("weight_decay", self.weight_decay)):
            if key in defaults:
                hp.setdefault(key, value)
        validate_hparams(name, hp)
        return hp

    def schedule_kwargs(self, num_training_steps: int) -> dict:
        kw = dict(self.lr_scheduler_kwargs or {})
        if "warmup_steps" in get_schedule_spec(self.registry_schedule).defaults:
            kw.setdefault("warmup_steps", self.get_warmup_steps(num_training_steps))
        return kw

    def build_schedule(self, num_training_steps: int):
        """Our schedule over `num_training_steps`, peaking at the optimizer's lr."""
        peak = self.optimizer_hparams().get("lr", self.learning_rate) if self.registry_optimizer else \
            self.learning_rate
        return build_schedule(self.registry_schedule, peak_lr=peak, total_steps=num_training_steps,
                              **self.schedule_kwargs(num_training_steps))


class TrainerEngine:
    """The Trainer's side of the step protocol (`pretrain.step`): this optimizer step's micro-batches (recorded by
    `get_batch_samples`), its loss as transformers' `training_step` scales it, logits, backward, sync."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.seed, self.rank = trainer.args.seed, trainer.args.process_index

    def micro_batches(self):
        step = self.trainer._step_batches
        return None if step is None else step[0]

    def loss(self, inputs) -> torch.Tensor:
        tr, num_items = self.trainer, self.trainer._step_batches[1]
        with tr.compute_loss_context_manager():
            loss = tr.compute_loss(tr.model_wrapped, tr._prepare_inputs(inputs), num_items_in_batch=num_items)
        if tr.args.n_gpu > 1:
            loss = loss.mean()
        if not self._loss_is_scaled_for_ga(num_items):
            loss = loss / tr.current_gradient_accumulation_steps
        return loss

    def _loss_is_scaled_for_ga(self, num_items) -> bool:
        """The rule transformers' training_step applies before dividing by the accumulation steps."""
        tr = self.trainer
        if tr.loss_is_scaled_for_ga is not None:
            return tr.loss_is_scaled_for_ga
        return bool((tr.model_accepts_loss_kwargs and num_items is not None) or tr.compute_loss_func is not None)

    def logits(self, inputs):
        tr = self.trainer
        inputs = {k: v for k, v in tr._prepare_inputs(inputs).items() if k != "labels"}
        mask = inputs.get("attention_mask")
        with tr.compute_loss_context_manager():
            out = tr.model_wrapped(**inputs)
        return (out["logits"] if isinstance(out, dict) else out[0]), None if mask is None else mask.bool()

    def backward(self, share) -> None:
        self.trainer.accelerator.backward(share)

    def no_sync(self):
        return self.trainer.accelerator.no_sync(self.trainer.model_wrapped)

    def mean(self, value):
        return self.trainer.accelerator.reduce(value, "mean")

    def steps_done(self) -> int:
        return self.trainer.state.global_step

    def tokens_per_step(self) -> int:
        batches = self.micro_batches()
        return self.trainer.get_total_train_batch_size(self.trainer.args) * batches[0]["input_ids"].shape[-1]


class Trainer(transformers.Trainer):
    """transformers.Trainer that builds pretrain's optimizers and schedules and runs the step protocol
    (`pretrain.step`: closure, Hessian estimate, train/eval modes, tokens per step); see the module doc."""

    _step_batches = None  # (micro-batches, num_items_in_batch) of the current optimizer step
    _protocol = None  # the StepProtocol installed on the current optimizer

    # -- construction ----------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        name = getattr(self.args, "registry_optimizer", None)
        if self.optimizer is None and name is not None:
            self.optimizer = build_optimizer(name, self.model if model is None else model,
                                             **self.args.optimizer_hparams())
        opt = super().create_optimizer(model)
        self._install_protocol(opt)
        return opt

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and getattr(self.args, "registry_schedule", None) is not None:
            schedule = self.args.build_schedule(num_training_steps)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer,
                                                                  lambda step: schedule.factor(step))
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def _install_protocol(self, opt) -> None:
        opt = unwrap(opt)  # the torch optimizer itself (after a first train(), self.optimizer is accelerate's)
        if opt is None or (self._protocol is not None and self._protocol.optimizer is opt):
            return
        needs = needs_of(opt)
        for engine, used in (("deepspeed", self.is_deepspeed_enabled), ("fp16", self.args.fp16)):
            conflict = needs.engine_conflict(engine) if used else None
            if conflict:
                raise ConfigError("optim", f"{type(opt).__name__} {conflict}; use bf16/fp32 with DDP or FSDP")
        self._protocol = StepProtocol(opt, TrainerEngine(self))

    # -- the training loop's hooks ---------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._step_batches = (batch_samples, num_items) if batch_samples else None
        return batch_samples, num_items

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            self._step_batches = None
            if self._protocol is not None:
                self._protocol.eval_mode()

    # -- clipping (args.clip_policy): the loop's policies, through transformers' two gradient-norm hooks ---------
    _clip = _clip_record = None

    def _clip_grad_norm(self, model):
        if self.args.clip_policy is None:
            return super()._clip_grad_norm(model)
        return self._apply_clip(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if self.args.clip_policy is not None and grad_norm is None:  # max_grad_norm <= 0: no _clip_grad_norm call
            grad_norm = self._apply_clip(model)
        return super()._get_grad_norm(model, grad_norm)

    def _apply_clip(self, model) -> float:
        from .clipping import build_clip_policy

        if self._clip is None:
            self._clip = build_clip_policy(self.args.clip_config(), self.accelerator.unwrap_model(model))
        params = list(model.parameters())
        self._clip_record = self._clip(params, lambda max_norm: self.accelerator.clip_grad_norm_(params, max_norm))
        return self._clip_record["grad_norm"]

    def log(self, logs, *args, **kwargs):
        if self._clip_record is not None and "loss" in logs:  # a training row: the step's clipping record
            logs = {**logs, **{k: self._clip_record[k] for k in ("clip_threshold", "clipped", "clip_fraction")}}
        return super().log(logs, *args, **kwargs)

    def save_model(self, output_dir=None, _internal_call=False):
        if self._protocol is not None:
            self._protocol.eval_mode()  # the next training_step switches back (transformers calls optimizer.train())
        return super().save_model(output_dir, _internal_call)
