"""Malformed recipes fail fast, before any model or data is built, with one clear error naming the field and
what is allowed; nothing already in the run directory is touched."""
import os
import time

import pytest

from helpers import dump, run_cli
from pretrain.config import load_config
from pretrain.errors import ConfigError

CASES = [  # (overrides, field named in the message, a hint that must appear)
    (["optim=adamx"], "optim", "Did you mean 'adam"),
    (["optim.name=adamx"], "optim.name", "allowed: adafactor"),
    (["train.stepz=10"], "train.stepz", "Did you mean 'steps'"),
    (["optim.bta=0.9"], "optim.bta", "Did you mean 'betas'"),
    (["optim.lr=-1"], "optim.lr", "out of range"),
    (["optim.lr=inf"], "optim.lr", "out of range"),
    (["optim.betas=[0.9,1.0]"], "optim.betas[1]", "[0.0, 1.0)"),
    (["train.global_batch_size=10", "train.micro_batch_size=4"], "train.global_batch_size", "not divisible"),
    (["data=text_files"], "data.paths", "needs data.paths"),
    (["data=text_files", "data.paths=[/nonexistent/dir/*.txt]"], "data.paths", "no file or folder matches"),
    (["recipe=nope"], "recipe", "allowed: "),
    (["schedule=wsd", "schedule.decay_fraction=1.5"], "schedule.decay_fraction", "[0"),
    (["schedule.warmup_steps=1000", "train.steps=100"], "schedule.warmup_steps", "warmup"),
    (["schedule=wsd", "schedule.decay_shape=sqrt"], "schedule.decay_shape", "1-sqrt"),
    (["schedule=cosinus"], "schedule", "Did you mean 'cosine'"),
    (["train.precision=fp16"], "train.precision", "allowed: auto, fp32, bf16"),
    (["model.n_head=5"], "model.n_head", "must divide"),
    (["train.steps=abc"], "train.steps", "must be int"),
    (["log.wandb=maybe"], "log.wandb", "must be bool"),
    (["schedule=mpl"], "schedule.path", "schedule.path"),
    (["schedule=mpl", "schedule.path=/nonexistent/schedule.json"], "schedule.path", "does not exist"),
    (["clip.policy=zclip"], "clip.policy", "allowed: none, norm"),
    (["data.val_fraction=1.5"], "data.val_fraction", "out of range"),
    (["resume=/nonexistent/checkpoint"], "resume", "neither"),
    (["scaling.batch_lr_rule=sqrt"], "scaling.base_batch_size", "batch size the lr was tuned at"),
    (["optim=momentum", "optim.momentum=1.5"], "optim.momentum", "out of range"),
    (["model.d_model=0"], "model.d_model", "out of range"),
]


@pytest.mark.parametrize("overrides,field,hint", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_malformed_recipe_is_rejected_with_a_clear_message(overrides, field, hint):
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    text = str(err.value)
    assert text.startswith(field + ":") or f"{field}:" in text, text
    assert hint in text, text


def test_cli_fails_fast_and_keeps_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_10").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_10" / "trainer_state.json").write_text('{"step": 10}')
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    before = {p: open(p).read() for p in [run_dir / "metrics.jsonl", run_dir / "checkpoints/step_10/trainer_state.json"]}
    for bad in (["optim.lr=-1"], ["train.stepz=3"], []):  # [] : a valid recipe over an existing run without resume
        t0 = time.time()
        p = run_cli([f"run_dir={run_dir}"] + bad)
        assert p.returncode == 2, dump(p)
        assert p.stderr.strip().splitlines()[-1].startswith("config error: "), dump(p)
        assert "Traceback" not in p.stderr, dump(p)
        assert "data:" not in p.stdout + p.stderr  # nothing was built
        assert time.time() - t0 < 60
    assert sorted(os.listdir(run_dir)) == ["checkpoints", "metrics.jsonl"]
    assert {p: open(p).read() for p in before} == before
    assert "resume=auto" in p.stderr
