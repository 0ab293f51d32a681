"""The fused CPU kernels of pretrain.optim.fast.cpu_kernels against NumPy, the plain torch-op functions they
replace, and torch.compile. The kernels are opt-in: enabled for each test here (`fast.enable_kernels`)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pretrain.optim import _common, fast, hypergradient, lamb
from pretrain.optim.fast import cpu_kernels


@pytest.fixture(autouse=True)
def _kernels_enabled(monkeypatch):
    monkeypatch.setattr(fast, "_enabled", fast._enabled)  # the previous state comes back after each test
    fast.enable_kernels()


# what the optimizers call for each pass: the fused kernel for eligible tensors, else the plain rule of its module
def dot_update_(*args):
    return fast.kernel("dot_update_", hypergradient.dot_update_)(*args)


def sq_norms(*args):
    return fast.kernel("sq_norms", _common.sq_norms)(*args)


def lamb_moments_norms_(*args):
    return fast.kernel("lamb_moments_norms_", lamb.lamb_moments_norms_)(*args)


def dot_adam_moments_(*args):
    return fast.kernel("dot_adam_moments_", hypergradient.dot_adam_moments_)(*args)


# sizes around the vector width (16), the unrolled block, and the 16384-element chunk (several chunks + a tail)
SHAPES = [(1,), (15,), (16,), (17,), (33,), (3, 7), (16384,), (40000,), (130, 257)]


def _tensors(seed):
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.normal(size=s).astype(np.float32)) for s in SHAPES]


def test_kernels_are_built_here():
    assert cpu_kernels.available(), cpu_kernels._failed


@pytest.mark.parametrize("a,b", [(0.0, 1.0), (0.9, 1.0), (0.5, -2.0)])
def test_dot_update_against_numpy(a, b):
    gs, qs = _tensors(0), _tensors(1)
    g_np = [g.numpy().copy() for g in gs]
    q_np = [q.numpy().copy() for q in qs]
    h = dot_update_(gs, qs, a, b)
    assert h.dtype == torch.float64 and h.ndim == 0
    expected = sum(float(np.dot(g.astype(np.float64).ravel(), q.astype(np.float64).ravel()))
                   for g, q in zip(g_np, q_np))
    scale = sum(float(np.abs(g.astype(np.float64) * q).sum()) for g, q in zip(g_np, q_np))
    assert abs(float(h) - expected) <= 1e-6 * scale
    for q, gn, qn in zip(qs, g_np, q_np):
        # fp32 multiply, then add: bitwise what q.mul_(a).add_(g, alpha=b) gives (a copy for a=0, b=1)
        want = gn if (a, b) == (0.0, 1.0) else np.float32(a) * qn + np.float32(b) * gn
        np.testing.assert_array_equal(q.numpy(), want)


def test_dot_update_matches_torch_ops_bitwise_on_the_update():
    gs, qs = _tensors(2), _tensors(3)
    qs_ref = [q.clone() for q in qs]
    dot_update_(gs, qs, 0.9, 1.0)
    torch._foreach_mul_(qs_ref, 0.9)
    torch._foreach_add_(qs_ref, gs)
    for q, r in zip(qs, qs_ref):
        assert torch.equal(q, r)


def test_sq_norms_against_numpy():
    xs, ys = _tensors(4), _tensors(5)
    out = sq_norms(xs, ys)
    assert out.shape == (len(SHAPES), 2) and out.dtype == torch.float64
    for k, (x, y) in enumerate(zip(xs, ys)):
        for j, t in enumerate((x, y)):
            want = float((t.numpy().astype(np.float64) ** 2).sum())
            assert float(out[k, j]) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("wd,steps", [(0.0, (1, 1, 1, 1, 1, 1, 1, 1, 1)), (0.1, (1, 2, 3, 4, 5, 6, 7, 8, 9))])
def test_lamb_moments_norms_against_numpy(wd, steps, monkeypatch):
    b1, b2, eps = 0.9, 0.99, 1e-6
    gs, ws, ms = _tensors(10), _tensors(11), _tensors(12)
    vs = [t.abs() for t in _tensors(13)]
    c1s = [1 - b1 ** t for t in steps]
    c2s = [1 - b2 ** t for t in steps]
    g_np, w_np, m_np, v_np = ([t.numpy().astype(np.float64) for t in ts] for ts in (gs, ws, ms, vs))
    ms2, vs2 = [m.clone() for m in ms], [v.clone() for v in vs]
    out, rs = lamb_moments_norms_(gs, ws, ms, vs, (b1, b2), c1s, c2s, eps, wd)
    assert rs is None  # the kernel ran: r is not stored
    for k in range(len(SHAPES)):
        m = b1 * m_np[k] + (1 - b1) * g_np[k]
        v = b2 * v_np[k] + (1 - b2) * g_np[k] ** 2
        np.testing.assert_allclose(ms[k].numpy(), m, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(vs[k].numpy(), v, rtol=1e-6, atol=1e-7)
        r = (m / c1s[k]) / (np.sqrt(v / c2s[k]) + eps) + wd * w_np[k]
        assert float(out[k, 0]) == pytest.approx(float((w_np[k] ** 2).sum()), rel=1e-6)
        assert float(out[k, 1]) == pytest.approx(float((r ** 2).sum()), rel=1e-5)
    # the torch-op version: same moments and norms, and it hands back r
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    out2, rs2 = lamb_moments_norms_(gs, ws, ms2, vs2, (b1, b2), c1s, c2s, eps, wd)
    assert len(rs2) == len(SHAPES)
    torch.testing.assert_close(out2, out, rtol=1e-5, atol=0)
    for a, b in zip(ms + vs, ms2 + vs2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_dot_adam_moments_against_numpy(monkeypatch):
    """h uses each tensor's moments before the update, only where use[k]; eps=0 with zero moments (a tensor's first
    step, use=False) gives no NaN."""
    b1, b2, eps = 0.9, 0.99, 0.0
    gs, ms = _tensors(14), _tensors(15)
    vs = [t.abs() + 0.1 for t in _tensors(16)]
    ms[0].zero_()
    vs[0].zero_()
    use = [k != 0 for k in range(len(SHAPES))]
    steps = list(range(len(SHAPES)))
    c1s = [1 - b1 ** t for t in steps]
    c2s = [1 - b2 ** t for t in steps]
    g_np, m_np, v_np = ([t.numpy().astype(np.float64) for t in ts] for ts in (gs, ms, vs))
    ms2, vs2 = [m.clone() for m in ms], [v.clone() for v in vs]
    h = dot_adam_moments_(gs, ms, vs, (b1, b2), c1s, c2s, use, eps)
    want = sum(float((g_np[k] * (m_np[k] / c1s[k]) / (np.sqrt(v_np[k] / c2s[k]) + eps)).sum())
               for k in range(len(SHAPES)) if use[k])
    assert np.isfinite(float(h)) and float(h) == pytest.approx(want, rel=1e-5)
    for k in range(len(SHAPES)):
        np.testing.assert_allclose(ms[k].numpy(), b1 * m_np[k] + (1 - b1) * g_np[k], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(vs[k].numpy(), b2 * v_np[k] + (1 - b2) * g_np[k] ** 2, rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    h2 = dot_adam_moments_(gs, ms2, vs2, (b1, b2), c1s, c2s, use, eps)
    assert float(h2) == pytest.approx(float(h), rel=1e-5)
    for a, b in zip(ms + vs, ms2 + vs2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_ineligible_inputs_fall_back_to_torch_ops():
    """fp64 tensors and strided views do not go to the kernels; the results are the same rule."""
    g64 = [torch.randn(5, 4, dtype=torch.float64)]
    q64 = [torch.randn(5, 4, dtype=torch.float64)]
    want = float((g64[0] * q64[0]).sum())
    h = dot_update_(g64, q64, 0.0, 1.0)
    assert float(h) == pytest.approx(want, rel=1e-12) and torch.equal(q64[0], g64[0])
    base = torch.randn(6, 8)
    xs = [base[:, ::2]]  # non-contiguous
    assert not xs[0].is_contiguous()
    out = sq_norms(xs, xs)
    assert float(out[0, 0]) == pytest.approx(float((xs[0].double() ** 2).sum()), rel=1e-6)


def test_kernel_and_fallback_agree(monkeypatch):
    gs, qs = _tensors(6), _tensors(7)
    qs2 = [q.clone() for q in qs]
    h_kernel = dot_update_(gs, qs, 0.8, 1.0)
    n_kernel = sq_norms(gs, qs)
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    h_torch = dot_update_(gs, qs2, 0.8, 1.0)
    n_torch = sq_norms(gs, qs2)
    assert float(h_kernel) == pytest.approx(float(h_torch), rel=1e-5)
    for q, q2 in zip(qs, qs2):
        assert torch.equal(q, q2)
    torch.testing.assert_close(n_kernel, n_torch, rtol=1e-5, atol=0)


def test_custom_ops_under_torch_compile():
    """Inside a compiled function the kernels are custom ops: same values, and the in-place update happens."""
    gs, qs = _tensors(8), _tensors(9)
    qs_eager = [q.clone() for q in qs]

    def f(gs, qs):
        h = dot_update_(gs, qs, 0.5, 1.0)
        c = [torch.tensor(0.5, dtype=torch.float64)] * len(gs)  # tensor corrections, as step_scalars gives them
        lamb, _ = lamb_moments_norms_(gs, gs, qs, [q.abs() for q in qs], (0.9, 0.99), c, c, 1e-6, 0.1)
        return h, sq_norms(gs, qs), lamb

    h_c, n_c, l_c = torch.compile(f, fullgraph=True)(gs, qs)
    h_e, n_e, l_e = f(gs, qs_eager)
    assert float(h_c) == pytest.approx(float(h_e), rel=1e-12)
    torch.testing.assert_close(n_c, n_e, rtol=1e-12, atol=0)
    torch.testing.assert_close(l_c, l_e, rtol=1e-12, atol=0)
    for q, q2 in zip(qs, qs_eager):
        assert torch.equal(q, q2)


def test_kernels_are_opt_in():
    """Disabled (the default), an optimizer gets the plain function itself; PRETRAIN_CPU_KERNELS=0 keeps the kernels
    off even when enabled."""
    assert fast.kernels_enabled() and fast.kernel("sq_norms", _common.sq_norms) is not _common.sq_norms
    fast.disable_kernels()
    assert not fast.kernels_enabled()
    for name, plain in [("dot_update_", hypergradient.dot_update_), ("sq_norms", _common.sq_norms),
                        ("lamb_moments_norms_", lamb.lamb_moments_norms_),
                        ("dot_adam_moments_", hypergradient.dot_adam_moments_)]:
        assert fast.kernel(name, plain) is plain
    code = ("from pretrain.optim import _common, fast; import sys; assert not fast.kernels_enabled(); "
            "fast.enable_kernels(); sys.exit(int(fast.kernels_enabled() or "
            "fast.kernel('sq_norms', _common.sq_norms) is not _common.sq_norms))")
    env = {**os.environ, "PRETRAIN_CPU_KERNELS": "0"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
