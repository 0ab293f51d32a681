"""Checkpoints: `run_dir/checkpoints/step_<N>/` holds accelerate's state (model, optimizer, RNG of every rank;
sharded under DeepSpeed/FSDP), the model in Hugging Face format (`model/`, safetensors), and
`trainer_state.json` (step, schedule state, data position of every rank, config).

A checkpoint is written to `step_<N>.tmp` and renamed when complete, so a crash never leaves a half
checkpoint that `resume=auto` would pick; only the oldest complete checkpoints beyond `keep` are pruned.
Its last file is `manifest.json`: the size and SHA-256 of every other file. `verify` checks it; `resume=auto`
(`latest_good_checkpoint`) skips a checkpoint that fails it, saying which file, and takes the newest that passes.
The model is stored once (accelerate's state); `model/` (Hugging Face format) only when asked (`hf_copy`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

MANIFEST = "manifest.json"

_STEP = re.compile(r"^step_(\d+)$")


def checkpoint_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "checkpoints", f"step_{step}")


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP.match(name)
        if m and os.path.exists(os.path.join(root, name, "trainer_state.json")):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(found)


def latest_checkpoint(run_dir: str) -> str | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                  if not (d == root and f == MANIFEST))


def write_manifest(path: str) -> None:
    files = {rel: {"bytes": os.path.getsize(os.path.join(path, rel)), "sha256": _sha256(os.path.join(path, rel))}
             for rel in _files(path)}
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump({"files": files}, f, indent=1)


def verify(path: str, world: int | None = None) -> str | None:
    """None if the checkpoint at `path` is complete and intact, else what is wrong (one line, naming the file).
    `world`: the processes that will read it (each needs its RNG and data-position files: accelerate skips a
    missing or unreadable RNG file with a log line, and the resume would then not be exact)."""
    manifest = os.path.join(path, MANIFEST)
    if os.path.exists(manifest):
        try:
            with open(manifest) as f:
                files = json.load(f)["files"]
        except (OSError, ValueError, KeyError) as e:
            return f"{manifest}: unreadable ({e})"
    else:  # written before manifests existed (complete: renamed from .tmp), checked for presence only
        files = {rel: None for rel in _files(path)}
    for rel, want in files.items():
        full = os.path.join(path, rel)
        if want is None:
            continue
        if not os.path.exists(full):
            return f"{full}: missing"
        size = os.path.getsize(full)
        if size != want["bytes"]:
            return f"{full}: {size} bytes, the manifest says {want['bytes']} (truncated or overwritten)"
        if _sha256(full) != want["sha256"]:
            return f"{full}: checksum differs from the manifest (corrupt)"
    for rank in range(world or 0):
        for name in (f"random_states_{rank}.pkl", f"data_state_rank{rank}.json"):
            if name not in files:
                return f"{os.path.join(path, name)}: missing (the checkpoint was written by fewer processes, " \
                       f"and resuming without it would not be exact)"
    return None


def latest_good_checkpoint(run_dir: str, world: int, log=print) -> str | None:
    """The newest checkpoint that passes `verify`; each one skipped is named in the log with its reason."""
    for _, path in reversed(list_checkpoints(run_dir)):
        problem = verify(path, world)
        if problem is None:
            return path
        log(f"warning: skipping checkpoint {path}: {problem}")
    return None


def save_checkpoint(accelerator, model, run_dir: str, step: int, state: dict, data_state: dict,
                    keep: int = 0, hf_copy: bool = False) -> str:
    """Collective: every rank calls it. Returns the checkpoint directory."""
    final = checkpoint_dir(run_dir, step)
    tmp = final + ".tmp"
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    with open(os.path.join(tmp, f"data_state_rank{accelerator.process_index}.json"), "w") as f:
        json.dump(data_state, f)
    if hf_copy:
        full_state = accelerator.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards: collective
        if accelerator.is_main_process:
            accelerator.unwrap_model(model).save_pretrained(os.path.join(tmp, "model"), state_dict=full_state,
                                                            safe_serialization=True)
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(state, f, indent=1)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_manifest(tmp)  # last: a checkpoint with a manifest was complete
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep > 0:
            for _, old in list_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_state(path: str) -> dict:
    with open(os.path.join(path, "trainer_state.json")) as f:
        return json.load(f)


def load_checkpoint(accelerator, path: str) -> tuple[dict, dict]:
    """Restore accelerate's state from `path`; returns (trainer_state, this rank's data state)."""
    accelerator.load_state(path)
    with open(os.path.join(path, f"data_state_rank{accelerator.process_index}.json")) as f:
        data_state = json.load(f)
    return read_state(path), data_state
