"""LAMB against an independent numpy reference of You et al. 2020's Algorithm 2 (per-tensor trust ratio)."""
import math
from functools import partial

import numpy as np
import pytest
import torch

from helpers import (assert_foreach_matches_reference, assert_registry_groups, assert_state_dict_round_trip,
                    kernels_must_run, quadratic_arrays, quadratic_grad)
from pretrain.errors import ConfigError
from pretrain.optim import OPTIMIZERS, build_optimizer
from pretrain.optim.lamb import LAMB

SHAPES = [(3, 4), (5,), (2, 3, 2), (4,)]
STEPS = 12


init_arrays = partial(quadratic_arrays, SHAPES, zeros=(3,))  # ||p|| = 0 on the first step: trust ratio 1
grad = partial(quadratic_grad, SHAPES, salt=4000)


def numpy_lamb(steps, lr, b1, b2, eps, wd, clamp_value=None, bias_correction=True):
    ps = init_arrays()
    ms = [np.zeros_like(p) for p in ps]
    vs = [np.zeros_like(p) for p in ps]
    for step in range(1, steps + 1):
        for i in range(len(ps)):
            g = grad(step - 1, i, ps[i])
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            if bias_correction:
                m_hat, v_hat = ms[i] / (1 - b1 ** step), vs[i] / (1 - b2 ** step)
            else:
                m_hat, v_hat = ms[i], vs[i]
            r = m_hat / (np.sqrt(v_hat) + eps) + wd * ps[i]
            p_norm = math.sqrt(float(np.sum(ps[i] ** 2)))
            if clamp_value is not None:
                p_norm = min(p_norm, clamp_value)
            r_norm = math.sqrt(float(np.sum(r ** 2)))
            trust = p_norm / r_norm if p_norm > 0 and r_norm > 0 else 1.0
            ps[i] = ps[i] - lr * trust * r
    return ps


def torch_params(dtype=torch.float64):
    return [torch.tensor(a, dtype=dtype) for a in init_arrays()]


def run(opt, params, t0, t1):
    for t in range(t0, t1):
        for i, p in enumerate(params):
            p.grad = torch.tensor(grad(t, i, p.detach().double().numpy()), dtype=p.dtype)
        opt.step()


HP = dict(lr=5e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.3)
VARIANTS = [dict(), dict(clamp_value=1.5), dict(bias_correction=False)]


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_numpy_reference(foreach, variant):
    params = torch_params()
    run(LAMB(params, **HP, **variant, foreach=foreach), params, 0, STEPS)
    ref = numpy_lamb(STEPS, HP["lr"], *HP["betas"], HP["eps"], HP["weight_decay"], **variant)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.numpy(), r, rtol=1e-6, atol=1e-12)
    if variant.get("clamp_value"):  # the clamp is exercised: some tensor has ||p|| above it
        assert max(float(np.linalg.norm(a)) for a in init_arrays()) > variant["clamp_value"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_fp32_fused_kernel_matches_numpy_reference(variant, monkeypatch):
    """With the kernels enabled, fp32 CPU parameters take the fused moments + norms pass (fast/cpu_kernels.py):
    the fp64 NumPy rule to fp32 accuracy; the torch-op fallback is never used."""
    kernels_must_run(monkeypatch, "lamb.lamb_moments_norms_")
    params = torch_params(torch.float32)
    run(LAMB(params, **HP, **variant), params, 0, STEPS)
    ref = numpy_lamb(STEPS, HP["lr"], *HP["betas"], HP["eps"], HP["weight_decay"], **variant)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.numpy(), r, rtol=2e-5, atol=1e-6)


def test_first_step():
    """Step 1 with bias correction: m_hat = g, v_hat = g^2, r = g/(|g|+eps) + wd*p."""
    params = torch_params()
    before = [p.clone() for p in params]
    run(LAMB(params, **HP), params, 0, 1)
    for i, (p, b) in enumerate(zip(params, before)):
        g = grad(0, i, b.numpy())
        r = g / (np.abs(g) + HP["eps"]) + HP["weight_decay"] * b.numpy()
        trust = np.linalg.norm(b.numpy()) / np.linalg.norm(r) if np.linalg.norm(b.numpy()) > 0 else 1.0
        np.testing.assert_allclose(p.numpy(), b.numpy() - HP["lr"] * trust * r, rtol=1e-10, atol=1e-14)


def test_foreach_and_reference_paths_agree():
    assert_foreach_matches_reference(lambda ps, foreach: LAMB(ps, **HP, clamp_value=2.0, foreach=foreach),
                                     torch_params, run, STEPS)


@pytest.mark.parametrize("foreach", [True, False])
def test_state_dict_round_trip(foreach):
    assert_state_dict_round_trip(lambda ps: LAMB(ps, **HP, foreach=foreach),
                                 lambda ps: LAMB(ps, lr=1.0, foreach=foreach), torch_params, run)


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(betas=(1.0, 0.99)), dict(betas=(0.9, -0.5)), dict(eps=0.0),
                                 dict(weight_decay=-0.01), dict(clamp_value=0.0), dict(clamp_value=-10.0),
                                 dict(bias_correction="yes"), dict(eps="small")])
def test_bad_hyperparameters(bad):
    with pytest.raises(ConfigError):
        LAMB([torch.zeros(2, requires_grad=True)], **bad)


def test_registry_build():
    spec = OPTIMIZERS["lamb"]
    assert spec.defaults == {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 0.01,
                             "clamp_value": None, "bias_correction": True}
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer("lamb", model, lr=1e-2)
    assert_registry_groups(opt, 1e-2, 0.01, betas=(0.9, 0.999), eps=1e-6)
    assert isinstance(opt, LAMB)
    before = model.weight.detach().clone()
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)
    with pytest.raises(ConfigError):
        build_optimizer("lamb", model, betas=[0.9, 1.2])


def test_bf16_parameter_keeps_fp32_state():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = LAMB([p], lr=1e-1)
    p.grad = torch.full((4,), 0.5, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[p]["exp_avg_sq"].dtype == torch.float32
    assert p.dtype == torch.bfloat16 and not torch.equal(p, torch.ones(4, dtype=torch.bfloat16))
