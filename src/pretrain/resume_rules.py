"""What may change when a run continues from a checkpoint, and the run directory's record of what ran.

A checkpoint records the resolved config it was trained with (`trainer_state.json`, "config"). On resume the
new config is compared with it, key by key (flattened: `optim.lr`, `model.d_model`, ...):

- identity keys (`IDENTITY`: the model's shape, the tokenizer and data, the sequence length and batch, the
  optimizer's and schedule's names, the parametrization, the seed): a difference is refused with one line listing
  the keys. To start something new from a checkpoint, branch: `train.init_from=<checkpoint dir>` in a new run
  directory (a WSD cooldown off a constant-lr run); a branch may change anything but the model's shape and the
  tokenizer (`BRANCH_IDENTITY`).
- training keys (`OVERRIDABLE`: the optimizer's hyperparameters, the schedule's keywords, clipping, the run
  length): refused too, unless `resume_overrides=true`; then they are applied: the resumed optimizer's parameter
  groups take the new hyperparameters (as the new config builds them, per group), the schedule is the new one,
  and the log's `lr` is read from the optimizer.
- everything else (logging, evaluation and checkpoint cadence, micro batch, precision, compile flags, paths)
  may change freely.

`config.yaml` is written once, when a new run has started (after the model, data and any checkpoint loaded); a
resumed or branched run appends an entry to `config_history.jsonl` (step, checkpoint, the changed keys).
"""
from __future__ import annotations

import json
import os
import time

from .errors import ConfigError

IDENTITY = ("model.", "data.source", "data.paths", "data.hub_name", "data.hub_config", "data.split",
            "data.text_field", "data.tokenizer", "data.vocab_size", "data.val_fraction", "data.val_docs",
            "data.split_seed", "data.max_bytes", "train.seq_len", "train.global_batch_size", "train.batch_ramp",
            "optim.name", "schedule.name", "scaling.", "seed")
FREE_IN_IDENTITY = ("model.activation_checkpointing",)  # memory only: the same computation
OVERRIDABLE = ("optim.", "schedule.", "clip.", "train.steps")
BRANCH_IDENTITY = ("model.", "data.tokenizer", "data.vocab_size")


def flatten(d: dict) -> dict:
    """`section.key` for the config's sections (model, train, optim, ...), top-level keys as they are; a value that
    is itself a mapping (train.batch_ramp) stays one value."""
    out = {}
    for k, v in d.items():
        out.update({f"{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
    return out


def _is(key: str, patterns) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def with_optimizer_defaults(config: dict) -> dict:
    """The config with the optimizer hyperparameters it does not name set to the registry's defaults (what the run
    trains with): a checkpoint written before a hyperparameter existed (optim.fused) ran at its default, and a
    recipe that leaves one out runs at it, which is no change."""
    from .optim import OPTIMIZERS

    optim = config.get("optim")
    spec = OPTIMIZERS.get(optim.get("name")) if isinstance(optim, dict) else None
    if spec is None:
        return config
    missing = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.defaults.items() if k not in optim}
    return {**config, "optim": {**missing, **optim}}  # tuples as lists: a config's sequences are lists


def changes(old: dict, new: dict) -> dict[str, tuple]:
    """{key: (checkpoint's value, new value)} for every flattened key that differs (missing = None; an optimizer
    hyperparameter a config does not name is its default)."""
    a, b = flatten(with_optimizer_defaults(old)), flatten(with_optimizer_defaults(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _listing(diff: dict) -> str:
    return ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in diff.items())


def check(old: dict, new: dict, *, branch: bool, overrides: bool, source: str) -> dict[str, tuple]:
    """The changes a resume (or, `branch`, a train.init_from) may apply; ConfigError (field `resume`, or
    `train.init_from` for a branch) listing the keys otherwise."""
    diff = changes(old, new)
    if branch:
        bad = {k: v for k, v in diff.items() if _is(k, BRANCH_IDENTITY) and not _is(k, FREE_IN_IDENTITY)}
        if bad:
            raise ConfigError("train.init_from", f"the checkpoint {source} has another model or tokenizer: "
                              f"{_listing(bad)}")
        return diff
    identity = {k: v for k, v in diff.items() if _is(k, IDENTITY) and not _is(k, FREE_IN_IDENTITY)}
    if identity:
        raise ConfigError("resume", f"the checkpoint {source} was trained as another run: {_listing(identity)}; "
                          "resume it with its own config, or branch a new run_dir with train.init_from=<checkpoint>")
    training = {k: v for k, v in diff.items() if _is(k, OVERRIDABLE)}
    if training and not overrides:
        raise ConfigError("resume", f"changed from the checkpoint {source}: {_listing(training)}; pass "
                          "resume_overrides=true to apply them to the resumed run, or drop them")
    return diff


def apply_optimizer_overrides(optimizer, fresh_groups: list[dict], diff: dict) -> list[str]:
    """After loading a checkpoint into `optimizer`: the changed optimizer hyperparameters (`optim.<key>`), as the
    new config built them per group (`fresh_groups`: the groups' values before loading), replace the
    checkpoint's. Returns the group keys set."""
    from .optim import unwrap

    keys = {k.split(".", 1)[1] for k in diff if k.startswith("optim.") and k != "optim.name"}
    group_keys = {"lr": "initial_lr"}  # the schedule multiplies initial_lr every step
    groups = unwrap(optimizer).param_groups
    if len(groups) != len(fresh_groups):
        raise ConfigError("resume", f"the checkpoint's optimizer has {len(groups)} parameter groups, this config "
                          f"builds {len(fresh_groups)}")
    applied = []
    for key in sorted(keys):
        name = group_keys.get(key, key)
        for g, fresh in zip(groups, fresh_groups):
            if name in fresh:
                g[name] = fresh[name]
                if name not in applied:
                    applied.append(name)
    return applied


def record(run_dir: str, cfg_dict: dict, *, step: int, source: str | None, diff: dict) -> None:
    """config.yaml for a run that has started (written once); a history entry for every resume or branch."""
    from omegaconf import OmegaConf

    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        OmegaConf.save(OmegaConf.create(cfg_dict), path)
    if source is not None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": step, "checkpoint": source,
                 "changes": {k: list(v) for k, v in diff.items()}}
        with open(os.path.join(run_dir, "config_history.jsonl"), "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")
