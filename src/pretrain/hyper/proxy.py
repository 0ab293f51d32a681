"""Proxy problems for reversible learning: a torch module as a function of one flat float64 vector, its
parameters ordered by unit (a unit = the parameters sharing one set of hyperparameters).

Units of a GPT (`gpt_units`): `layers` - embedding, block.0 ... block.{L-1}, final (norm, untied head): the
paper's per-layer hyperparameters; `groups` - the kinds the optimizer's parameter groups are built from
(`pretrain.optim.param_groups.classify`: embedding, hidden, vector, head), which a learned schedule can be
exported for (`pretrain.schedules.learned`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from .reversible import Problem

GRANULARITIES = ("layers", "groups")


def module_problem(model: nn.Module, unit_of: dict[str, str], train_loss: Callable, val_loss: Callable,
                   compute_dtype=torch.float64, max_norm: float | None = None) -> Problem:
    """A Problem over `model`'s trainable parameters. unit_of: parameter name -> unit; train_loss(model_call, t)
    and val_loss(model_call) get `model_call(*args, **kw)`, the model evaluated at the flat vector's
    parameters (in `compute_dtype`). x_init is the model's current initialization."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    units = list(dict.fromkeys(unit_of[n] for n, _ in named))  # first-seen order
    order = sorted(named, key=lambda np_: units.index(unit_of[np_[0]]))
    names = [n for n, _ in order]
    shapes = [p.shape for _, p in order]
    numels = [p.numel() for _, p in order]
    sizes = [sum(p.numel() for n, p in order if unit_of[n] == u) for u in units]
    x_init = torch.cat([p.detach().double().flatten() for _, p in order])
    model.requires_grad_(False)

    def call_at(x):
        parts = torch.split(x.to(compute_dtype), numels)
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        return lambda *a, **kw: functional_call(model, params, a, kw)

    return Problem(units, sizes, x_init, lambda x, t: train_loss(call_at(x), t), lambda x: val_loss(call_at(x)),
                   max_norm)


def gpt_units(model: nn.Module, granularity: str) -> dict[str, str]:
    """Parameter name -> unit for the GPT of pretrain.model (see the module doc)."""
    if granularity == "groups":
        from ..optim.param_groups import classify
        return classify(model)
    if granularity != "layers":
        from ..errors import ConfigError
        raise ConfigError("granularity", f"unknown granularity {granularity!r}", GRANULARITIES, got=granularity)
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("model.layers."):
            out[name] = "block." + name.split(".")[2]
        elif "embed" in name:
            out[name] = "embedding"
        else:
            out[name] = "final"
    return out


def gpt_problem(overrides: list[str], granularity: str = "groups", val_batches: int = 4,
                compute_dtype=torch.float32):
    """The tiny GPT of a recipe (Hydra overrides, e.g. model.d_model=64) on its corpus: step t's batch is the
    recipe's global batch t (all micro-batches), the validation loss is the mean over the first `val_batches`
    validation batches. Returns (problem, cfg, model)."""
    from accelerate.utils import set_seed

    from ..build import build_model
    from ..config import load_config
    from ..data import build_data

    cfg = load_config(list(overrides))
    set_seed(cfg.seed)
    tokenizer, loader, val = build_data(cfg, rank=0, world=1, log=lambda *_: None)
    set_seed(cfg.seed)
    model = build_model(cfg, len(tokenizer), tokenizer.eos_token_id)
    accum = cfg.train.global_batch_size // cfg.train.micro_batch_size
    cache: dict[int, torch.Tensor] = {}

    def batch(t):
        if t not in cache:
            cache[t] = torch.cat([loader.micro_batch(t, i) for i in range(accum)])
        return cache[t]

    vals = [b for b in val[:val_batches]]

    def train_loss(call, t):
        b = batch(t)
        return call(input_ids=b, labels=b).loss

    def val_loss(call):
        return sum(call(input_ids=b, labels=b).loss for b in vals) / len(vals)

    if cfg.clip.policy not in ("norm", "none"):
        from ..errors import ConfigError
        raise ConfigError("clip.policy", "reversible training clips by the global norm or not at all",
                          ["norm", "none"], got=cfg.clip.policy)
    max_norm = cfg.clip.max_norm if cfg.clip.policy == "norm" else None
    problem = module_problem(model, gpt_units(model, granularity), train_loss, val_loss, compute_dtype, max_norm)
    return problem, cfg, model


def mlp_problem(seed: int = 0, n_in: int = 8, hidden: int = 16, n_out: int = 3, batch: int = 32,
                n_batches: int = 8, max_norm: float | None = None) -> Problem:
    """A float64 tanh MLP on a fixed synthetic classification task (tests, --quick): units layer.0, layer.1."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    teacher = torch.randn(n_in, n_out, generator=gen, dtype=torch.float64)
    xs = torch.randn(n_batches + 1, batch, n_in, generator=gen, dtype=torch.float64)
    ys = (xs @ teacher).argmax(-1)
    unit_of = {n: "layer." + ("0" if n.startswith("0.") else "1") for n, _ in model.named_parameters()}

    def train_loss(call, t):
        i = t % n_batches
        return nn.functional.cross_entropy(call(xs[i]), ys[i])

    def val_loss(call):
        return nn.functional.cross_entropy(call(xs[n_batches]), ys[n_batches])

    return module_problem(model, unit_of, train_loss, val_loss, max_norm=max_norm)
