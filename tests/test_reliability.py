"""Reliability: interrupted runs resume exactly (SIGKILL inside gradient accumulation and during a checkpoint
write, SIGTERM to one process and to a 2-process job), non-finite steps are skipped and stop the run after K,
corrupt checkpoints are named and skipped, and a resume refuses (or, asked, applies) config changes."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT, SMALL, dump, env, rows, run_cli, train_inprocess

INTERRUPT = os.path.join(ROOT, "tests", "scripts", "interrupt.py")
RUN = SMALL + ["train.steps=10", "train.eval_every=5", "train.save_every=2", "train.keep_checkpoints=0"]


def interrupted(kind, at, args):
    return subprocess.run([sys.executable, INTERRUPT, kind, str(at)] + args, cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=600)


def last_rows(run_dir, kind="train"):
    """The last row logged for each step (a resumed run re-logs the steps after its checkpoint)."""
    return {r["step"]: r for r in rows(run_dir, kind)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    train_inprocess(RUN[len(SMALL):] + [f"run_dir={run_dir}"])
    return run_dir


def resume_inprocess(run_dir):
    """resume=auto in this process; what it logged."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from pretrain.config import load_config
    from pretrain.loop import train
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    said = []
    train(load_config(RUN + [f"run_dir={run_dir}", "resume=auto"]), log=said.append)
    return "\n".join(map(str, said))


def same_curve(a, b):
    ta, tb = last_rows(a), last_rows(b)
    assert sorted(ta) == sorted(tb) == list(range(1, 11))
    for s in ta:
        assert (ta[s]["loss"], ta[s]["grad_norm"], ta[s]["lr"]) == (tb[s]["loss"], tb[s]["grad_norm"], tb[s]["lr"]), s
    assert [r["val_loss"] for r in last_rows(a, "eval").values()] == \
        [r["val_loss"] for r in last_rows(b, "eval").values()]


@pytest.mark.parametrize("kind,at,resumes_from", [("micro", 5, 4), ("save", 6, 4)])
def test_sigkill_inside_accumulation_or_a_checkpoint_write_then_resume_is_exact(reference, tmp_path, kind, at,
                                                                               resumes_from):
    run_dir = tmp_path / "run"
    p = interrupted(kind, at, RUN + [f"run_dir={run_dir}"])
    assert p.returncode == -signal.SIGKILL, dump(p)
    if kind == "save":
        assert os.path.isdir(run_dir / "checkpoints" / f"step_{at}.tmp")  # the half-written checkpoint
    said = resume_inprocess(run_dir)
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{resumes_from}'} at step {resumes_from}" in said
    same_curve(reference, run_dir)


@pytest.mark.parametrize("sig", ["sigterm", "sigint"])
def test_a_signal_saves_at_the_step_boundary_and_exits_75_then_resumes_exactly(reference, tmp_path, sig):
    run_dir = tmp_path / "run"
    p = interrupted(sig, 3, RUN + [f"run_dir={run_dir}"])
    assert p.returncode == 75, dump(p)
    assert p.stderr.strip().splitlines()[-1].startswith(f"stopped by {sig.upper()} after step 3: checkpoint saved")
    assert "Traceback" not in p.stderr
    assert os.path.exists(run_dir / "checkpoints" / "step_3" / "manifest.json")
    resume_inprocess(run_dir)
    same_curve(reference, run_dir)


