"""The loop end to end on the embedded corpus: loss falls, the run directory contract, a final/ directory that
plain transformers loads and generates from, exact resume, WSD branching, cached tokenization, W&B offline."""
import os
import shutil
import subprocess
import sys

import pytest

from helpers import SMALL, env, rows, train_inprocess

CONTRACT = {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s"}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "base"
    summary, _ = train_inprocess([f"run_dir={run_dir}", "train.steps=40", "train.eval_every=20", "train.save_every=20"])
    return run_dir, summary


def test_validation_loss_falls_and_run_directory_contract(base_run):
    run_dir, summary = base_run
    train, ev = rows(run_dir), rows(run_dir, "eval")
    assert [r["step"] for r in ev] == [0, 20, 40]
    assert ev[-1]["val_loss"] < ev[0]["val_loss"] - 0.5, ev
    assert all(CONTRACT <= set(r) for r in train)
    assert [r["step"] for r in train] == list(range(1, 41))
    assert train[-1]["tokens"] == 40 * 8 * 64
    assert all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in train)
    assert os.path.exists(run_dir / "config.yaml")
    from omegaconf import OmegaConf
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.train.steps == 40 and saved.optim.name == "adamw" and saved.recipe == "tiny"
    for step in (20, 40):
        ck = run_dir / "checkpoints" / f"step_{step}"
        assert (ck / "model.safetensors").exists() and (ck / "trainer_state.json").exists()
        assert (ck / "manifest.json").exists() and not (ck / "model").exists()  # the weights once
        assert (ck / "data_state_rank0.json").exists()
    assert summary["val_loss"] == pytest.approx(ev[-1]["val_loss"])


def test_final_loads_with_plain_transformers_and_generates(base_run):
    run_dir, _ = base_run
    code = f"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
