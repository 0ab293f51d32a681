"""Lion against an independent numpy reference of Chen et al. 2023's update rule."""
from functools import partial

import numpy as np
import pytest
import torch

from helpers import (assert_foreach_matches_reference, assert_registry_groups, assert_state_dict_round_trip,
                    quadratic_arrays, quadratic_grad)
from pretrain.errors import ConfigError
from pretrain.optim import OPTIMIZERS, build_optimizer
from pretrain.optim.lion import Lion

SHAPES = [(3, 4), (5,), (2, 3, 2)]
STEPS = 12


init_arrays = partial(quadratic_arrays, SHAPES)
grad = partial(quadratic_grad, SHAPES, salt=1000)


def numpy_lion(steps, lr, b1, b2, wd):
    ps = init_arrays()
    ms = [np.zeros_like(p) for p in ps]
    for t in range(steps):
        for i in range(len(ps)):
            g = grad(t, i, ps[i])
            ps[i] = ps[i] * (1 - lr * wd)
            c = b1 * ms[i] + (1 - b1) * g
            ps[i] = ps[i] - lr * np.sign(c)
            ms[i] = b2 * ms[i] + (1 - b2) * g
    return ps


def torch_params():
    return [torch.tensor(a) for a in init_arrays()]


def run(opt, params, t0, t1):
    for t in range(t0, t1):
        for i, p in enumerate(params):
            p.grad = torch.tensor(grad(t, i, p.detach().numpy()))
        opt.step()


HP = dict(lr=3e-2, betas=(0.9, 0.99), weight_decay=0.5)


@pytest.mark.parametrize("foreach", [True, False])
def test_matches_numpy_reference(foreach):
    params = torch_params()
    run(Lion(params, **HP, foreach=foreach), params, 0, STEPS)
    ref = numpy_lion(STEPS, HP["lr"], *HP["betas"], HP["weight_decay"])
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.numpy(), r, rtol=1e-6, atol=1e-12)


def test_first_step_is_sign_of_gradient():
    params = torch_params()
    before = [p.clone() for p in params]
    run(Lion(params, lr=0.1, betas=(0.9, 0.99), weight_decay=0.2), params, 0, 1)
    for i, (p, b) in enumerate(zip(params, before)):
        g = grad(0, i, b.numpy())
        np.testing.assert_allclose(p.numpy(), b.numpy() * (1 - 0.02) - 0.1 * np.sign(g), rtol=1e-12)


def test_foreach_and_reference_paths_agree():
    assert_foreach_matches_reference(lambda ps, foreach: Lion(ps, **HP, foreach=foreach),
                                     torch_params, run, STEPS)


@pytest.mark.parametrize("foreach", [True, False])
def test_state_dict_round_trip(foreach):
    # hyperparameters come back from the state dict
    opt2, params2 = assert_state_dict_round_trip(lambda ps: Lion(ps, **HP, foreach=foreach),
                                                 lambda ps: Lion(ps, lr=1.0, foreach=foreach), torch_params, run)
    assert opt2.state[params2[0]]["step"].item() == 10


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(betas=(1.0, 0.99)), dict(betas=(0.9, -0.1)),
                                 dict(weight_decay=-0.1), dict(betas=(0.9,)), dict(lr="fast")])
def test_bad_hyperparameters(bad):
    with pytest.raises(ConfigError):
        Lion([torch.zeros(2, requires_grad=True)], **bad)


def test_registry_build():
    spec = OPTIMIZERS["lion"]
    assert spec.defaults == {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer("lion", model, lr=1e-3, weight_decay=0.1)
    assert_registry_groups(opt, 1e-3, 0.1, betas=(0.9, 0.99))
    assert isinstance(opt, Lion)
    before = model.weight.detach().clone()
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)
    with pytest.raises(ConfigError):
        build_optimizer("lion", model, lr=-1.0)


def test_bf16_parameter_keeps_fp32_state():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = Lion([p], lr=1e-2, weight_decay=0.1)
    p.grad = torch.full((4,), 0.5, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = Lion([q])
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state[q]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(opt2.state[q]["exp_avg"], opt.state[p]["exp_avg"])
