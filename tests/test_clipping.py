"""Clipping policies (pretrain.clipping) against independent step-by-step computations of their rules, in the
loop (logged record, exact resume, the too-often warning), and their bad inputs."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import rows, train_inprocess
from pretrain.clipping import build_clip_policy
from pretrain.config import load_config
from pretrain.errors import ConfigError


def clip_cfg(**kw):
    base = dict(policy="norm", max_norm=1.0, value=1.0, percentile=90.0, window=0, warmup_steps=3, z=2.0, beta=0.9,
                agc_lambda=0.01, agc_eps=1e-3)
    return SimpleNamespace(**{**base, **kw})


def torch_clip(params):
    return lambda max_norm: torch.nn.utils.clip_grad_norm_(params, max_norm)


def norms_sequence(seed=0, n=40):
    rng = np.random.default_rng(seed)
    norms = rng.lognormal(0.0, 0.3, n)
    norms[[12, 25, 31]] *= 20  # spikes
    return norms


def run_policy(policy, norms, dim=7, seed=0):
    """Feed gradients of the given norms (random directions); returns [(record, clipped gradient)]."""
    rng = np.random.default_rng(seed + 1)
    p = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
    out = []
    for n in norms:
        d = rng.normal(size=dim)
        p.grad = torch.tensor(d / np.linalg.norm(d) * n)
        rec = policy([p], torch_clip([p]))
        out.append((rec, p.grad.numpy().copy()))
    return out


def percentile_linear(values, q):
    """The q-th percentile with linear interpolation between closest ranks (numpy's default), by hand."""
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@pytest.mark.parametrize("window,q", [(0, 90.0), (8, 90.0), (0, 50.0), (5, 100.0)])
def test_percentile_threshold_from_the_norm_history(window, q):
    norms = norms_sequence()
    policy = build_clip_policy(clip_cfg(policy="percentile", window=window, percentile=q, warmup_steps=4))
    history = []
    for t, (rec, g) in enumerate(run_policy(policy, norms)):
        n = norms[t]
        assert rec["grad_norm"] == pytest.approx(n, rel=1e-12)
        if len(history) < 4:
            assert rec["clip_threshold"] is None and not rec["clipped"]
            assert np.linalg.norm(g) == pytest.approx(n, rel=1e-12)
        else:
            prev = history[-window:] if window else history
            c = percentile_linear(prev, q)
            assert rec["clip_threshold"] == pytest.approx(c, rel=1e-12)
            assert rec["clipped"] == int(n > c)
            expected = n * (c / (n + 1e-6) if n > c else 1.0)
            assert np.linalg.norm(g) == pytest.approx(expected, rel=1e-9)
        history.append(n)


def test_zscore_rule_step_by_step():
    norms = norms_sequence(seed=3)
    z, beta, warm = 2.0, 0.9, 3
    policy = build_clip_policy(clip_cfg(policy="zscore", z=z, beta=beta, warmup_steps=warm))
    mu = var = None
    seen = 0
    clipped_any = False
    for t, (rec, g) in enumerate(run_policy(policy, norms)):
        n = norms[t]
        c = None if seen < warm else mu + z * math.sqrt(var)
        assert (rec["clip_threshold"] is None) == (c is None)
        if c is not None:
            assert rec["clip_threshold"] == pytest.approx(c, rel=1e-12)
            clipped_any |= n > c
        after = n * (c / (n + 1e-6)) if c is not None and n > c else n
        assert np.linalg.norm(g) == pytest.approx(after, rel=1e-9)
        m = n if c is None else min(n, c)  # statistics see the clipped norm
        if mu is None:
            mu, var = m, 0.0
        else:
            d = m - mu
            mu = mu + (1 - beta) * d
            var = beta * (var + (1 - beta) * d * d)
        seen += 1
    assert clipped_any  # the planted spikes were clipped


def test_agc_against_a_numpy_unitwise_computation():
    rng = np.random.default_rng(0)
    lam, eps = 0.05, 1e-3
    shapes = [(6, 5), (4, 3, 2), (7,), (3, 4)]
    ws = [rng.normal(size=s) for s in shapes]
    ws[3][1] = 0.0  # a zero row: the eps floor applies
    gs = [rng.normal(size=s) * rng.choice([0.001, 0.2], size=s[:1] + (1,) * (len(s) - 1)) for s in shapes]
    params = [torch.nn.Parameter(torch.tensor(w)) for w in ws]
    for p, g in zip(params, gs):
        p.grad = torch.tensor(g)
    head = params[3]
    model = SimpleNamespace(get_output_embeddings=lambda: SimpleNamespace(weight=head))
    policy = build_clip_policy(clip_cfg(policy="agc", agc_lambda=lam, agc_eps=eps), model)
    rec = policy(params, torch_clip(params))
    for i, (w, g, p) in enumerate(zip(ws, gs, params)):
        if i == 3:  # the output head is not clipped
            np.testing.assert_array_equal(p.grad.numpy(), g)
            continue
        axes = tuple(range(1, w.ndim)) if w.ndim > 1 else None
        wn = np.sqrt((w ** 2).sum(axis=axes, keepdims=w.ndim > 1))
        gn = np.sqrt((g ** 2).sum(axis=axes, keepdims=w.ndim > 1))
        max_norm = lam * np.maximum(wn, eps)
        expected = np.where(gn > max_norm, g * max_norm / np.maximum(gn, 1e-6), g)
        np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-12, atol=0)
    assert rec["clipped"] == 1 and rec["clip_threshold"] == lam


