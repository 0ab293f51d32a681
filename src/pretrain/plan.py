"""Plan a run before launching it: memory per GPU for each sharding strategy, the largest micro batch that fits,
throughput, wall time and cost (`python -m pretrain.tools.plan`; `train.py` runs `launch_check` on a GPU).

Memory per GPU, in bytes, with P parameters (per kind: embedding, hidden, head, vector), N GPUs, s_k the optimizer
state bytes per parameter of kind k that the optimizer's spec declares (`OptimizerSpec.state_bytes`, at the
recipe's hyperparameters; S = sum_k s_k P_k), L the parameters of the largest layer (the embedding, an untied
head, or one block), bf16 mixed precision as the launch configs run it:

  strategy  parameters                  gradients                optimizer state
  ddp       4P (fp32; autocast casts)   4P (fp32)                S
  zero1     2P (bf16) + 4P/N (fp32)     2P (bf16) + 4P/N (fp32)  S/N
  zero2     2P (bf16) + 4P/N (fp32)     (2P + 4P)/N              S/N
  zero3     2P/N + 4P/N + 4L (gathered) 4P/N                     S/N
  fsdp      4P/N + 4L (gathered bf16 params and grads of one unit)   4P/N   S/N

For AdamW (S = 8P) zero2 is DeepSpeed's 2P + 18P/N and zero3 its 4L + 18P/N
(`estimate_zero{2,3}_model_states_mem_needs`, no offload; tests/test_plan.py). Activations: the exact
bytes-saved-for-backward formula of this GPT (`model.activations.activation_bytes`, bf16, with or without
activation checkpointing; under DDP's autocast with autocast's bf16 weight copies), plus the larger transient of
the loss's logits and a checkpointed block's recompute. Temporary buffers: DDP's gradient buckets (a copy of the fp32 gradients), DeepSpeed's
communication buckets (`BUCKET_ELEMENTS` bf16 elements each for reduce and all-gather), one fp32 temporary per
(local) parameter in a foreach optimizer step plus the spec's `temp_bytes`, and `RESERVED` for the CUDA context
and allocator slack. A plan fits when the sum is at most the GPU's memory.

Throughput: tokens/s = MFU x peak FLOP/s x N / FLOPs per token (`model.flops_per_token`, the loop's MFU metric);
wall time = the run's tokens / tokens/s; cost = GPU-hours x price.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError, check_number
from .hardware import GiB, GPU, gpu_named

STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
RESERVED = 2 * GiB  # CUDA context, NCCL and allocator slack
BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's default reduce_bucket_size and allgather_bucket_size (elements)


def param_counts(model_config) -> dict:
    """Parameters per kind (param_groups.KINDS), the total and the largest layer, from a GPTConfig."""
    kinds = model_config.params_by_kind()
    return {"kinds": kinds, "total": sum(kinds.values()),
            "largest_layer": max(kinds["embedding"], model_config.block_params())}


def model_state_bytes(strategy: str, total: int, largest_layer: int, gpus: int, state: float) -> dict:
    """Bytes per GPU of parameters, gradients and optimizer state (`state`: total optimizer state bytes, S)."""
    P, N, L = total, gpus, largest_layer
    table = {
        "ddp": (4 * P, 4 * P, state),
        "zero1": (2 * P + 4 * P / N, 2 * P + 4 * P / N, state / N),
        "zero2": (2 * P + 4 * P / N, 6 * P / N, state / N),
        "zero3": (6 * P / N + 4 * L, 4 * P / N, state / N),
        "fsdp": (4 * P / N + 4 * L, 4 * P / N, state / N),
    }
    if strategy not in table:
        raise ConfigError("strategy", f"unknown strategy {strategy!r}", STRATEGIES, got=strategy)
    params, grads, opt = table[strategy]
    return {"parameters": params, "gradients": grads, "optimizer": opt}


def _temporaries(strategy: str, total: int, gpus: int, temp_per_param: float) -> float:
    updated = total if strategy == "ddp" else total / gpus  # the parameters this GPU's optimizer step updates
    comm = 4 * total if strategy == "ddp" else 0 if strategy == "fsdp" else 2 * 2 * BUCKET_ELEMENTS
    return comm + (4 + temp_per_param) * updated + RESERVED


@dataclass
class Plan:
    recipe: str
    strategy: str
    gpu: str
    gpus: int
    micro_batch: int
    memory: dict  # bytes per GPU: parameters, gradients, optimizer, activations, temporaries, total
    available: int
    max_micro_batch: int  # the largest micro batch that fits (0: none)
    tokens_per_s: float
    hours: float
    cost: float | None
    checkpointing: bool

    @property
    def fits(self) -> bool:
        return self.memory["total"] <= self.available

    def as_dict(self) -> dict:
        return {**self.__dict__, "fits": self.fits}


def plan_run(cfg, *, gpus: int, gpu: GPU | str, strategy: str, mfu: float = 0.4, price_per_gpu_hour=None,
             checkpointing: bool | None = None) -> Plan:
    """The plan of a validated recipe on `gpus` x `gpu` under `strategy` (see the module doc)."""
    from .build import model_config
    from .config import optimizer_hparams
    from .model import flops_per_token
    from .model.activations import activation_bytes
    from .optim import get_spec

    gpu = gpu_named(gpu) if isinstance(gpu, str) else gpu
    check_plan_inputs(cfg, gpus, mfu)
    if strategy not in STRATEGIES:
        raise ConfigError("strategy", f"unknown strategy {strategy!r}", STRATEGIES, got=strategy)
    mc = model_config(cfg, vocab_size=cfg.data.vocab_size)
    checkpointing = mc.activation_checkpointing if checkpointing is None else checkpointing
    counts = param_counts(mc)
    spec = get_spec(cfg.optim["name"])
    per_kind = spec.state_bytes_per_kind(optimizer_hparams(cfg))
    state = sum(per_kind[k] * n for k, n in counts["kinds"].items())
    mem = model_state_bytes(strategy, counts["total"], counts["largest_layer"], gpus, state)
    mem["temporaries"] = _temporaries(strategy, counts["total"], gpus, spec.temp_bytes)
    t = cfg.train

    autocast = strategy == "ddp"  # fp32 parameters under bf16 autocast; DeepSpeed and FSDP hold bf16 parameters

    def activations(micro_batch: int) -> float:
        a = activation_bytes(mc, micro_batch, t.seq_len, dtype_bytes=2, checkpointing=checkpointing,
                             autocast=autocast)
        # saved tensors + autocast's bf16 weight copies + the larger transient: the loss's logits or a recompute
        return a["total"] + a.get("weight_copies", 0) + max(a.get("head_peak", 0), a.get("recompute_peak", 0))

    mem["activations"] = activations(t.micro_batch_size)
    fixed = mem["parameters"] + mem["gradients"] + mem["optimizer"] + mem["temporaries"]
    mem["total"] = fixed + mem["activations"]
    per_sample = activations(2) - activations(1)  # activations are affine in the micro batch
    max_mb = max(0, int((gpu.memory - fixed - (activations(1) - per_sample)) // per_sample))
    tokens = t.steps * t.tokens_per_step
    tps = mfu * gpu.peak_flops * gpus / flops_per_token(mc, t.seq_len)
    hours = tokens / tps / 3600
    cost = hours * gpus * price_per_gpu_hour if price_per_gpu_hour is not None else None
    return Plan(cfg.recipe, strategy, gpu.key, gpus, t.micro_batch_size, mem, gpu.memory, max_mb, tps, hours, cost,
                checkpointing)


def check_plan_inputs(cfg, gpus: int, mfu: float) -> None:
    from .config import world_size_check

    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ConfigError("gpus", f"must be a positive integer, got {gpus!r}")
    t = cfg.train
    if t.global_batch_size % gpus:
        raise ConfigError("gpus", f"{gpus} GPUs do not divide train.global_batch_size ({t.global_batch_size}); "
                          f"use a divisor of it")
    world_size_check(cfg, gpus)  # the global batch splits into micro batches on every GPU
    check_number("mfu", mfu, lo=0.0, hi=1.0, lo_open=True)


def suggestion(cfg, plan: Plan, **kw) -> str:
    """What would fit instead: a smaller micro batch (dividing the per-GPU batch), activation checkpointing, or
    another strategy."""
    per_gpu = cfg.train.global_batch_size // plan.gpus
    smaller = [b for b in range(min(plan.max_micro_batch, per_gpu), 0, -1) if per_gpu % b == 0]
    if smaller:
        return f"train.micro_batch_size={smaller[0]} fits"
    if not plan.checkpointing:
        ck = plan_run(cfg, gpus=plan.gpus, gpu=plan.gpu, strategy=plan.strategy, checkpointing=True, **kw)
        if ck.fits:
            return "model.activation_checkpointing=true fits"
    for strategy in STRATEGIES:
        other = plan_run(cfg, gpus=plan.gpus, gpu=plan.gpu, strategy=strategy, **kw)
        if other.fits:
            return f"{strategy} fits ({other.memory['total'] / GiB:.1f} GiB)"
    return "no strategy fits on this many GPUs: use more GPUs or a smaller model"


def launch_check(cfg, *, gpu: GPU, gpus: int, strategy: str) -> Plan:
    """Stop before building anything when the recipe does not fit: one line, what does not fit, by how much and
    what would (train.ignore_plan=true launches anyway)."""
    plan = plan_run(cfg, gpus=gpus, gpu=gpu, strategy=strategy)
    if not plan.fits and not cfg.train.ignore_plan:
        over = (plan.memory["total"] - plan.available) / GiB
        raise ConfigError("plan", f"{cfg.recipe} does not fit {gpus} x {gpu.key} under {strategy}: "
                          f"{plan.memory['total'] / GiB:.1f} GiB per GPU needed, {plan.available / GiB:.1f} "
                          f"available ({over:.1f} GiB over); {suggestion(cfg, plan)}; "
                          "train.ignore_plan=true launches anyway")
    return plan
