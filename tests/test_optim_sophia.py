"""Sophia-G against an independent numpy reference of Liu et al. 2023's update rule (official SophiaG)."""
import io
from functools import partial

import numpy as np
import pytest
import torch

from helpers import (assert_foreach_matches_reference, assert_registry_groups, quadratic_arrays, quadratic_grad,
                    quadratic_noise)
from pretrain.errors import ConfigError
from pretrain.optim import OPTIMIZERS, build_optimizer, hessian_interval
from pretrain.optim.sophia import Sophia, gnb_sampled_loss

SHAPES = [(3, 4), (5,), (2, 3, 2)]
STEPS = 12
K = 3  # Hessian update interval in these tests (steps 2, 5, 8, 11)


init_arrays = partial(quadratic_arrays, SHAPES)
noise = partial(quadratic_noise, SHAPES, salt=3000)
grad = partial(quadratic_grad, SHAPES, salt=3000)


def g_hat(t, i):
    """The 'sampled-label' gradient the loop would put in p.grad before update_hessian()."""
    return 0.5 * noise(t, i, salt=9000)


def numpy_sophia(steps, lr, b1, b2, rho, wd, bs, k):
    ps = init_arrays()
    ms = [np.zeros_like(p) for p in ps]
    hs = [np.zeros_like(p) for p in ps]
    fracs = []
    for t in range(steps):
        unclipped, total = 0, 0
        for i in range(len(ps)):
            g = grad(t, i, ps[i])
            ps[i] = ps[i] * (1 - lr * wd)
            ms[i] = b1 * ms[i] + (1 - b1) * g
            for j in np.ndindex(ps[i].shape):
                ratio = abs(ms[i][j]) / (rho * bs * hs[i][j] + 1e-15)
                unclipped += ratio < 1
                total += 1
                ps[i][j] -= lr * np.sign(ms[i][j]) * min(ratio, 1.0)
        fracs.append(unclipped / total)
        if t % k == k - 1:
            for i in range(len(ps)):
                hs[i] = b2 * hs[i] + (1 - b2) * g_hat(t, i) ** 2
    return ps, hs, fracs


def torch_params():
    return [torch.tensor(a) for a in init_arrays()]


def run(opt, params, t0, t1, k=K, fracs=None):
    for t in range(t0, t1):
        for i, p in enumerate(params):
            p.grad = torch.tensor(grad(t, i, p.detach().numpy()))
        opt.step()
        if fracs is not None:
            fracs.append(opt.metrics()["sophia_unclipped_frac"])
        if t % k == k - 1:
            for i, p in enumerate(params):
                p.grad = torch.tensor(g_hat(t, i))
            opt.update_hessian()


HP = dict(lr=2e-2, betas=(0.9, 0.8), rho=0.04, weight_decay=0.2, bs=100)


