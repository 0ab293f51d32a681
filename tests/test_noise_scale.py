"""The online gradient noise scale (McCandlish et al. 2018, App. A.1) on linear regression with known gradient
noise: within 20% of tr(Sigma)/|G|^2 computed from the per-example gradients, one process (micro-batch vs
accumulated gradient) and two (per-rank vs all-reduced, in a DDP communication hook); the estimator's algebra
against the expectations it inverts."""
import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, env

SCRIPT = os.path.join(ROOT, "tests", "scripts", "noise_scale_regression.py")


def true_noise_scale():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    from noise_scale_regression import problem
    x, y, w = problem()
    g = x * (x @ w - y)[:, None]  # per-example gradients of (x.w - y)^2 / 2
    G = g.mean(0)
    return ((g - G) ** 2).sum(1).mean() / (G @ G)


def run(tmp_path, nproc, global_batch, micro, steps=300):
    out = tmp_path / f"noise_{nproc}.json"
    args = [SCRIPT, str(out), str(steps), str(global_batch), str(micro)]
    cmd = [sys.executable] + args if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_port", str(29700 + os.getpid() % 200)] + args
    p = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("nproc,global_batch,micro", [(1, 128, 16), (2, 128, 64)])
def test_noise_scale_on_regression_with_known_noise(tmp_path, nproc, global_batch, micro):
    truth = true_noise_scale()
    got = run(tmp_path, nproc, global_batch, micro)
    assert got["world"] == nproc and got["n"] == 300
    assert got["b_noise"] == pytest.approx(truth, rel=0.2), (got, truth)


def test_estimator_inverts_the_expected_norms():
    """E|G_B|^2 = |G|^2 + tr(Sigma)/B: fed the exact expectations, the estimate is exact, EMA or not."""
    import torch

    from pretrain.noise_scale import NoiseScale
    G2, tr = 3.0, 120.0
    est = NoiseScale(beta=0.9)
    for b_small, b_big in [(8, 64), (4, 32), (16, 128)]:
        est.observe(torch.tensor(G2 + tr / b_small), b_small, torch.tensor(G2 + tr / b_big), b_big)
    assert est.value() == pytest.approx(tr / G2, rel=1e-12)
    again = NoiseScale(beta=0.9)
    again.load_state_dict(est.state_dict())
    assert again.value() == est.value() and again.n == 3