def test_sigterm_to_a_two_process_job(tmp_path):
    """As SLURM does (`srun`: one task per rank, the signal to every task): both ranks stop at the same step
    boundary, write one checkpoint (each its own RNG and data position) and exit 75; the resumed job matches an
    uninterrupted one."""
    args = SMALL + ["train.steps=400", "train.eval_every=0", "train.save_every=0", "log.log_every=1"]
    run_dir = tmp_path / "job"
    port = str(29600 + os.getpid() % 300)
    procs = []
    for rank in range(2):
        e = {**env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py")] + args +
                                      [f"run_dir={run_dir}"], cwd=ROOT, env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=rank == 0))
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(run_dir / "metrics.jsonl") and
                                          len(open(run_dir / "metrics.jsonl").readlines()) >= 5):
        time.sleep(0.2)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [75, 75], [o[-3000:] for o in outs]
    ckpts = glob.glob(str(run_dir / "checkpoints" / "step_*"))
    assert len(ckpts) == 1 and not ckpts[0].endswith(".tmp"), outs[0][-4000:]
    stopped = int(ckpts[0].rsplit("_", 1)[1])
    assert 5 <= stopped < 400
    for name in ("random_states_0.pkl", "random_states_1.pkl", "data_state_rank0.json", "data_state_rank1.json",
                 "manifest.json"):
        assert os.path.exists(os.path.join(ckpts[0], name)), name
    for out in outs:
        assert out.strip().splitlines()[-1] == f"stopped by SIGTERM after step {stopped}: checkpoint saved; " \
                                               "resume=auto continues", out[-2000:]
    resumed = run_cli(args + [f"run_dir={run_dir}", "resume=auto"], nproc=2, launcher="accelerate")
    assert resumed.returncode == 0, dump(resumed)
    ref = run_cli(args + [f"run_dir={tmp_path / 'ref'}"], nproc=2, launcher="accelerate")
    assert ref.returncode == 0, dump(ref)
    a, b = last_rows(tmp_path / "ref"), last_rows(run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 401))
    assert all(a[s]["loss"] == b[s]["loss"] for s in a)


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path):
    """NaN at steps 3 and 4: no update (parameters and optimizer state unchanged on those steps, so the run goes
    on from step 2's state: its checkpoint at 4 equals the one at 2), counted; NaN from step 7 on with
    max_bad_steps=3: stops at step 9 with exit 3, and no checkpoint holds a non-finite value."""
    import torch
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    p = interrupted("nan", "3,4,7,8,9,10", RUN + [f"run_dir={run_dir}", "train.save_every=1",
                                                   "train.max_bad_steps=3"])
    assert p.returncode == 3, dump(p)
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("stopped at step 9: 3 non-finite steps in a row"), last
    t = last_rows(run_dir)
    assert [t[s]["skipped"] for s in range(1, 10)] == [0, 0, 1, 1, 0, 0, 1, 1, 1]
    assert t[9]["steps_skipped"] == 5
    ck = lambda s: str(run_dir / "checkpoints" / f"step_{s}")  # noqa: E731
    for name in ("model.safetensors",):
        a, b = load_file(os.path.join(ck(2), name)), load_file(os.path.join(ck(4), name))
        assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = (torch.load(os.path.join(ck(s), "optimizer.bin"), weights_only=False) for s in (2, 4))
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i]
               if torch.is_tensor(a["state"][i][k]))
    assert not os.path.exists(ck(9))
    for d in glob.glob(str(run_dir / "checkpoints" / "step_*")):
        assert all(torch.isfinite(v).all() for v in load_file(os.path.join(d, "model.safetensors")).values())


CKPT_FILES = ["model.safetensors", "optimizer.bin", "random_states_0.pkl", "trainer_state.json",
              "data_state_rank0.json"]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("two") / "run"
    train_inprocess(["train.steps=4", "train.eval_every=0", "train.save_every=2", f"run_dir={run_dir}"])
    return run_dir


def start(overrides, log=None):
    """Which checkpoint a run would start from (what train() checks first), in this process."""
    from pretrain.build import start_checkpoint
    from pretrain.config import load_config
    return start_checkpoint(load_config(SMALL + overrides), log or (lambda *_: None))


def copy_run(src, tmp_path):
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    return run_dir


