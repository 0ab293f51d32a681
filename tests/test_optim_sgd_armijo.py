"""SGD-Armijo against an independent NumPy loop of the sls rule (Vaswani et al. 2019; IssamLaradji/sls)."""
import copy
from functools import partial

import numpy as np
import pytest
import torch

from helpers import regression_grads, regression_problem
from pretrain.errors import ConfigError
from pretrain.optim import OPTIMIZERS, build_optimizer, requires_closure
from pretrain.optim.sgd_armijo import SGDArmijo

STEPS = 12
HP = dict(lr=1.0, c=0.1, beta_b=0.9, gamma=2.0, n_batches_per_epoch=4, eta_max=10.0, max_backtracks=100)


# x_scale: curvature up to ~10, eta=1 overshoots
_problem = partial(regression_problem, steps=STEPS, offset=0.3, noise_scale=0.3, x_scale=[2.0, 1.0, 0.5, 1.5])


def _loss_numpy(w, b, x, y):
    r = x @ w.T + b - y
    return 0.5 * (r ** 2).sum() / len(x)


def armijo_numpy(w0, b0, batches, lr, c, beta_b, gamma, n_batches_per_epoch, eta_max, max_backtracks,
                 wd=(0.0, 0.0), mult=(1.0, 1.0)):
    """sls: reset eta every step, backtrack by beta_b until F(p - eta d) <= F(p) - c eta <g, d>, else 1e-6 step."""
    params = [w0.copy(), b0.copy()]
    step_size = lr
    out = []

    def objective(ps, x, y):
        return _loss_numpy(ps[0], ps[1], x, y) + sum(0.5 * wd[i] * (ps[i] ** 2).sum() for i in range(2))

    for x, y in batches:
        eta = min(step_size * gamma ** (1.0 / n_batches_per_epoch), eta_max)
        grads = [g + wd[i] * params[i] for i, g in enumerate(regression_grads(params[0], params[1], x, y))]
        directions = [mult[i] * grads[i] for i in range(2)]
        g_norm = np.sqrt(sum((g ** 2).sum() for g in grads))
        g_dot_d = sum((g * d).sum() for g, d in zip(grads, directions))
        f0 = objective(params, x, y)
        backtracks = 0
        if g_norm >= 1e-8:
            accepted = None
            for _ in range(max_backtracks):
                trial = [p - eta * d for p, d in zip(params, directions)]
                if objective(trial, x, y) <= f0 - c * eta * g_dot_d:
                    accepted = trial
                    break
                eta = eta * beta_b
                backtracks += 1
            params = accepted if accepted is not None else [p - 1e-6 * d for p, d in zip(params, directions)]
        step_size = eta
        out.append(([p.copy() for p in params], eta, backtracks, f0))
    return out


def _build(w0, b0, wd=(0.0, 0.0), mult=(1.0, 1.0), **hp):
    w = torch.tensor(w0, requires_grad=True)
    b = torch.tensor(b0, requires_grad=True)
    groups = [{"params": [w], "weight_decay": wd[0], "lr_mult": mult[0]},
              {"params": [b], "weight_decay": wd[1], "lr_mult": mult[1]}]
    return SGDArmijo(groups, **{**HP, **hp}), w, b


def _run(opt, w, b, batches):
    out, calls = [], []
    for x, y in batches:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def loss_fn():
            r = xt @ w.T + b - yt
            return 0.5 * (r ** 2).sum() / len(x)

        count = [0]

        def closure():  # what the training loop passes: same batch, current parameters, no graph
            count[0] += 1
            with torch.no_grad():
                return loss_fn()

        opt.zero_grad()
        loss_fn().backward()
        loss = opt.step(closure)
        m = opt.metrics()
        out.append(([w.detach().numpy().copy(), b.detach().numpy().copy()], m["armijo_step_size"],
                    m["armijo_backtracks"], loss))
        calls.append(count[0])
    return out, calls


@pytest.mark.parametrize("wd,mult", [((0.0, 0.0), (1.0, 1.0)), ((0.2, 0.0), (1.0, 1.0)), ((0.1, 0.0), (1.0, 0.5))],
                         ids=["plain", "weight_decay", "weight_decay_lr_mult"])
