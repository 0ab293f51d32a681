"""Parameter groups, built in one place for every optimizer.

Each trainable parameter falls in exactly one kind:
  embedding  token (and position) embeddings            (no weight decay unless decay_embeddings)
  head       the output projection when it is not tied
  hidden     every other matrix (ndim >= 2)              (Muon's parameters; muP scales their lr)
  vector     biases and norm gains (ndim < 2)            (never weight decay)
A group is (kind, decayed?) and carries `kind`, `lr_mult`, `lr` (= base lr * lr_mult) and `weight_decay`.
Per-parameter `overrides` (muP / CompleteP, from `model/parametrization.py`) split the groups further: parameters
with the same kind, decay and overrides share a group; `lr_mult` multiplies the kind's multiplier, `wd_mult` the
weight decay, any other key (e.g. `eps`) is set on the group as given.
"""
from __future__ import annotations

from torch import nn

KINDS = ("embedding", "hidden", "head", "vector")


def classify(model: nn.Module) -> dict[str, str]:
    """Map each trainable parameter's name to its kind."""
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_id = id(head.weight) if head is not None else None
    kinds = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in embed_ids:
            kinds[name] = "embedding"
        elif id(p) == head_id:
            kinds[name] = "head"
        elif p.ndim < 2:
            kinds[name] = "vector"
        else:
            kinds[name] = "hidden"
    return kinds


def build_param_groups(model_or_params, *, lr, weight_decay: float, lr_multipliers: dict | None = None,
                       decay_embeddings: bool = False, overrides: dict[str, dict] | None = None) -> list[dict]:
    """Parameter groups for a module, or pass-through groups for plain parameters / group dicts."""
    lr_multipliers = dict(lr_multipliers or {})
    for k in lr_multipliers:
        if k not in KINDS:
            from ..errors import ConfigError
            raise ConfigError("lr_multipliers", f"unknown parameter kind {k!r}", KINDS, got=k)
    if not isinstance(model_or_params, nn.Module):
        items = list(model_or_params)
        if items and isinstance(items[0], dict):
            groups = [dict(g) for g in items]
        else:
            groups = [{"params": items}]
        for g in groups:
            g["params"] = list(g["params"])
            g.setdefault("weight_decay", weight_decay)
            g.setdefault("lr_mult", 1.0)
            if lr is not None:
                g.setdefault("lr", lr * g["lr_mult"])
            g.setdefault("kind", "hidden")
        return groups

    kinds = classify(model_or_params)
    params = dict(model_or_params.named_parameters())
    overrides = overrides or {}
    buckets: dict[tuple, list] = {}
    for name, kind in kinds.items():
        decay = kind in ("hidden", "head") or (kind == "embedding" and decay_embeddings)
        extra = tuple(sorted(overrides.get(name, {}).items()))
        buckets.setdefault((kind, decay, extra), []).append(params[name])
    groups = []
    for (kind, decay, extra), ps in buckets.items():
        extra = dict(extra)
        mult = float(lr_multipliers.get(kind, 1.0)) * float(extra.pop("lr_mult", 1.0))
        wd = weight_decay * float(extra.pop("wd_mult", 1.0)) if decay else 0.0
        g = {"params": ps, "kind": kind, "lr_mult": mult, "weight_decay": wd, **extra}
        if lr is not None:
            g["lr"] = lr * mult
        groups.append(g)
    # every trainable parameter in exactly one group
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model_or_params.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable, "parameter groups must partition the trainable parameters"
    return groups
