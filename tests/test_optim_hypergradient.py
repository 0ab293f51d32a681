"""SGD-HD and Adam-HD against independent NumPy loops of Baydin et al. 2018's rules (with this project's schedule
interaction: lr_t = hd_lr * group["lr"] / group["initial_lr"])."""
import copy
from functools import partial

import numpy as np
import pytest
import torch

from helpers import kernels_must_run, regression_grads, regression_loss_torch, regression_problem
from pretrain.errors import ConfigError
from pretrain.optim import OPTIMIZERS, build_optimizer
from pretrain.optim.hypergradient import AdamHD, SGDHD

STEPS = 12
FACTORS = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]  # a warmup + decay schedule


_problem = partial(regression_problem, steps=STEPS, offset=0.3, noise_scale=0.3, init_scale=0.1)


def hd_numpy(w0, b0, batches, groups, method, hyper_lr, factors, momentum=0.0, nesterov=False,
             betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """`groups`: list of (indices into [w, b], initial lr). Vectors are flattened and concatenated per group."""
    params = [w0.copy(), b0.copy()]
    shapes = [p.shape for p in params]
    alphas = [lr for _, lr in groups]
    mem = [{"u_prev": None, "buf": None, "m": None, "v": None} for _ in groups]
    history, alpha_history = [], []
    for t, (x, y) in enumerate(batches, start=1):
        grads = regression_grads(params[0], params[1], x, y)
        for k, (idx, _) in enumerate(groups):
            p = np.concatenate([params[i].ravel() for i in idx])
            g = np.concatenate([grads[i].ravel() for i in idx])
            s = mem[k]
            if method == "sgd":
                g = g + weight_decay * p  # L2
            # hypergradient step on alpha: h = g_t . u_{t-1} (0 on the first step)
            h = 0.0 if s["u_prev"] is None else sum(g[j] * s["u_prev"][j] for j in range(len(g)))
            alphas[k] = alphas[k] + hyper_lr * h
            lr_t = alphas[k] * factors[t - 1]
            if method == "sgd":
                if momentum:
                    s["buf"] = g.copy() if s["buf"] is None else momentum * s["buf"] + g
                    u = g + momentum * s["buf"] if nesterov else s["buf"].copy()
                else:
                    u = g
                p = p - lr_t * u
            else:
                if s["m"] is None:
                    s["m"], s["v"] = np.zeros_like(p), np.zeros_like(p)
                s["m"] = betas[0] * s["m"] + (1 - betas[0]) * g
                s["v"] = betas[1] * s["v"] + (1 - betas[1]) * g * g
                u = (s["m"] / (1 - betas[0] ** t)) / (np.sqrt(s["v"] / (1 - betas[1] ** t)) + eps)
                p = p * (1 - lr_t * weight_decay) - lr_t * u  # decoupled
            s["u_prev"] = u
            offset = 0
            for i in idx:
                n = int(np.prod(shapes[i]))
                params[i] = p[offset:offset + n].reshape(shapes[i])
                offset += n
        history.append([q.copy() for q in params])
        alpha_history.append(list(alphas))
    return history, alpha_history


def _torch_run(opt, w, b, batches, factors, start=0):
    history, alphas = [], []
    for t, (x, y) in enumerate(batches, start=start):
        for g in opt.param_groups:  # what the training loop's schedule does
            g["lr"] = g["initial_lr"] * factors[t]
        opt.zero_grad()
        regression_loss_torch(w, b, x, y).backward()
        opt.step()
        history.append([w.detach().numpy().copy(), b.detach().numpy().copy()])
        alphas.append([g["hd_lr"] for g in opt.param_groups])
    return history, alphas


def _build(cls, w0, b0, grouping, foreach, dtype=torch.float64, **hp):
    w = torch.tensor(w0, dtype=dtype, requires_grad=True)
    b = torch.tensor(b0, dtype=dtype, requires_grad=True)
    tensors = [w, b]
    groups = [{"params": [tensors[i] for i in idx], "lr": lr} for idx, lr in grouping]
    return cls(groups, foreach=foreach, **hp), w, b


CASES = [
    ("sgd", SGDHD, dict(hyper_lr=0.02, weight_decay=0.1)),
    ("sgd", SGDHD, dict(hyper_lr=0.02, momentum=0.8, weight_decay=0.1)),
    ("sgd", SGDHD, dict(hyper_lr=0.02, momentum=0.8, nesterov=True, weight_decay=0.1)),
    ("adam", AdamHD, dict(hyper_lr=1e-3, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1)),
]
GROUPINGS = [[((0, 1), 0.05)], [((0,), 0.05), ((1,), 0.02)]]  # the paper's single group; one alpha per group


@pytest.mark.parametrize("method,cls,hp", CASES)
@pytest.mark.parametrize("grouping", GROUPINGS, ids=["one_group", "two_groups"])
@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("scheduled", [False, True], ids=["no_schedule", "schedule"])
def test_matches_numpy_reference(method, cls, hp, grouping, foreach, scheduled):
    w0, b0, batches = _problem()
    factors = FACTORS if scheduled else [1.0] * len(FACTORS)
    expected, expected_alpha = hd_numpy(w0, b0, batches, grouping, method, factors=factors, **hp)
    opt, w, b = _build(cls, w0, b0, grouping, foreach, **hp)
    got, got_alpha = _torch_run(opt, w, b, batches, factors)
    assert got_alpha[0] == [lr for _, lr in grouping]  # first step: no previous direction, lr unchanged
    for t in range(STEPS):
        for gp, ep in zip(got[t], expected[t]):
            np.testing.assert_allclose(gp, ep, rtol=1e-6, atol=1e-12, err_msg=f"step {t + 1}")
        np.testing.assert_allclose(got_alpha[t], expected_alpha[t], rtol=1e-6, err_msg=f"alpha, step {t + 1}")
    # the hypergradient really moved the rate, and the schedule never overwrote it
    assert abs(got_alpha[-1][0] / grouping[0][1] - 1) > 1e-3
    assert opt.metrics() == {"hd_lr": got_alpha[-1][0]}
    assert opt.param_groups[0]["lr"] == pytest.approx(grouping[0][1] * factors[STEPS - 1])


@pytest.mark.parametrize("method,cls,hp", [*CASES[:2], CASES[3]])
@pytest.mark.parametrize("grouping", GROUPINGS, ids=["one_group", "two_groups"])
def test_fp32_fused_kernel_path_matches_numpy_reference(method, cls, hp, grouping, monkeypatch):
    """With the kernels enabled, fp32 CPU parameters take the fused first-pass kernels (fast/cpu_kernels.py) for
    SGD-HD, SGD-HD with heavy ball momentum (dot + direction update) and Adam-HD (dot + moments): the same rule as
    the fp64 NumPy loop, to fp32 accuracy; the torch-op fallback is never used."""
    kernels_must_run(monkeypatch, "hypergradient.dot_update_", "hypergradient.dot_adam_moments_")
    w0, b0, batches = _problem()
    expected, expected_alpha = hd_numpy(w0, b0, batches, grouping, method, factors=FACTORS, **hp)
    opt, w, b = _build(cls, w0, b0, grouping, True, dtype=torch.float32, **hp)
    got, got_alpha = _torch_run(opt, w, b, batches, FACTORS)
    for t in range(STEPS):
        for gp, ep in zip(got[t], expected[t]):
            np.testing.assert_allclose(gp, ep, rtol=2e-5, atol=1e-6, err_msg=f"step {t + 1}")
        np.testing.assert_allclose(got_alpha[t], expected_alpha[t], rtol=2e-5, err_msg=f"alpha, step {t + 1}")


@pytest.mark.parametrize("method,cls,hp", CASES)
def test_foreach_and_reference_paths_agree(method, cls, hp):
    w0, b0, batches = _problem(seed=3)
    runs = []
    for foreach in (True, False):
        opt, w, b = _build(cls, w0, b0, GROUPINGS[1], foreach, **hp)
        runs.append(_torch_run(opt, w, b, batches, FACTORS))
    for h1, h2 in zip(runs[0][0], runs[1][0]):
        for x1, x2 in zip(h1, h2):
            np.testing.assert_allclose(x1, x2, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-13)


@pytest.mark.parametrize("method,cls,hp", CASES)
def test_state_dict_round_trip_continues_identically(method, cls, hp):
    w0, b0, batches = _problem(seed=4)
    opt, w, b = _build(cls, w0, b0, GROUPINGS[1], True, **hp)
    full, full_alpha = _torch_run(opt, w, b, batches, FACTORS)

    opt, w, b = _build(cls, w0, b0, GROUPINGS[1], True, **hp)
    _torch_run(opt, w, b, batches[:5], FACTORS)
    saved = copy.deepcopy(opt.state_dict())
    assert [g["hd_lr"] for g in saved["param_groups"]] == [g["hd_lr"] for g in opt.param_groups]
    opt2, w2, b2 = _build(cls, w.detach().numpy(), b.detach().numpy(), GROUPINGS[1], True, **hp)
    opt2.load_state_dict(saved)
    resumed, resumed_alpha = _torch_run(opt2, w2, b2, batches[5:], FACTORS, start=5)
    assert resumed_alpha == full_alpha[5:]
    for h1, h2 in zip(full[5:], resumed):
        for x1, x2 in zip(h1, h2):
            np.testing.assert_array_equal(x1, x2)


def test_zero_initial_lr_starts_from_zero():
    w0, b0, batches = _problem(seed=5)
    opt, w, b = _build(SGDHD, w0, b0, [((0, 1), 0.0)], True, hyper_lr=0.05)
    _, alphas = _torch_run(opt, w, b, batches, [1.0] * len(FACTORS))
    assert alphas[0] == [0.0] and alphas[-1][0] > 0  # raised from 0 by the hypergradient (README of the repo)
    assert not np.allclose(w.detach().numpy(), w0)


@pytest.mark.parametrize("name,cls,bad", [
    ("sgd_hd", SGDHD, {"hyper_lr": -1e-3}), ("sgd_hd", SGDHD, {"lr": -0.1}), ("sgd_hd", SGDHD, {"momentum": 1.0}),
    ("sgd_hd", SGDHD, {"nesterov": True}), ("sgd_hd", SGDHD, {"weight_decay": -1.0}),
    ("adam_hd", AdamHD, {"hyper_lr": -1e-7}), ("adam_hd", AdamHD, {"betas": (0.9, 1.0)}),
    ("adam_hd", AdamHD, {"eps": -1.0}), ("adam_hd", AdamHD, {"weight_decay": -0.1}),
])
def test_bad_hyperparameters_raise_config_error(name, cls, bad):
    with pytest.raises(ConfigError):
        cls([torch.zeros(2, requires_grad=True)], **bad)
    with pytest.raises(ConfigError):
        build_optimizer(name, torch.nn.Linear(4, 3), **bad)


@pytest.mark.parametrize("name,cls", [("sgd_hd", SGDHD), ("adam_hd", AdamHD)])
def test_builds_from_registry(name, cls):
    assert OPTIMIZERS[name].source == "here"
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer(name, model)
    assert isinstance(opt, cls)
    assert all(g["hd_lr"] == g["initial_lr"] == OPTIMIZERS[name].defaults["lr"] for g in opt.param_groups)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    assert set(opt.metrics()) == {"hd_lr"}
