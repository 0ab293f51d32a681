"""LARS against an independent numpy reference of You et al. 2017's update rule."""
import math
from functools import partial

import numpy as np
import pytest
import torch

from helpers import (assert_foreach_matches_reference, assert_registry_groups, assert_state_dict_round_trip,
                    kernels_must_run, quadratic_arrays, quadratic_grad)
from pretrain.errors import ConfigError
from pretrain.optim import OPTIMIZERS, build_optimizer
from pretrain.optim.lars import LARS

SHAPES = [(3, 4), (5,), (2, 3, 2), (4, 2)]
STEPS = 12


init_arrays = partial(quadratic_arrays, SHAPES, zeros=(3,))  # ||w|| = 0 on the first step: trust ratio 1
grad = partial(quadratic_grad, SHAPES, salt=5000)


def numpy_lars(steps, lr, mu, wd, tc, eps, exclude_vectors):
    ps = init_arrays()
    bufs = [np.zeros_like(p) for p in ps]
    for t in range(steps):
        for i in range(len(ps)):
            g = grad(t, i, ps[i])
            if exclude_vectors and ps[i].ndim < 2:
                d = g
            else:
                w_norm = math.sqrt(float(np.sum(ps[i] ** 2)))
                g_norm = math.sqrt(float(np.sum(g ** 2)))
                trust = tc * w_norm / (g_norm + wd * w_norm + eps) if w_norm > 0 and g_norm > 0 else 1.0
                d = (g + wd * ps[i]) * trust
            bufs[i] = mu * bufs[i] + d
            ps[i] = ps[i] - lr * bufs[i]
    return ps


def torch_params(dtype=torch.float64):
    return [torch.tensor(a, dtype=dtype) for a in init_arrays()]


def run(opt, params, t0, t1):
    for t in range(t0, t1):
        for i, p in enumerate(params):
            p.grad = torch.tensor(grad(t, i, p.detach().double().numpy()), dtype=p.dtype)
        opt.step()


HP = dict(lr=0.5, momentum=0.8, weight_decay=0.05, trust_coefficient=0.02, eps=1e-8)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("exclude_vectors", [True, False])
def test_matches_numpy_reference(foreach, exclude_vectors):
    params = torch_params()
    run(LARS(params, **HP, exclude_vectors=exclude_vectors, foreach=foreach), params, 0, STEPS)
    ref = numpy_lars(STEPS, *HP.values(), exclude_vectors)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.numpy(), r, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("exclude_vectors", [True, False])
def test_fp32_fused_norm_kernel_matches_numpy_reference(exclude_vectors, monkeypatch):
    """With the kernels enabled, fp32 CPU parameters take the fused ||w||^2, ||g||^2 kernel (fast/cpu_kernels.py):
    the fp64 NumPy rule to fp32 accuracy; the torch-op fallback is never used."""
    kernels_must_run(monkeypatch, "lars.sq_norms")
    params = torch_params(torch.float32)
    run(LARS(params, **HP, exclude_vectors=exclude_vectors), params, 0, STEPS)
    ref = numpy_lars(STEPS, *HP.values(), exclude_vectors)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.numpy(), r, rtol=2e-5, atol=1e-6)


def test_first_step():
    params = torch_params()
    before = [p.clone() for p in params]
    run(LARS(params, **HP), params, 0, 1)
    w, b = params[0].numpy(), before[0].numpy()
    g = grad(0, 0, b)
    trust = HP["trust_coefficient"] * np.linalg.norm(b) / (np.linalg.norm(g) + HP["weight_decay"] * np.linalg.norm(b)
                                                          + HP["eps"])
    np.testing.assert_allclose(w, b - HP["lr"] * (g + HP["weight_decay"] * b) * trust, rtol=1e-12)
    # the vector (ndim 1) is excluded: plain SGD step, no weight decay
    np.testing.assert_allclose(params[1].numpy(), before[1].numpy() - HP["lr"] * grad(0, 1, before[1].numpy()),
                               rtol=1e-12)


def test_vector_kind_group_skips_trust_and_decay():
    """A group of kind 'vector' is excluded even for a 2-D tensor; a 'hidden' group is not."""
    a = torch.ones(2, 3, dtype=torch.float64)
    b = torch.ones(2, 3, dtype=torch.float64)
    opt = LARS([{"params": [a], "kind": "vector"}, {"params": [b], "kind": "hidden"}], **HP)
    a.grad = torch.full((2, 3), 0.5, dtype=torch.float64)
    b.grad = torch.full((2, 3), 0.5, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(a, torch.full((2, 3), 1 - HP["lr"] * 0.5, dtype=torch.float64))
    assert not torch.allclose(a, b)


def test_foreach_and_reference_paths_agree():
    assert_foreach_matches_reference(lambda ps, foreach: LARS(ps, **HP, foreach=foreach),
                                     torch_params, run, STEPS)


@pytest.mark.parametrize("foreach", [True, False])
def test_state_dict_round_trip(foreach):
    assert_state_dict_round_trip(lambda ps: LARS(ps, **HP, foreach=foreach),
                                 lambda ps: LARS(ps, lr=0.01, foreach=foreach), torch_params, run)


@pytest.mark.parametrize("bad", [dict(lr=-0.1), dict(momentum=1.0), dict(momentum=-0.1), dict(weight_decay=-1e-4),
                                 dict(trust_coefficient=0.0), dict(eps=-1.0), dict(exclude_vectors="no"),
                                 dict(lr=None)])
def test_bad_hyperparameters(bad):
    with pytest.raises(ConfigError):
        LARS([torch.zeros(2, requires_grad=True)], **bad)


def test_registry_build():
    spec = OPTIMIZERS["lars"]
    assert spec.defaults == {"lr": 1.0, "momentum": 0.9, "weight_decay": 5e-4, "trust_coefficient": 1e-3,
                             "eps": 1e-8, "exclude_vectors": True}
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer("lars", model, lr=0.5)
    assert_registry_groups(opt, 0.5, 5e-4, momentum=0.9, trust_coefficient=1e-3)
    assert isinstance(opt, LARS)
    assert {g["kind"] for g in opt.param_groups} == {"hidden", "vector"}
    before = model.weight.detach().clone()
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)
    with pytest.raises(ConfigError):
        build_optimizer("lars", model, momentum=1.5)


def test_bf16_parameter_keeps_fp32_state():
    p = torch.nn.Parameter(torch.ones(2, 2, dtype=torch.bfloat16))
    opt = LARS([p], lr=10.0)
    p.grad = torch.full((2, 2), 0.5, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[p]["momentum_buffer"].dtype == torch.float32
    assert p.dtype == torch.bfloat16 and not torch.equal(p, torch.ones(2, 2, dtype=torch.bfloat16))