@pytest.mark.parametrize("name", CKPT_FILES)
def test_a_truncated_checkpoint_file_is_named_and_resume_auto_falls_back(two_checkpoints, tmp_path, name):
    from pretrain.errors import ConfigError
    run_dir = copy_run(two_checkpoints, tmp_path)
    newest = run_dir / "checkpoints" / "step_4"
    with open(newest / name, "r+b") as f:
        f.truncate(max(1, os.path.getsize(newest / name) // 2))
    with pytest.raises(ConfigError) as e:
        start(["train.steps=6", f"run_dir={tmp_path / 'other'}", f"resume={newest}"])
    line = str(e.value)
    assert e.value.field == "resume" and line.startswith("resume: checkpoint not usable:") and \
        f"{newest / name}: " in line and "truncated" in line, line
    said = []
    source = start(["train.steps=4", "train.save_every=2", f"run_dir={run_dir}", "resume=auto"], said.append)
    assert source.path == str(run_dir / "checkpoints" / "step_2")
    assert said == [f"warning: skipping checkpoint {newest}: {newest / name}: "
                    f"{os.path.getsize(newest / name)} bytes, the manifest says "
                    f"{json.load(open(newest / 'manifest.json'))['files'][name]['bytes']} (truncated or overwritten)"]
    if name == "optimizer.bin":  # the fallback really trains on: from step 2, as the uninterrupted run did
        train_inprocess(["train.steps=4", "train.eval_every=0", "train.save_every=2", f"run_dir={run_dir}",
                         "resume=auto"])
        a, b = last_rows(two_checkpoints), last_rows(run_dir)
        assert [a[s]["loss"] for s in (3, 4)] == [b[s]["loss"] for s in (3, 4)]


def test_a_missing_rng_file_is_refused(two_checkpoints, tmp_path):
    from pretrain.errors import ConfigError
    run_dir = copy_run(two_checkpoints, tmp_path)
    newest = run_dir / "checkpoints" / "step_4"
    os.remove(newest / "random_states_0.pkl")
    with pytest.raises(ConfigError) as e:
        start(["train.steps=6", f"run_dir={tmp_path / 'x'}", f"resume={newest}"])
    assert f"{newest / 'random_states_0.pkl'}: missing" in str(e.value)


@pytest.mark.parametrize("change,keys", [
    (["optim.lr=3e-4"], ["optim.lr 0.003 -> 0.0003"]),
    (["optim=lion", "optim.lr=3e-4"], ["optim.name 'adamw' -> 'lion'"]),
    (["model.d_model=128"], ["model.d_model 64 -> 128"]),
    (["train.steps=8", "schedule.warmup_steps=3"], ["schedule.warmup_steps 2 -> 3", "train.steps 4 -> 8"]),
])
def test_resume_refuses_changed_keys_listing_them(two_checkpoints, tmp_path, change, keys):
    """One line listing the keys, before anything is built; the run directory byte-identical (train.py prints it
    as `config error: ...`, exit 2: tests/test_bad_inputs.py runs such rows through train.py)."""
    from pretrain.errors import ConfigError
    run_dir = copy_run(two_checkpoints, tmp_path)
    before = {p: open(p, "rb").read() for p in glob.glob(str(run_dir / "**" / "*"), recursive=True)
              if os.path.isfile(p)}
    with pytest.raises(ConfigError) as e:
        start(["train.steps=4", "train.save_every=2", f"run_dir={run_dir}", "resume=auto", "optim.lr=3e-3"] + change)
    line = str(e.value)
    assert "\n" not in line and e.value.field == "resume", line
    for k in keys:
        assert k in line, line
    after = {p: open(p, "rb").read() for p in glob.glob(str(run_dir / "**" / "*"), recursive=True)
             if os.path.isfile(p)}
    assert before == after  # config.yaml, metrics, checkpoints: untouched


def test_resume_overrides_apply_the_new_lr_to_the_optimizer(two_checkpoints, tmp_path, monkeypatch):
    """The optimizer applies the new lr (read from its groups during the resumed steps), the log shows it, and
    the run directory's history records the change while config.yaml keeps the run's first config."""
    import shutil

    from pretrain import step as step_module
    from pretrain.optim import unwrap
    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, run_dir)
    config_before = open(run_dir / "config.yaml").read()
    seen, plain = [], step_module.LoopEngine.train_step

    def spy(self, s, factor):
        out = plain(self, s, factor)
        g = unwrap(self.optimizer).param_groups[0]
        seen.append((s + 1, g["lr"], g["initial_lr"]))
        return out
    monkeypatch.setattr(step_module.LoopEngine, "train_step", spy)
    train_inprocess(["train.steps=6", "train.eval_every=0", "train.save_every=2", f"run_dir={run_dir}",
                     "resume=auto", "optim.lr=3e-4", "resume_overrides=true", "schedule=constant",
                     "schedule.warmup_steps=0"][:7] + ["schedule.warmup_steps=2"])
    assert [s for s, _, _ in seen] == [5, 6]
    assert all(initial == pytest.approx(3e-4) for _, _, initial in seen)
    logged = last_rows(run_dir)
    assert [logged[s]["lr"] for s in (5, 6)] == [lr for _, lr, _ in seen]
    assert open(run_dir / "config.yaml").read() == config_before
    history = [json.loads(x) for x in open(run_dir / "config_history.jsonl")]
    assert history[-1]["step"] == 4 and history[-1]["changes"]["optim.lr"] == [0.003, 0.0003]
    assert history[-1]["changes"]["train.steps"] == [4, 6]


def test_init_from_weights_only_branches_a_fresh_run(tmp_path):
    """A branch with train.init_weights_only: the source's weights (its step-4 validation loss is the branch's
    step-0 one), a different optimizer, step 0, the history naming the source."""
    source = tmp_path / "source"
    train_inprocess(["train.steps=4", "train.eval_every=4", "train.save_every=4", f"run_dir={source}"])
    branch = tmp_path / "branch"
    train_inprocess(["train.steps=3", "train.eval_every=3", f"run_dir={branch}", "optim=lion", "optim.lr=1e-4",
                     f"train.init_from={source / 'checkpoints' / 'step_4'}", "train.init_weights_only=true"])
    assert rows(branch, "eval")[0]["step"] == 0
    assert rows(branch, "eval")[0]["val_loss"] == rows(source, "eval")[-1]["val_loss"]
    assert [r["step"] for r in rows(branch)] == [1, 2, 3]
    history = [json.loads(x) for x in open(branch / "config_history.jsonl")]
    assert history[-1]["checkpoint"].endswith("step_4") and history[-1]["changes"]["optim.name"] == ["adamw", "lion"]
