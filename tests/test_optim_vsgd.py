"""vSGD against an independent NumPy loop of Schaul, Zhang & LeCun 2013 (vSGD-l) with the finite-difference
curvature, the curvature-variance rate and the outlier rule of Schaul & LeCun 2013, and the slow-start
initialization."""
import copy
from functools import partial

import numpy as np
import pytest
import torch

from helpers import regression_grads, regression_problem
from pretrain.errors import ConfigError
from pretrain.optim import OPTIMIZERS, build_optimizer, requires_closure
from pretrain.optim.vsgd import VSGD

STEPS = 12
HP = dict(n0=3, c=2.0, eps=1e-12)


_problem = partial(regression_problem, steps=STEPS, offset=0.3, noise_scale=0.5, x_scale=[2.0, 1.0, 0.5, 1.5])


def vsgd_numpy(w0, b0, batches, n0, c, eps, lr=(1.0, 1.0), wd=(0.0, 0.0), max_norm=None):
    """The loop hands the optimizer its gradient clipped to max_norm (global norm, as torch's clip_grad_norm_);
    the statistics and the finite difference use the unclipped gradients, the step the clipped one."""
    params = [w0.copy(), b0.copy()]
    sums = [{k: np.zeros_like(p) for k in ("g", "g2", "h", "h2")} for p in params]
    st = [{k: np.zeros_like(p) for k in ("gbar", "vbar", "hbar", "vhbar", "tau")} for p in params]
    history, outliers = [], 0
    for k, (x, y) in enumerate(batches, start=1):
        raw = regression_grads(params[0], params[1], x, y)
        scale = 1.0
        if max_norm is not None:
            scale = min(1.0, max_norm / (np.sqrt(sum((g ** 2).sum() for g in raw)) + 1e-6))
        received = [scale * g + wd[i] * params[i] for i, g in enumerate(raw)]
        grads = [g + wd[i] * params[i] for i, g in enumerate(raw)]
        deltas = [grads[i] if k <= n0 else st[i]["gbar"].copy() for i in range(2)]
        moved = [params[i] + deltas[i] for i in range(2)]
        grads2 = [g + wd[i] * moved[i] for i, g in enumerate(regression_grads(moved[0], moved[1], x, y))]
        for i in range(2):
            g, s = grads[i], st[i]
            h = np.abs(grads2[i] - g) / (np.abs(deltas[i]) + eps)
            if k <= n0:  # slow start: collect, no update; then means, vbar and hbar times c, vhbar times c^2
                sums[i]["g"] += g
                sums[i]["g2"] += g * g
                sums[i]["h"] += h
                sums[i]["h2"] += h * h
                if k == n0:
                    s["gbar"] = sums[i]["g"] / n0
                    s["vbar"] = c * sums[i]["g2"] / n0
                    s["hbar"] = c * sums[i]["h"] / n0
                    s["vhbar"] = c * c * sums[i]["h2"] / n0
                    s["tau"] = np.full_like(g, float(n0))
                continue
            p = params[i]
            for j in np.ndindex(p.shape):
                # outlier (beyond 2 standard deviations, gradient or curvature): memory one sample longer
                sd_g = np.sqrt(max(s["vbar"][j] - s["gbar"][j] ** 2, 0.0))
                sd_h = np.sqrt(max(s["vhbar"][j] - s["hbar"][j] ** 2, 0.0))
                if abs(g[j] - s["gbar"][j]) > 2 * sd_g or abs(h[j] - s["hbar"][j]) > 2 * sd_h:
                    s["tau"][j] += 1
                    outliers += 1
                w = 1.0 / s["tau"][j]
                s["gbar"][j] = (1 - w) * s["gbar"][j] + w * g[j]
                s["vbar"][j] = (1 - w) * s["vbar"][j] + w * g[j] ** 2
                s["hbar"][j] = (1 - w) * s["hbar"][j] + w * h[j]
                s["vhbar"][j] = (1 - w) * s["vhbar"][j] + w * h[j] ** 2
                ratio = s["gbar"][j] ** 2 / (s["vbar"][j] + eps)
                eta = ratio * s["hbar"][j] / (s["vhbar"][j] + eps)
                s["tau"][j] = (1 - ratio) * s["tau"][j] + 1
                p[j] = p[j] - lr[i] * eta * received[i][j]
        history.append([p.copy() for p in params])
    return history, st, outliers


