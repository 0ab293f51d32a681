"""RDBD against an independent NumPy loop of the rule in REFERENCES.md (per coordinate, written from the rule)."""
import copy
from functools import partial

import numpy as np
import pytest
import torch

from helpers import regression_grads, regression_loss_torch, regression_problem
from pretrain.errors import ConfigError
from pretrain.optim import OPTIMIZERS, build_optimizer
from pretrain.optim.rdbd import RDBD

STEPS = 16
# small multiplier range and large kappa/phi so that clamping at both ends and the regret all happen in 16 steps
HP = dict(lr=0.05, theta=0.7, kappa=0.2, phi=0.3, a_min=0.5, a_max=1.6, betas=(0.9, 0.99), eps=1e-8,
          momentum=0.8, weight_decay=0.05)


# noisy (noise_scale 1.0): gradient signs flip
_problem = partial(regression_problem, steps=STEPS + 4, offset=0.5, noise_scale=1.0, init_scale=0.1)


def rdbd_numpy(w0, b0, batches, base, lr, theta, kappa, phi, a_min, a_max, betas, eps, momentum, weight_decay):
    """Plain loops over coordinates; regret written literally: previous raise > 0 and g * g_prev < 0."""
    params = [w0.copy(), b0.copy()]
    st = [{k: np.zeros_like(x) for k in ("gbar", "raise", "g_prev", "buf", "m", "v")} for x in params]
    for s, x in zip(st, params):
        s["a"] = np.ones_like(x)
    events = {"regret": 0, "at_max": 0, "at_min": 0}
    history = []
    for t, (x_b, y_b) in enumerate(batches, start=1):
        grads = regression_grads(params[0], params[1], x_b, y_b)
        for p, g, s in zip(params, grads, st):
            for i in np.ndindex(p.shape):
                a = s["a"][i]
                if s["raise"][i] > 0 and g[i] * s["g_prev"][i] < 0:  # regret the last raise
                    a -= s["raise"][i]
                    events["regret"] += 1
                before = a
                agreement = g[i] * s["gbar"][i]
                if agreement > 0:
                    a = a + kappa
                elif agreement < 0:
                    a = a * (1 - phi)
                a = min(max(a, a_min), a_max)
                events["at_max"] += a == a_max
                events["at_min"] += a == a_min
                s["raise"][i] = a - before if agreement > 0 else 0.0
                s["a"][i] = a
                s["g_prev"][i] = g[i]
                s["gbar"][i] = theta * s["gbar"][i] + (1 - theta) * g[i]
                if base == "sgd":
                    u = g[i]
                elif base == "momentum":
                    s["buf"][i] = momentum * s["buf"][i] + g[i]
                    u = s["buf"][i]
                else:
                    s["m"][i] = betas[0] * s["m"][i] + (1 - betas[0]) * g[i]
                    s["v"][i] = betas[1] * s["v"][i] + (1 - betas[1]) * g[i] ** 2
                    m_hat = s["m"][i] / (1 - betas[0] ** t)
                    v_hat = s["v"][i] / (1 - betas[1] ** t)
                    u = m_hat / (np.sqrt(v_hat) + eps)
                p[i] = p[i] * (1 - lr * weight_decay) - lr * a * u
        history.append([p.copy() for p in params])
    return history, events, [s["a"] for s in st]


def _make(w0, b0, base, foreach, **overrides):
    w = torch.tensor(w0, requires_grad=True)
    b = torch.tensor(b0, requires_grad=True)
    opt = RDBD([w, b], base=base, foreach=foreach, **{**HP, **overrides})
    return w, b, opt


def _run(w, b, opt, batches):
    history = []
    for x, y in batches:
        opt.zero_grad()
        regression_loss_torch(w, b, x, y).backward()
        opt.step()
        history.append([w.detach().numpy().copy(), b.detach().numpy().copy()])
    return history


