"""Checkpoints: `run_dir/checkpoints/step_<N>/` holds accelerate's state (model, optimizer, RNG of every rank;
sharded under DeepSpeed/FSDP), the model in Hugging Face format (`model/`, safetensors), and
`trainer_state.json` (step, schedule state, data position of every rank, config).

A checkpoint is written to `step_<N>.tmp` and renamed when complete, so a crash never leaves a half
checkpoint that `resume=auto` would pick; only the oldest complete checkpoints beyond `keep` are pruned.
"""
from __future__ import annotations

import json
import os
import re
import shutil

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


def save_checkpoint(accelerator, model, run_dir: str, step: int, state: dict, data_state: dict,
                    keep: int = 0) -> str:
    """Collective: every rank calls it. Returns the checkpoint directory."""
    final = checkpoint_dir(run_dir, step)
    tmp = final + ".tmp"
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    with open(os.path.join(tmp, f"data_state_rank{accelerator.process_index}.json"), "w") as f:
        json.dump(data_state, f)
    full_state = accelerator.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards: collective
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(os.path.join(tmp, "model"), state_dict=full_state,
                                                        safe_serialization=True)
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(state, f, indent=1)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep > 0:
            for _, old in list_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str) -> tuple[dict, dict]:
    """Restore accelerate's state from `path`; returns (trainer_state, this rank's data state)."""
    accelerator.load_state(path)
    with open(os.path.join(path, "trainer_state.json")) as f:
        state = json.load(f)
    with open(os.path.join(path, f"data_state_rank{accelerator.process_index}.json")) as f:
        data_state = json.load(f)
    return state, data_state
