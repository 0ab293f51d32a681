"""Shared helpers: a very small training configuration, launchers (in-process, subprocess, multi-process) and
checks shared by the per-optimizer tests."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("PRETRAIN_TEST_CACHE", os.path.join(ROOT, ".cache", "test-data"))

# a ~0.2M-parameter GPT on 1 MB of the stdlib corpus: a step takes a few milliseconds
SMALL = [
    "data.max_bytes=1000000", f"data.cache_dir={CACHE}", "data.vocab_size=512",
    "model.d_model=64", "model.n_layer=2", "model.n_head=2",
    "train.seq_len=64", "train.global_batch_size=8", "train.micro_batch_size=4",
    "train.steps=20", "train.eval_every=10", "train.eval_batches=4", "train.progress=false",
    "schedule.warmup_steps=2", "log.log_every=1",
]


def env() -> dict:
    e = dict(os.environ)
    e.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             OMP_NUM_THREADS="1", PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + e.get("PYTHONPATH", ""))
    return e


def train_inprocess(overrides: list[str]):
    """Run pretrain.loop.train in this process (fast); returns (summary, metrics rows)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from pretrain.config import load_config
    from pretrain.loop import train
    from pretrain.tracking import read_metrics

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    cfg = load_config(SMALL + list(overrides))
    summary = train(cfg, log=lambda *_: None)
    return summary, read_metrics(cfg.run_dir)


def run_cli(args: list[str], nproc: int = 1, launcher: str = "python", config_file: str | None = None,
            timeout: int = 600, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """Run train.py as a new user would: `python train.py ...` or `accelerate launch ... train.py ...`."""
    if launcher == "python":
        cmd = [sys.executable, os.path.join(ROOT, "train.py")]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(29500 + (os.getpid() % 1000))]
        if config_file:
            cmd += ["--config_file", os.path.join(ROOT, config_file)]
        else:
            cmd += ["--multi_gpu"] if nproc > 1 else []
        cmd += [os.path.join(ROOT, "train.py")]
    e = env()
    e.update(extra_env or {})
    return subprocess.run(cmd + list(args), cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)


def rows(run_dir: str, kind: str = "train") -> list[dict]:
    from pretrain.tracking import read_metrics
    return [r for r in read_metrics(run_dir) if r.get("kind", "train") == kind]


def load_bench(name: str):
    """The module of bench/<name>.py (bench/ is not a package; each script puts its own directory on sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dump(p: subprocess.CompletedProcess) -> str:
    return f"rc={p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-6000:]}"


def read_json(path):
    with open(path) as f:
        return json.load(f)


def assert_foreach_matches_reference(make, params_fn, run, steps, rtol=1e-12):
    """The foreach and the per-tensor paths of an optimizer give the same parameters after `steps` steps.

    `make(params, foreach)` builds the optimizer, `params_fn()` a fresh parameter list, `run(opt, params, t0, t1)`
    takes steps t0..t1-1."""
    import torch

    pa, pb = params_fn(), params_fn()
    run(make(pa, True), pa, 0, steps)
    run(make(pb, False), pb, 0, steps)
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-12)


def assert_state_dict_round_trip(make, make_blank, params_fn, run, split=5, end=10):
    """An optimizer restored from a torch.save'd state dict continues bit-identically to the original.

    `make(params)` builds the optimizer under test; `make_blank(params)` builds one with other hyperparameters that
    receives the state dict (so they must come back from it). Returns (restored optimizer, its parameters)."""
    import torch

    params = params_fn()
    opt = make(params)
    run(opt, params, 0, split)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    params2 = [p.clone() for p in params]
    opt2 = make_blank(params2)
    opt2.load_state_dict(torch.load(buf))
    run(opt, params, split, end)
    run(opt2, params2, split, end)
    for a, b in zip(params, params2):
        assert torch.equal(a, b)
    return opt2, params2


def kernels_must_run(monkeypatch, *plains):
    """The opt-in fused CPU kernels (pretrain.optim.fast) are enabled for this test (the previous state comes back
    after it) and built here, and the named plain torch-op functions they replace ("module.function" in
    pretrain.optim, e.g. "lars.sq_norms") raise if called: a test under this runs the kernels or fails."""
    import importlib

    from pretrain.optim import fast

    monkeypatch.setattr(fast, "_enabled", fast._enabled)  # restored at teardown
    fast.enable_kernels()
    assert fast.cpu_kernels.available(), fast.cpu_kernels._failed

    def no_fallback(*args):
        raise AssertionError("the fused kernel was not used")

    for name in plains:
        module, function = name.rsplit(".", 1)
        monkeypatch.setattr(importlib.import_module(f"pretrain.optim.{module}"), function, no_fallback)


def quadratic_arrays(shapes, zeros=(), seed=0):
    """Initial parameters of the noisy-quadratic tests: N(0, 1) arrays of `shapes` from `seed`; those at `zeros` 0."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = [rng.normal(size=s) for s in shapes]
    for i in zeros:
        arrays[i] = np.zeros(shapes[i])
    return arrays


def quadratic_noise(shapes, t, i, salt):
    """Step t's gradient noise for parameter i: N(0, 1) of shapes[i] seeded salt + 17 t + i (a salt per test file)."""
    import numpy as np

    return np.random.default_rng(salt + 17 * t + i).normal(size=shapes[i])


def quadratic_grad(shapes, t, i, p, salt):
    """A deterministic gradient that depends on the current parameter p (quadratic + noise): 0.7 p + quadratic_noise."""
    return 0.7 * p + quadratic_noise(shapes, t, i, salt)


def regression_problem(seed=0, *, steps, offset, noise_scale, init_scale=1.0, x_scale=None):
    """Noisy regression y = x w^T + offset + noise (w 3x4), all from `seed`: (w0, b0, `steps` batches (x, y) of 8)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=(3, 4))
    batches = []
    for _ in range(steps):
        x = rng.normal(size=(8, 4))
        if x_scale is not None:
            x = x * np.array(x_scale)
        batches.append((x, x @ w_true.T + offset + rng.normal(scale=noise_scale, size=(8, 3))))
    return rng.normal(scale=init_scale, size=(3, 4)), rng.normal(scale=init_scale, size=3), batches


def regression_grads(w, b, x, y):
    """NumPy gradients [d/dw, d/db] of regression_loss_torch's batch loss 0.5 * |x w^T + b - y|^2 / len(x)."""
    r = x @ w.T + b - y
    return [r.T @ x / len(x), r.sum(0) / len(x)]


def regression_loss_torch(w, b, x, y):
    """The batch loss 0.5 * |x w^T + b - y|^2 / len(x) in torch, numpy x and y cast to w's dtype."""
    import torch

    r = torch.from_numpy(x).to(w.dtype) @ w.T + b - torch.from_numpy(y).to(w.dtype)
    return 0.5 * (r ** 2).sum() / len(x)


def assert_registry_groups(opt, lr: float, weight_decay: float, **hparams):
    """A registry-built optimizer over an nn.Linear: the weight in a 'hidden' group with the given lr and weight
    decay, the bias in a 'vector' group without weight decay, and every other given hyperparameter in both."""
    kinds = {g["kind"]: g for g in opt.param_groups}
    assert set(kinds) == {"hidden", "vector"}, kinds.keys()
    for kind, wd in (("hidden", weight_decay), ("vector", 0.0)):
        g = kinds[kind]
        assert g["lr"] == g["initial_lr"] == lr and g["weight_decay"] == wd, (kind, g)
        for key, value in hparams.items():
            assert g[key] == value, (kind, key, g[key])
