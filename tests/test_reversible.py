"""Reversible learning (Maclaurin et al. 2015): exact reversal, the information buffer's memory, hypergradients
against finite differences of an independent plain float64 implementation, meta-optimization, and the `learned`
schedule (file checks, per-group lrs through the step's set_lr, a run of train.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pretrain.errors import ConfigError
from pretrain.hyper.meta import cosine_start, meta_optimize, torch_lrs
from pretrain.hyper.proxy import mlp_problem
from pretrain.hyper.reversible import (DENOM, Hypers, forward, gamma_numerators, hypergradient, reverse_only)
from pretrain.schedules import build_schedule
from pretrain.schedules.learned import save_learned
from pretrain.step import set_lr


def varied_hypers(problem, steps, block_len, seed=0):
    """Different lr and momentum per unit and block (momentum 0.5-0.95), small weight decay."""
    g = torch.Generator().manual_seed(seed)
    U, B = len(problem.units), -(-steps // block_len)
    gamma = 0.5 + 0.45 * torch.rand(U, B, generator=g, dtype=torch.float64)
    return Hypers((0.05 + 0.3 * torch.rand(U, B, generator=g, dtype=torch.float64)).log(),
                  torch.log(gamma / (1 - gamma)), 0.2 * torch.randn(U, generator=g, dtype=torch.float64),
                  0.01 * torch.rand(U, generator=g, dtype=torch.float64), block_len)


def plain_val_loss(problem, alpha, gamma, log_scale, wd, steps, block_len):
    """The paper's momentum SGD in plain float64 (no fixed point, no buffer), written from its formula:
    v = gamma v - (1-gamma) (clip(grad loss) + wd x); x = x + alpha v; the validation loss at the end."""
    sizes = problem.sizes
    rep = lambda per_unit: torch.cat([torch.full((n,), float(v), dtype=torch.float64) for v, n in zip(per_unit, sizes)])
    x = rep(np.exp(log_scale)) * problem.x_init
    v = torch.zeros_like(x)
    lam = rep(wd)
    for t in range(steps):
        b = t // block_len
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(problem.loss(xr, t), xr)
        if problem.max_norm:
            g = g * min(1.0, problem.max_norm / (float(g.norm()) + 1e-6))
        a, gm = rep(alpha[:, b]), rep(gamma[:, b])
        v = gm * v - (1 - gm) * (g + lam * x)
        x = x + a * v
    with torch.no_grad():
        return float(problem.val_loss(x))


def test_reversal_is_bitwise_and_the_buffer_is_small(capsys):
    """T steps forward then T back: x, v and the buffer end exactly where they began; the buffer's stack
    holds about log2(1/gamma) bits per parameter per step (measured), far below a stored trajectory."""
    p = mlp_problem(seed=1, max_norm=1.0)
    T, block = 400, 50
    hp = varied_hypers(p, T, block)
    traj = forward(p, hp, T)
    X0 = traj.X0.clone()
    assert not torch.equal(traj.X, X0)
    stack_bytes = traj.buf.nbytes()
    reverse_only(p, hp, traj)
    assert torch.equal(traj.X, X0) and torch.equal(traj.V, torch.zeros_like(traj.V))
    assert torch.equal(traj.buf.cur, torch.zeros_like(traj.buf.cur)) and traj.buf.stack == []
    # the information destroyed, from the formula: sum over steps of log2(d / n) per parameter
    n = np.floor(torch.sigmoid(hp.logit_momentum).numpy() * 2 ** 16) + 1
    per_unit_bits = (np.log2(2 ** 16 / n) * block).sum(axis=1)
    ideal = float((per_unit_bits * np.array(p.sizes)).sum()) / (p.numel * T)
    measured = stack_bytes * 8 / (p.numel * T)
    total = measured + 64 / T  # with the int64 each parameter's buffer keeps
    with capsys.disabled():
        print(f"\ninfo buffer over T={T} steps: {measured:.2f} bits/parameter/step on the stack, {total:.2f} with "
              f"the int64 per parameter; ideal {ideal:.2f} (log2 1/gamma); storing x_t: 64 (float64), 32 (float32): "
              f"{64 / total:.0f}x / {32 / total:.0f}x less")
    assert ideal < measured < 2.5 * ideal + 0.5  # 32 bits + a 32-bit index per spill: about 2x the ideal
    assert measured < 64 / 10


def test_plain_float_reversal_is_not_exact():
    """The control: undoing the same steps in float64 arithmetic does not return to x_0 bitwise."""
    p = mlp_problem(seed=1)
    x = p.x_init.clone()
    v = torch.zeros_like(x)
    alpha, gamma = 0.3, 0.9
    for t in range(50):
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(p.loss(xr, t), xr)
        v = gamma * v - (1 - gamma) * g
        x = x + alpha * v
    for t in reversed(range(50)):
        x = x - alpha * v
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(p.loss(xr, t), xr)
        v = (v + (1 - gamma) * g) / gamma
    assert not torch.equal(x, p.x_init)


def _fd(f, h):
    return (f(h) - f(-h)) / (2 * h)


@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_hypergradients_match_finite_differences(max_norm):
    """d val_loss / d (per-layer per-block lr, init scale, weight decay, momentum) from the reverse pass vs
    central differences of the plain float64 implementation above: relative error < 1%."""
    p = mlp_problem(seed=2, max_norm=max_norm)
    T, block = 40, 10
    hp = varied_hypers(p, T, block, seed=3)
    grads, f = hypergradient(p, hp, forward(p, hp, T))
    alpha, gamma = hp.alpha().clone(), hp.gamma().clone()
    ls, wd = hp.log_init_scale.numpy().copy(), hp.weight_decay.numpy().copy()
    assert f == pytest.approx(plain_val_loss(p, alpha, gamma, ls, wd, T, block), rel=1e-9)

    def run(a=alpha, g=gamma, s=ls, w=wd):
        return plain_val_loss(p, a, g, s, w, T, block)

    checks = []
    for u, b in [(0, 0), (0, 3), (1, 1)]:  # log lr of layer u in block b
        def f_lr(h, u=u, b=b):
            a = alpha.clone()
            a[u, b] *= math.exp(h)
            return run(a=a)
        checks.append((f"log_lr[{u},{b}]", _fd(f_lr, 1e-4), float(grads["log_lr"][u, b])))
    for u in range(2):
        def f_s(h, u=u):
            s = ls.copy()
            s[u] += h
            return run(s=s)

        def f_w(h, u=u):
            w = wd.copy()
            w[u] += h
            return run(w=w)
        checks.append((f"log_init_scale[{u}]", _fd(f_s, 1e-4), float(grads["log_init_scale"][u])))
        checks.append((f"weight_decay[{u}]", _fd(f_w, 1e-5), float(grads["weight_decay"][u])))
    sig = torch.sigmoid(hp.logit_momentum)
    d_gamma = grads["logit_momentum"] / (sig * (1 - sig))  # the gradient wrt the gamma used (n / d)
    for u, b in [(0, 2), (1, 0)]:
        def f_g(h, u=u, b=b):
            g = gamma.clone()
            g[u, b] += h
            return run(g=g)
        checks.append((f"gamma[{u},{b}]", _fd(f_g, 1e-5), float(d_gamma[u, b])))
    for name, fd, hg in checks:
        assert abs(hg - fd) < 0.01 * abs(fd), (name, fd, hg)


def test_gamma_is_the_references_rational():
    g = torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)
    assert gamma_numerators(g).tolist() == [int(np.floor(x * 2 ** 16) + 1) for x in g.tolist()]
    assert DENOM == 2 ** 16


def test_meta_optimization_lowers_the_validation_loss():
    p = mlp_problem(seed=4, max_norm=1.0)
    T = 30
    start = cosine_start(p, T, 10, peak_lr=0.03, momentum=0.9, warmup_steps=4)
    best, history = meta_optimize(p, start, T, 4, log=lambda *_: None)
    assert history[0]["val_loss"] > 1.05 * min(h["val_loss"] for h in history)
    assert history[-1]["inner_steps"] == 4 * 2 * T + T
    lrs = torch_lrs(p, best, T)
    assert set(lrs) == {"layer.0", "layer.1"} and all(len(v) == T for v in lrs.values())
    lrs0 = torch_lrs(p, start, T)  # the start is the cosine in torch-SGD form, blockwise
    assert lrs0["layer.0"][12] == pytest.approx(np.mean([build_schedule(
        "cosine", peak_lr=0.03, total_steps=T, warmup_steps=4, min_lr_ratio=0.1)(t) for t in range(10, 20)]), rel=1e-3)


# -- the learned schedule ---------------------------------------------------------------------------------------
def write(tmp_path, steps=10, groups=("embedding", "hidden", "vector")):
    lrs = {k: [0.1 * (i + 1) * (1 - t / steps) for t in range(steps)] for i, k in enumerate(groups)}
    path = tmp_path / "learned.json"
    save_learned(path, lrs)
    return str(path), lrs


def test_learned_schedule_sets_each_groups_lr(tmp_path):
    path, lrs = write(tmp_path)
    peak = max(max(v) for v in lrs.values())
    s = build_schedule("learned", peak_lr=0.6, total_steps=10, path=path)
    ps = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
    opt = torch.optim.SGD([{"params": [ps[0]], "kind": "hidden", "lr": 0.6},
                           {"params": [ps[1]], "kind": "embedding", "lr": 1.2},  # lr_mult 2 kept
                           {"params": [ps[2]], "kind": "vector", "lr": 0.6}], lr=0.6)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    for step in (0, 4, 9):
        set_lr(opt, s.factor(step) * 0.5)  # a batch-rule factor multiplies every group
        got = [g["lr"] for g in opt.param_groups]
        want = [0.6 * lrs["hidden"][step] / peak * 0.5, 1.2 * lrs["embedding"][step] / peak * 0.5,
                0.6 * lrs["vector"][step] / peak * 0.5]
        assert got == pytest.approx(want, rel=1e-12)
        assert s(step) == pytest.approx(0.6 * max(v[step] for v in lrs.values()) / peak)


def test_learned_schedule_refuses_mismatches(tmp_path):
    path, _ = write(tmp_path)
    with pytest.raises(ConfigError, match="train.steps") as e:
        build_schedule("learned", peak_lr=0.1, total_steps=12, path=path)
    assert e.value.field == "train.steps"
    with pytest.raises(ConfigError) as e:
        build_schedule("learned", peak_lr=0.1, total_steps=10)
    assert e.value.field == "schedule.path"
    with pytest.raises(ConfigError) as e:
        build_schedule("learned", peak_lr=0.1, total_steps=10, path=str(tmp_path / "nope.json"))
    assert e.value.field == "schedule.path"
    s = build_schedule("learned", peak_lr=0.1, total_steps=10, path=path)
    with pytest.raises(ConfigError, match="parameter groups") as e:
        s.group_factors(0, [{"kind": "hidden"}, {"kind": "vector"}, {"kind": "head"}])
    assert e.value.field == "schedule.path"
    (tmp_path / "bad.json").write_text('{"format": "pretrain.learned_schedule/1", "total_steps": 2, "peak_lr": 1,'
                                       ' "lrs": {"hidden": [1.0, NaN]}}')
    with pytest.raises(ConfigError, match="finite"):
        build_schedule("learned", peak_lr=0.1, total_steps=2, path=str(tmp_path / "bad.json"))


def test_learned_schedule_against_a_gpts_parameter_groups(tmp_path):
    """The groups the optimizer builds for a GPT (tied embeddings: embedding, hidden, vector) match a file for
    them; a file for other groups (a head) is refused naming schedule.path."""
    from pretrain.model import GPT, GPTConfig
    from pretrain.optim import build_optimizer

    model = GPT(GPTConfig(vocab_size=64, d_model=16, n_layer=1, n_head=2, max_seq_len=8, tie_embeddings=True))
    groups = build_optimizer("momentum", model, lr=0.1).param_groups
    path, _ = write(tmp_path)
    s = build_schedule("learned", peak_lr=0.1, total_steps=10, path=path)
    assert len(s.group_factors(3, groups)) == len(groups)
    (tmp_path / "h").mkdir()
    bad, _ = write(tmp_path / "h", groups=("embedding", "hidden", "head"))
    s = build_schedule("learned", peak_lr=0.1, total_steps=10, path=bad)
    with pytest.raises(ConfigError, match="parameter groups") as e:
        s.group_factors(0, groups)
    assert e.value.field == "schedule.path"


def test_train_py_runs_a_learned_schedule(tmp_path):
    """A recipe trains with schedule=learned, each group at its own lr."""
    import helpers

    path, lrs = write(tmp_path, steps=6)
    peak = max(max(v) for v in lrs.values())
    small = helpers.SMALL  # without its schedule.warmup_steps (not a keyword of `learned`: the file holds it)
    helpers.SMALL = [o for o in small if not o.startswith("schedule.warmup_steps")]
    try:
        summary, rows = helpers.train_inprocess(["optim=momentum", "optim.lr=0.05", "train.steps=6",
                                                 "schedule=learned", f"schedule.path={path}",
                                                 f"run_dir={tmp_path / 'run'}", "train.eval_every=0"])
    finally:
        helpers.SMALL = small
    train_rows = [r for r in rows if r.get("kind", "train") == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, 7))
    for r in train_rows:  # the logged lr is the first group's (the embedding's): its own factor, not the largest
        assert r["lr"] == pytest.approx(0.05 * lrs["embedding"][r["step"] - 1] / peak, rel=1e-6)