def _rates(st, eps):
    return [s["gbar"] ** 2 / (s["vbar"] + eps) * s["hbar"] / (s["vhbar"] + eps) for s in st]


def _build(w0, b0, lr=(1.0, 1.0), wd=(0.0, 0.0), **hp):
    w = torch.tensor(w0, requires_grad=True)
    b = torch.tensor(b0, requires_grad=True)
    groups = [{"params": [w], "lr": lr[0], "weight_decay": wd[0]}, {"params": [b], "lr": lr[1], "weight_decay": wd[1]}]
    return VSGD(groups, **{**HP, **hp}), w, b


def _run(opt, w, b, batches, max_norm=None):
    history = []
    for x, y in batches:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        count = [0]

        def closure(backward=False):  # the loop's closure: same batch, current parameters
            count[0] += 1
            with torch.enable_grad():
                r = xt @ w.T + b - yt
                loss = 0.5 * (r ** 2).sum() / len(x)
                if backward:
                    opt.zero_grad()
                    loss.backward()
            return loss.detach()

        opt.zero_grad()
        closure(backward=True)
        if max_norm is not None:  # as the loop does before optimizer.step
            torch.nn.utils.clip_grad_norm_([w, b], max_norm)
        count[0] = 0
        grads_before = [w.grad.clone(), b.grad.clone()]
        opt.step(closure)
        assert count[0] == 2  # the gradient at p and at p + delta
        torch.testing.assert_close(w.grad, grads_before[0], rtol=0, atol=0)  # p.grad restored
        torch.testing.assert_close(b.grad, grads_before[1], rtol=0, atol=0)
        history.append([w.detach().numpy().copy(), b.detach().numpy().copy()])
    return history


@pytest.mark.parametrize("lr,wd,max_norm", [((1.0, 1.0), (0.0, 0.0), None), ((0.7, 1.0), (0.05, 0.0), None),
                                            ((1.0, 1.0), (0.05, 0.0), 0.5)],
                         ids=["paper", "lr_multiplier_and_l2", "clipped_gradient"])
def test_matches_numpy_reference(lr, wd, max_norm):
    w0, b0, batches = _problem()
    expected, st, outliers = vsgd_numpy(w0, b0, batches, lr=lr, wd=wd, max_norm=max_norm, **HP)
    opt, w, b = _build(w0, b0, lr=lr, wd=wd)
    got = _run(opt, w, b, batches, max_norm=max_norm)
    for t in range(HP["n0"]):  # slow start: statistics only
        np.testing.assert_array_equal(got[t][0], w0)
    assert not np.allclose(got[HP["n0"]][0], w0)
    for t, (g, e) in enumerate(zip(got, expected)):
        for gp, ep in zip(g, e):
            np.testing.assert_allclose(gp, ep, rtol=1e-6, atol=1e-12, err_msg=f"step {t + 1}")
    for p, s in zip((w, b), st):
        for key in ("gbar", "vbar", "hbar", "vhbar", "tau"):
            np.testing.assert_allclose(opt.state[p][key].numpy(), s[key], rtol=1e-6, atol=1e-14, err_msg=key)
    assert outliers > 0  # the outlier rule was exercised
    assert (st[0]["tau"] > HP["n0"]).any()  # the memory adapted
    rates = _rates(st, HP["eps"])
    mean_rate = sum(r.sum() for r in rates) / sum(r.size for r in rates)
    assert opt.metrics()["vsgd_mean_rate"] == pytest.approx(mean_rate, rel=1e-6)