@pytest.mark.parametrize("base", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("foreach", [True, False])
def test_matches_numpy_reference(base, foreach):
    w0, b0, batches = _problem()
    batches = batches[:STEPS]
    expected, events, a_ref = rdbd_numpy(w0, b0, batches, base, **HP)
    assert events["regret"] > 0 and events["at_max"] > 0 and events["at_min"] > 0, events
    w, b, opt = _make(w0, b0, base, foreach)
    got = _run(w, b, opt, batches[:1])
    assert opt.metrics()["rdbd_mean_multiplier"] == 1.0  # first step: gbar = 0, so a stays 1
    got += _run(w, b, opt, batches[1:])
    for t, (g_params, e_params) in enumerate(zip(got, expected)):
        for gp, ep in zip(g_params, e_params):
            np.testing.assert_allclose(gp, ep, rtol=1e-6, atol=1e-12, err_msg=f"step {t + 1}")
    a_got = [opt.state[p]["a"].numpy() for p in (w, b)]
    for ag, ae in zip(a_got, a_ref):
        np.testing.assert_allclose(ag, ae, rtol=1e-12)
    mean_a = sum(x.sum() for x in a_ref) / sum(x.size for x in a_ref)
    assert opt.metrics()["rdbd_mean_multiplier"] == pytest.approx(mean_a, rel=1e-12)


@pytest.mark.parametrize("base", ["sgd", "momentum", "adam"])
def test_foreach_and_reference_paths_agree(base):
    w0, b0, batches = _problem(seed=1)
    runs = []
    for foreach in (True, False):
        w, b, opt = _make(w0, b0, base, foreach)
        runs.append((_run(w, b, opt, batches), opt))
    for h1, h2 in zip(runs[0][0], runs[1][0]):
        for x1, x2 in zip(h1, h2):
            np.testing.assert_allclose(x1, x2, rtol=1e-13, atol=1e-15)
    s1, s2 = runs[0][1].state_dict()["state"], runs[1][1].state_dict()["state"]
    for k in s1:
        assert s1[k].keys() == s2[k].keys()
        for key in s1[k]:
            if key != "step":
                torch.testing.assert_close(s1[k][key], s2[k][key], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("base", ["momentum", "adam"])
def test_state_dict_round_trip_continues_identically(base):
    w0, b0, batches = _problem(seed=2)
    w, b, opt = _make(w0, b0, base, True)
    full = _run(w, b, opt, batches)

    w, b, opt = _make(w0, b0, base, True)
    _run(w, b, opt, batches[:7])
    saved = copy.deepcopy(opt.state_dict())
    params = [w.detach().clone(), b.detach().clone()]
    w2, b2 = (x.clone().requires_grad_(True) for x in params)
    opt2 = RDBD([w2, b2], base=base, **HP)
    opt2.load_state_dict(saved)
    resumed = _run(w2, b2, opt2, batches[7:])
    for h1, h2 in zip(full[7:], resumed):
        for x1, x2 in zip(h1, h2):
            np.testing.assert_array_equal(x1, x2)


@pytest.mark.parametrize("bad", [
    {"base": "lamb"}, {"theta": 1.0}, {"theta": -0.1}, {"kappa": -0.01}, {"phi": 1.0}, {"phi": -0.5},
    {"a_min": 1.5}, {"a_min": -1.0}, {"a_max": 0.5}, {"betas": (0.9, 1.0)}, {"momentum": 1.0}, {"lr": -1.0},
    {"weight_decay": -0.1}, {"eps": -1e-8},
])
def test_bad_hyperparameters_raise_config_error(bad):
    with pytest.raises(ConfigError):
        RDBD([torch.zeros(2, requires_grad=True)], **bad)
    with pytest.raises(ConfigError):
        build_optimizer("rdbd", torch.nn.Linear(4, 3), **bad)


def test_builds_from_registry():
    assert OPTIMIZERS["rdbd"].source == "here"
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer("rdbd", model)
    assert isinstance(opt, RDBD) and opt.defaults["base"] == "adam"
    model(torch.randn(5, 4)).pow(2).mean().backward()
    opt.step()
    assert opt.metrics()["rdbd_mean_multiplier"] == 1.0
    opt = build_optimizer("rdbd", model, base="sgd", weight_decay=0.1)
    assert {g["kind"]: g["weight_decay"] for g in opt.param_groups} == {"hidden": 0.1, "vector": 0.0}