m = AutoModelForCausalLM.from_pretrained({str(run_dir / 'final')!r})
t = AutoTokenizer.from_pretrained({str(run_dir / 'final')!r})
assert not any(k.startswith('pretrain') for k in sys.modules), 'pretrain was imported'
x = t('import os\\ndef ', return_tensors='pt')
y = m.generate(**x, max_new_tokens=12, do_sample=False)
print(type(m).__name__, y.shape[1] - x['input_ids'].shape[1], repr(t.decode(y[0])))
"""
    e = env()
    e["PYTHONPATH"] = ""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, cwd="/")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith("LlamaForCausalLM 12"), p.stdout


def test_exported_llama_matches_our_model(base_run):
    import torch
    from transformers import AutoModelForCausalLM

    from pretrain.model import GPT
    run_dir, _ = base_run
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from pretrain.build import model_config
    from pretrain.config import from_dict
    cfg = from_dict(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")))
    ours = GPT(model_config(cfg, AutoModelForCausalLM.from_pretrained(run_dir / "final").config.vocab_size))
    missing, unexpected = ours.load_state_dict(load_file(run_dir / "checkpoints" / "step_40" / "model.safetensors"),
                                               strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied: saved once
    ours.tie_weights()
    ours.eval()
    llama = AutoModelForCausalLM.from_pretrained(run_dir / "final").eval()
    x = torch.randint(0, ours.config.vocab_size, (2, 32))
    with torch.no_grad():
        assert torch.allclose(ours(x).logits, llama(x).logits, atol=1e-5)


def test_resume_continues_exactly(base_run, tmp_path):
    run_dir, _ = base_run
    branch = tmp_path / "resumed"
    (branch / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_dir / "checkpoints" / "step_20", branch / "checkpoints" / "step_20")
    train_inprocess([f"run_dir={branch}", "train.steps=40", "train.eval_every=20", "train.save_every=20",
                     "resume=auto"])
    a = {r["step"]: r for r in rows(run_dir)}
    b = {r["step"]: r for r in rows(branch)}
    assert sorted(b) == list(range(21, 41))
    for s in b:
        assert b[s]["loss"] == a[s]["loss"] and b[s]["lr"] == a[s]["lr"] and b[s]["grad_norm"] == a[s]["grad_norm"]
    assert rows(branch, "eval")[-1]["val_loss"] == rows(run_dir, "eval")[-1]["val_loss"]


@pytest.mark.parametrize("optim", ["sophia", "sf_adamw", "adam_hd"])
def test_resume_is_exact_for_stateful_optimizers(optim, tmp_path):
    """Hessian estimates (Sophia), train/eval parameter swaps (Schedule-Free), adapted lrs (Adam-HD)."""
    extra = [f"optim={optim}", "optim.lr=3e-3"] + (["optim.k=3"] if optim == "sophia" else []) + (
        ["schedule=constant"] if optim == "sf_adamw" else [])
    full = tmp_path / "full"
    train_inprocess([f"run_dir={full}", "train.steps=12", "train.eval_every=6", "train.save_every=6"] + extra)
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_6", part / "checkpoints" / "step_6")
    train_inprocess([f"run_dir={part}", "train.steps=12", "train.eval_every=6", "train.save_every=6",
                     "resume=auto"] + extra)
    a = {r["step"]: r for r in rows(full)}
    b = {r["step"]: r for r in rows(part)}
    assert sorted(b) == list(range(7, 13))
    assert [b[s]["loss"] for s in b] == [a[s]["loss"] for s in b]
    assert rows(part, "eval")[-1]["val_loss"] == rows(full, "eval")[-1]["val_loss"]


def test_wsd_cooldown_branches_from_a_stable_checkpoint(tmp_path):
    stable = tmp_path / "stable"
    train_inprocess([f"run_dir={stable}", "schedule=constant", "train.steps=16", "train.save_every=8",
                     "schedule.warmup_steps=2"])
    cool = tmp_path / "cooldown"
    train_inprocess([f"run_dir={cool}", "schedule=wsd", "train.steps=14", "schedule.warmup_steps=2",
                     "schedule.decay_steps=6", "schedule.decay_shape=linear", "schedule.min_lr_ratio=0.0",
                     f"train.init_from={stable / 'checkpoints' / 'step_8'}"])
    s, c = {r["step"]: r for r in rows(stable)}, {r["step"]: r for r in rows(cool)}
    assert sorted(c) == list(range(9, 15))
    assert c[9]["loss"] == s[9]["loss"]  # same model, optimizer state, data position and lr at the branch point
    peak = s[9]["lr"]
    assert [c[k]["lr"] for k in range(9, 15)] == pytest.approx([peak * (1 - q / 6) for q in range(6)])


def test_second_run_reuses_cached_tokenization(tmp_path):
    from helpers import CACHE
    from pretrain.config import load_config
    from pretrain.data import build_data
    cfg = load_config(SMALL + [f"run_dir={tmp_path}"])
    logs = []
    build_data(cfg, rank=0, world=1, log=logs.append)
    build_data(cfg, rank=0, world=1, log=logs.append)
    assert any("reusing cached tokenization" in m for m in logs[-1:]), logs
    assert os.path.isdir(os.path.join(CACHE, "tokens"))


def test_wandb_offline_run_records_group_tags_and_config(tmp_path):
    run_dir = tmp_path / "wb"
    train_inprocess([f"run_dir={run_dir}", "train.steps=3", "train.eval_every=0", "log.wandb=true",
                     "log.tags=[ablation]"])
    import time
    from pretrain.tracking import read_metrics
    assert read_metrics(run_dir)[-1]["step"] == 3
    # the offline run file holds the run's group (the recipe), tags and the full resolved config; W&B's service
    # process writes it asynchronously, so wait (up to 60 s) for it to be flushed
    needles = (b"tiny", b"optim:adamw", b"schedule:cosine", b"model:tiny", b"ablation", b"global_batch_size",
               b"micro_batch_size", b"warmup_steps")
    deadline, missing = time.time() + 60, needles
    while True:
        runs = [d for d in os.listdir(run_dir / "wandb") if d.startswith("offline-run-")] \
            if (run_dir / "wandb").is_dir() else []
        files = list((run_dir / "wandb" / runs[0]).glob("*.wandb")) if len(runs) == 1 else []
        data = files[0].read_bytes() if files else b""
        missing = [n for n in needles if n not in data]
        if (len(runs) == 1 and not missing) or time.time() > deadline:
            break
        time.sleep(1)
    assert len(runs) == 1, runs
    assert not missing, missing


def test_compiled_optimizer_step_in_the_loop_matches_eager(tmp_path):
    common = ["optim=lion", "optim.lr=3e-3", "train.steps=6", "train.eval_every=0"]
    train_inprocess([f"run_dir={tmp_path / 'eager'}", "train.compile_optimizer=never"] + common)
    train_inprocess([f"run_dir={tmp_path / 'compiled'}", "train.compile_optimizer=always"] + common)
    a, b = rows(tmp_path / "eager"), rows(tmp_path / "compiled")
    assert [r["step"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    assert [r["lr"] for r in b] == [r["lr"] for r in a]