def test_value_and_norm_policies():
    p = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    g = torch.tensor([0.5, -3.0, 2.0, -0.1, 0.0], dtype=torch.float64)
    p.grad = g.clone()
    rec = build_clip_policy(clip_cfg(policy="value", value=1.0))([p], torch_clip([p]))
    assert p.grad.tolist() == [0.5, -1.0, 1.0, -0.1, 0.0] and rec["clipped"] == 1
    assert rec["grad_norm"] == pytest.approx(float(g.norm()))
    p.grad = g.clone()
    rec = build_clip_policy(clip_cfg(policy="norm", max_norm=1.0))([p], torch_clip([p]))
    n = float(g.norm())
    assert torch.allclose(p.grad, g * (1.0 / (n + 1e-6))) and rec["clipped"] == 1 and rec["clip_threshold"] == 1.0
    p.grad = g.clone()
    rec = build_clip_policy(clip_cfg(policy="none"))([p], torch_clip([p]))
    assert torch.equal(p.grad, g) and rec["clipped"] == 0 and rec["clip_threshold"] is None


# ------------------------------------------------------------------------------------------------------------
# in the loop
# ------------------------------------------------------------------------------------------------------------
def test_loop_logs_the_record_and_resumes_the_policy_state_exactly(tmp_path):
    import shutil
    common = ["clip.policy=zscore", "clip.warmup_steps=3", "clip.z=0.5", "train.steps=12", "train.eval_every=0",
              "train.save_every=6"]
    full = tmp_path / "full"
    train_inprocess([f"run_dir={full}"] + common)
    r = rows(full)
    assert all({"grad_norm", "clip_threshold", "clipped", "clip_fraction"} <= set(x) for x in r)
    assert [x["clip_threshold"] for x in r[:3]] == [None] * 3 and all(x["clip_threshold"] > 0 for x in r[3:])
    assert any(x["clipped"] for x in r)  # z = 0.5 clips often
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_6", part / "checkpoints" / "step_6")
    train_inprocess([f"run_dir={part}", "resume=auto"] + common)
    a, b = {x["step"]: x for x in r}, {x["step"]: x for x in rows(part)}
    for s in range(7, 13):
        assert (b[s]["loss"], b[s]["clip_threshold"], b[s]["clipped"]) == \
            (a[s]["loss"], a[s]["clip_threshold"], a[s]["clipped"])


def test_the_log_warns_when_most_steps_are_clipped(tmp_path):
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from helpers import SMALL
    from pretrain.loop import train
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    logs = []
    cfg = load_config(SMALL + [f"run_dir={tmp_path}", "clip.max_norm=0.01", "train.steps=100", "train.eval_every=0"])
    train(cfg, log=logs.append)
    assert any("of the last 100 steps were clipped" in m for m in logs), logs[-5:]


@pytest.mark.parametrize("overrides,field,hint", [
    (["clip.policy=percentile", "clip.percentile=0"], "clip.percentile", "(0.0, 100.0]"),
    (["clip.policy=percentile", "clip.percentile=101"], "clip.percentile", "(0.0, 100.0]"),
    (["clip.policy=zscore", "clip.z=0"], "clip.z", "out of range"),
    (["clip.policy=zscore", "clip.z=-1"], "clip.z", "out of range"),
    (["clip.policy=zscore", "clip.beta=1.0"], "clip.beta", "[0.0, 1.0)"),
    (["clip.policy=agc", "clip.agc_lambda=0"], "clip.agc_lambda", "out of range"),
    (["clip.policy=value", "clip.value=inf"], "clip.value", "out of range"),
    (["clip.window=-1"], "clip.window", "out of range"),
    (["clip.policy=clipit"], "clip.policy", "allowed: none, norm, value, percentile, zscore, agc"),
])
def test_bad_clip_settings_name_the_field(overrides, field, hint):
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    assert str(err.value).startswith(field + ":") and hint in str(err.value), str(err.value)


@pytest.mark.parametrize("policy", ["value", "percentile", "zscore", "agc"])
def test_deepspeed_accepts_only_norm_clipping(monkeypatch, policy):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match=r"^clip.policy: .*DeepSpeed clips inside its engine"):
        load_config([f"clip.policy={policy}"])
    load_config(["clip.policy=norm"])
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    if policy == "agc":
        with pytest.raises(ConfigError, match="^clip.policy: agc needs whole parameters"):
            load_config(["clip.policy=agc"])
    else:
        load_config([f"clip.policy={policy}"])


def test_spike_bench_quick(tmp_path):
    """bench/clip_spike.py --quick: the table prints, and the planted spike hurts the unclipped run more than the
    norm-clipped one."""
    import json
    import os
    import subprocess
    import sys

    from helpers import CACHE, ROOT, env
    out = tmp_path / "r.json"
    e = {**env(), "PRETRAIN_TEST_CACHE": CACHE}  # the quick run's corpus cache: the tests' own
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "clip_spike.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, env=e, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "worst gap" in p.stdout
    data = json.loads(out.read_text())
    assert set(data) == {"none", "norm"}
    assert data["none"][0]["gap"] > data["norm"][0]["gap"] + 0.01, data