@pytest.mark.parametrize("foreach", [True, False])
def test_matches_numpy_reference(foreach):
    params = torch_params()
    opt = Sophia(params, **HP, k=K, foreach=foreach)
    fracs = []
    run(opt, params, 0, STEPS, fracs=fracs)
    ref, ref_h, ref_fracs = numpy_sophia(STEPS, HP["lr"], *HP["betas"], HP["rho"], HP["weight_decay"], HP["bs"], K)
    for p, r, h in zip(params, ref, ref_h):
        np.testing.assert_allclose(p.numpy(), r, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(opt.state[p]["hessian"].numpy(), h, rtol=1e-12)
    np.testing.assert_allclose(fracs, ref_fracs, rtol=1e-12)
    assert ref_fracs[0] == 0.0  # h = 0 before the first estimate: every coordinate clipped, sign(m) steps
    assert 0.0 < ref_fracs[-1] < 1.0  # both branches of the clip exercised


def test_update_hessian_with_known_gradient():
    p = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    opt = Sophia([p], lr=0.0, betas=(0.9, 0.5), bs=10, weight_decay=0.0, k=K)
    assert hessian_interval(opt) == K
    expect = np.zeros(3)
    for t in range(7):
        p.grad = torch.ones(3, dtype=torch.float64)
        opt.step()
        if t % K == K - 1:
            known = np.array([2.0, -1.0, 0.5]) * (t + 1)
            p.grad = torch.tensor(known)
            opt.update_hessian()
            expect = 0.5 * expect + 0.5 * known ** 2
        np.testing.assert_allclose(opt.state[p]["hessian"].numpy(), expect, rtol=1e-15)
    np.testing.assert_allclose(expect, 0.5 * 0.5 * np.array([4.0, 1.0, 0.25]) * 9
                               + 0.5 * np.array([4.0, 1.0, 0.25]) * 36)


def test_foreach_and_reference_paths_agree():
    assert_foreach_matches_reference(lambda ps, foreach: Sophia(ps, **HP, k=K, foreach=foreach),
                                     torch_params, run, STEPS)


@pytest.mark.parametrize("foreach", [True, False])
def test_state_dict_round_trip(foreach):
    params = torch_params()
    opt = Sophia(params, **HP, k=K, foreach=foreach)
    run(opt, params, 0, 5)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    params2 = [p.clone() for p in params]
    opt2 = Sophia(params2, lr=1.0, k=K, foreach=foreach)  # bs and the rest come back from the state dict
    opt2.load_state_dict(torch.load(buf))
    assert opt2.param_groups[0]["bs"] == HP["bs"]
    run(opt, params, 5, 10)
    run(opt2, params2, 5, 10)
    for a, b in zip(params, params2):
        assert torch.equal(a, b)


def test_missing_bs_raises_when_stepping_and_step_bs_overrides():
    p = torch.zeros(3, dtype=torch.float64)
    opt = Sophia([p])
    p.grad = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ConfigError, match="tokens per optimizer step"):
        opt.step()
    opt.step(bs=4096)  # explicit bs
    opt.param_groups[0]["bs"] = 4096  # what the training loop does
    opt.step()
    assert opt.state[p]["step"].item() == 2


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(betas=(1.0, 0.99)), dict(betas=(0.9, 1.0)), dict(rho=-0.1),
                                 dict(weight_decay=-0.1), dict(k=0), dict(k=2.5), dict(bs=0), dict(bs=-5),
                                 dict(bs="many")])
def test_bad_hyperparameters(bad):
    with pytest.raises(ConfigError):
        Sophia([torch.zeros(2, requires_grad=True)], **bad)


def test_registry_build():
    spec = OPTIMIZERS["sophia"]
    assert spec.defaults == {"lr": 1e-4, "betas": (0.965, 0.99), "rho": 0.04, "weight_decay": 0.1, "k": 10,
                             "bs": None}
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer("sophia", model, lr=1e-3, bs=8)
    assert_registry_groups(opt, 1e-3, 0.1, bs=8, rho=0.04, betas=(0.965, 0.99))
    assert isinstance(opt, Sophia) and hessian_interval(opt) == 10
    before = model.weight.detach().clone()
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)
    assert 0.0 <= opt.metrics()["sophia_unclipped_frac"] <= 1.0


def test_gnb_sampled_loss_gives_finite_loss_and_nonzero_gradient():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 11)
    x = torch.randn(2, 5, 8)
    logits = model(x)  # (batch, seq, vocab)
    loss = gnb_sampled_loss(logits, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.weight.grad.abs().sum() > 0
    # the sampled labels follow the model's distribution: E[grad of CE wrt logits] = 0 (Bartlett identity)
    logits = torch.tensor([[2.0, -1.0, 0.5]], requires_grad=True).expand(20000, 3)
    loss = gnb_sampled_loss(logits, generator=torch.Generator().manual_seed(1))
    (g,) = torch.autograd.grad(loss, logits)
    assert g.sum(0).abs().max() < 0.02
    # mask drops positions
    m = torch.tensor([[True, False, True, True, False]] * 2)
    assert torch.isfinite(gnb_sampled_loss(model(x), mask=m))


def test_bf16_parameter_keeps_fp32_state():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = Sophia([p], lr=1e-2, bs=16)
    p.grad = torch.full((4,), 0.5, dtype=torch.bfloat16)
    opt.step()
    opt.update_hessian()
    assert opt.state[p]["hessian"].dtype == torch.float32 and opt.state[p]["hessian"].abs().sum() > 0