def test_clipping_changes_only_the_step():
    """The loop's clipping scales the step; the statistics (and the curvature) are those of the true gradient."""
    w0, b0, batches = _problem(seed=2)
    runs = []
    for max_norm in (None, 1e-3):
        opt, w, b = _build(w0, b0)
        _run(opt, w, b, batches[:HP["n0"]], max_norm=max_norm)  # slow start: statistics only
        runs.append({k: opt.state[w][k].clone() for k in ("gbar", "vbar", "hbar", "vhbar", "tau")})
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key], rtol=0, atol=0)


def test_memory_does_not_collapse_to_one_sample():
    """n0 = 1, c = 1 leaves tau = 1, gbar = g, vbar = g^2 (gbar^2 / vbar = 1): without the outlier rule the memory
    would stay at one sample forever (tau <- (1 - 1) * 1 + 1) and the rate would be 1 / h of a single sample."""
    w0, b0, batches = _problem(seed=3, steps=4)
    opt, w, b = _build(w0, b0, n0=1, c=1.0)
    _run(opt, w, b, batches[:1])
    for p in (w, b):
        torch.testing.assert_close(opt.state[p]["tau"], torch.ones_like(p), rtol=0, atol=0)
    _run(opt, w, b, batches[1:2])  # a new sample with zero running variance is an outlier: tau 1 -> 2 first
    for p in (w, b):
        st = opt.state[p]
        ratio = st["gbar"] ** 2 / (st["vbar"] + HP["eps"])
        torch.testing.assert_close(st["tau"], (1 - ratio) * 2 + 1)
        assert (ratio < 1 - 1e-6).all()


@pytest.mark.parametrize("split", [2, 6], ids=["during_slow_start", "after_slow_start"])
def test_state_dict_round_trip_continues_identically(split):
    w0, b0, batches = _problem(seed=1)
    opt, w, b = _build(w0, b0, wd=(0.05, 0.0))
    full = _run(opt, w, b, batches)

    opt, w, b = _build(w0, b0, wd=(0.05, 0.0))
    _run(opt, w, b, batches[:split])
    saved = copy.deepcopy(opt.state_dict())
    opt2, w2, b2 = _build(w.detach().numpy(), b.detach().numpy(), wd=(0.05, 0.0))
    opt2.load_state_dict(saved)
    resumed = _run(opt2, w2, b2, batches[split:])
    for f, r in zip(full[split:], resumed):
        for x1, x2 in zip(f, r):
            np.testing.assert_array_equal(x1, x2)


def test_step_without_closure_raises():
    opt, _, _ = _build(*_problem(steps=1)[:2])
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()


@pytest.mark.parametrize("bad", [
    {"n0": 0}, {"n0": 2.5}, {"c": 0.5}, {"eps": 0.0}, {"eps": -1.0}, {"lr": -1.0}, {"weight_decay": -0.1},
])
def test_bad_hyperparameters_raise_config_error(bad):
    with pytest.raises(ConfigError):
        VSGD([torch.zeros(2, requires_grad=True)], **bad)
    with pytest.raises(ConfigError):
        build_optimizer("vsgd", torch.nn.Linear(4, 3), **bad)


def test_builds_from_registry():
    assert OPTIMIZERS["vsgd"].source == "here"
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer("vsgd", model, n0=1)
    assert isinstance(opt, VSGD) and requires_closure(opt)
    x, y = torch.randn(6, 4), torch.randn(6, 3)

    def closure(backward=False):
        with torch.enable_grad():
            loss = torch.nn.functional.mse_loss(model(x), y)
            if backward:
                opt.zero_grad()
                loss.backward()
        return loss.detach()

    for _ in range(3):
        closure(backward=True)
        opt.step(closure)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.metrics()["vsgd_mean_rate"] > 0
