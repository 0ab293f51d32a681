"""ADOPT against an independent numpy reference of Taniguchi et al. 2024's update rule."""
from functools import partial

import numpy as np
import pytest
import torch

from helpers import (assert_foreach_matches_reference, assert_registry_groups, assert_state_dict_round_trip,
                    quadratic_arrays, quadratic_grad)
from pretrain.errors import ConfigError
from pretrain.optim import OPTIMIZERS, build_optimizer
from pretrain.optim.adopt import ADOPT

SHAPES = [(3, 4), (5,), (2, 3, 2)]
STEPS = 12


init_arrays = partial(quadratic_arrays, SHAPES)
grad = partial(quadratic_grad, SHAPES, salt=2000)


def numpy_adopt(steps, lr, b1, b2, eps, wd, clip_exponent, stats=None):
    ps = init_arrays()
    ms = [np.zeros_like(p) for p in ps]
    vs = [np.zeros_like(p) for p in ps]
    for t in range(steps):  # t = number of calls before this one
        for i in range(len(ps)):
            g = grad(t, i, ps[i])
            if t == 0:
                vs[i] = g * g
                continue
            ps[i] = ps[i] - lr * wd * ps[i]
            n = g / np.maximum(np.sqrt(vs[i]), eps)
            if clip_exponent is not None:
                c = t ** clip_exponent
                if stats is not None:
                    stats["clipped"] = stats.get("clipped", 0) + int(np.sum(np.abs(n) > c))
                n = np.clip(n, -c, c)
            ms[i] = b1 * ms[i] + (1 - b1) * n
            ps[i] = ps[i] - lr * ms[i]
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
    return ps


def torch_params():
    return [torch.tensor(a) for a in init_arrays()]


def run(opt, params, t0, t1):
    for t in range(t0, t1):
        for i, p in enumerate(params):
            p.grad = torch.tensor(grad(t, i, p.detach().numpy()))
        opt.step()


HP = dict(lr=5e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("clip_exponent", [0.25, None])
def test_matches_numpy_reference(foreach, clip_exponent):
    params = torch_params()
    run(ADOPT(params, **HP, clip_exponent=clip_exponent, foreach=foreach), params, 0, STEPS)
    stats = {}
    ref = numpy_adopt(STEPS, HP["lr"], *HP["betas"], HP["eps"], HP["weight_decay"], clip_exponent, stats)
    if clip_exponent is not None:
        assert stats["clipped"] > 0  # the clip is exercised
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.numpy(), r, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("foreach", [True, False])
def test_first_call_only_initializes_v(foreach):
    params = torch_params()
    before = [p.clone() for p in params]
    opt = ADOPT(params, **HP, foreach=foreach)
    run(opt, params, 0, 1)
    for i, (p, b) in enumerate(zip(params, before)):
        assert torch.equal(p, b)  # no update, no weight decay on the first call
        st = opt.state[p]
        assert torch.count_nonzero(st["exp_avg"]) == 0
        np.testing.assert_allclose(st["exp_avg_sq"].numpy(), grad(0, i, b.numpy()) ** 2, rtol=1e-12)
        assert st["step"].item() == 1
    # second call: clip value 1 (= 1**0.25), m = (1-b1) * clip(n), p -= lr*m after decay
    v0 = [opt.state[p]["exp_avg_sq"].clone() for p in params]
    run(opt, params, 1, 2)
    for i, (p, b) in enumerate(zip(params, before)):
        g = grad(1, i, b.numpy())
        n = np.clip(g / np.maximum(np.sqrt(v0[i].numpy()), HP["eps"]), -1.0, 1.0)
        expect = b.numpy() * (1 - HP["lr"] * HP["weight_decay"]) - HP["lr"] * (1 - HP["betas"][0]) * n
        np.testing.assert_allclose(p.numpy(), expect, rtol=1e-12)


def test_foreach_and_reference_paths_agree():
    assert_foreach_matches_reference(lambda ps, foreach: ADOPT(ps, **HP, foreach=foreach),
                                     torch_params, run, STEPS)


@pytest.mark.parametrize("foreach", [True, False])
def test_state_dict_round_trip(foreach):
    assert_state_dict_round_trip(lambda ps: ADOPT(ps, **HP, foreach=foreach),
                                 lambda ps: ADOPT(ps, lr=1.0, foreach=foreach), torch_params, run)


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(betas=(1.0, 0.99)), dict(betas=(0.9, 1.5)), dict(eps=0.0),
                                 dict(eps=-1e-8), dict(weight_decay=-0.1), dict(clip_exponent=-0.25),
                                 dict(clip_exponent="x"), dict(betas=0.9)])
def test_bad_hyperparameters(bad):
    with pytest.raises(ConfigError):
        ADOPT([torch.zeros(2, requires_grad=True)], **bad)


def test_registry_build():
    spec = OPTIMIZERS["adopt"]
    assert spec.defaults == {"lr": 1e-3, "betas": (0.9, 0.9999), "eps": 1e-6, "weight_decay": 0.0,
                             "clip_exponent": 0.25}
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer("adopt", model, lr=1e-2, weight_decay=0.1)
    assert_registry_groups(opt, 1e-2, 0.1, betas=(0.9, 0.9999), eps=1e-6)
    assert isinstance(opt, ADOPT)
    before = model.weight.detach().clone()
    for _ in range(2):  # the first call only initializes v
        opt.zero_grad()
        model(torch.ones(2, 4)).sum().backward()
        opt.step()
    assert not torch.equal(before, model.weight)
    with pytest.raises(ConfigError):
        build_optimizer("adopt", model, eps=-1.0)


def test_bf16_parameter_keeps_fp32_state():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = ADOPT([p], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        p.grad = torch.full((4,), 0.5, dtype=torch.bfloat16)
        opt.step()
    assert opt.state[p]["exp_avg_sq"].dtype == torch.float32
    assert p.dtype == torch.bfloat16 and not torch.equal(p, torch.ones(4, dtype=torch.bfloat16))