def test_matches_numpy_reference(wd, mult):
    w0, b0, batches = _problem()
    expected = armijo_numpy(w0, b0, batches, wd=wd, mult=mult, **HP)
    opt, w, b = _build(w0, b0, wd=wd, mult=mult)
    got, calls = _run(opt, w, b, batches)
    backtracks = [e[2] for e in expected]
    assert max(backtracks) > 0 and min(backtracks) == 0, backtracks  # both kinds of steps are exercised
    for t, (g, e) in enumerate(zip(got, expected)):
        for gp, ep in zip(g[0], e[0]):
            np.testing.assert_allclose(gp, ep, rtol=1e-6, atol=1e-12, err_msg=f"step {t + 1}")
        assert g[1] == pytest.approx(e[1], rel=1e-12), f"step size, step {t + 1}"
        assert g[2] == e[2], f"backtracks, step {t + 1}"
        assert g[3] == pytest.approx(e[3], rel=1e-12)  # F at the current parameters
        assert calls[t] == 1 + e[2] + 1  # F(p) once, then one call per trial
    # the first trial of step 1 is lr * gamma**(1/n) (sls resets before the first step too)
    assert got[0][1] == pytest.approx(HP["lr"] * 2 ** 0.25 * 0.9 ** got[0][2], rel=1e-12)


def test_no_step_accepted_takes_the_sls_fallback_step():
    w0, b0, batches = _problem(seed=1, steps=3)
    hp = dict(lr=50.0, eta_max=100.0, max_backtracks=3)
    expected = armijo_numpy(w0, b0, batches, **{**HP, **hp})
    opt, w, b = _build(w0, b0, **hp)
    got, calls = _run(opt, w, b, batches)
    assert got[0][2] == 3 and calls[0] == 4
    np.testing.assert_allclose(got[0][0][0], w0 - 1e-6 * regression_grads(w0, b0, *batches[0])[0], rtol=1e-12)
    for g, e in zip(got, expected):
        for gp, ep in zip(g[0], e[0]):
            np.testing.assert_allclose(gp, ep, rtol=1e-6, atol=1e-12)
        assert g[1] == pytest.approx(e[1], rel=1e-12) and g[2] == e[2]


def test_zero_gradient_no_update():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 4))
    xa = np.hstack([x, np.ones((8, 1))])
    y = rng.normal(size=(8, 3))
    sol = np.linalg.lstsq(xa, y, rcond=None)[0].T  # exact minimizer of this batch: gradient ~ 0
    w0, b0 = sol[:, :4].copy(), sol[:, 4].copy()
    opt, w, b = _build(w0, b0)
    got, calls = _run(opt, w, b, [(x, y)])
    assert calls == [1] and got[0][2] == 0
    np.testing.assert_array_equal(got[0][0][0], w0)
    assert got[0][1] == pytest.approx(HP["lr"] * 2 ** 0.25)


def test_state_dict_round_trip_continues_identically():
    w0, b0, batches = _problem(seed=3)
    opt, w, b = _build(w0, b0, wd=(0.1, 0.0))
    full, _ = _run(opt, w, b, batches)

    opt, w, b = _build(w0, b0, wd=(0.1, 0.0))
    _run(opt, w, b, batches[:5])
    saved = copy.deepcopy(opt.state_dict())
    opt2, w2, b2 = _build(w.detach().numpy(), b.detach().numpy(), wd=(0.1, 0.0))
    opt2.load_state_dict(saved)
    assert opt2.metrics() == opt.metrics()
    resumed, _ = _run(opt2, w2, b2, batches[5:])
    for f, r in zip(full[5:], resumed):
        for x1, x2 in zip(f[0], r[0]):
            np.testing.assert_array_equal(x1, x2)
        assert f[1:3] == r[1:3]


def test_step_without_closure_raises():
    opt, w, b = _build(*_problem(steps=1)[:2])
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()


@pytest.mark.parametrize("bad", [
    {"lr": 0.0}, {"lr": -1.0}, {"c": 0.0}, {"c": 1.0}, {"beta_b": 1.0}, {"beta_b": 0.0}, {"gamma": 0.5},
    {"n_batches_per_epoch": 0}, {"n_batches_per_epoch": 2.5}, {"eta_max": 0.0}, {"max_backtracks": 0},
    {"weight_decay": -0.1},
])
def test_bad_hyperparameters_raise_config_error(bad):
    with pytest.raises(ConfigError):
        SGDArmijo([torch.zeros(2, requires_grad=True)], **bad)
    with pytest.raises(ConfigError):
        build_optimizer("sgd_armijo", torch.nn.Linear(4, 3), **bad)


def test_builds_from_registry():
    assert OPTIMIZERS["sgd_armijo"].source == "here"
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer("sgd_armijo", model)
    assert isinstance(opt, SGDArmijo) and requires_closure(opt)
    x, y = torch.randn(6, 4), torch.randn(6, 3)
    torch.nn.functional.mse_loss(model(x), y).backward()
    with torch.no_grad():
        loss = opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
    assert isinstance(loss, float)
    assert set(opt.metrics()) == {"armijo_step_size", "armijo_backtracks"}
