"""compile_step: the compiled step gives the eager step's parameters, with an lr that changes every step, and
compiles only on the first two steps (state initialization, then the steady step).

Set PRETRAIN_SKIP_COMPILE=1 to skip these where torch.compile is unavailable (no C++ compiler)."""
import os
import subprocess
import sys

import pytest
import torch

from helpers import kernels_must_run
from pretrain.optim import build_optimizer
from pretrain.optim.fast.compiled import compile_pays, compile_step, is_compiled, not_compilable, uncompile_step

pytestmark = pytest.mark.skipif(os.environ.get("PRETRAIN_SKIP_COMPILE") == "1",
                                reason="PRETRAIN_SKIP_COMPILE=1: torch.compile unavailable")

STEPS = 5


def make_groups(seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(6, 4, generator=gen))
    b = torch.nn.Parameter(torch.randn(4, generator=gen))
    return [{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}]


def same_gradients_and_lr(eager, compiled, t: int, seed: int) -> None:
    """Step t's inputs for both optimizers: the same random gradients (new tensors every step, as zero_grad(None)
    gives) and a scheduled lr (a new float every step)."""
    gen = torch.Generator().manual_seed(seed)
    for pe, pc in zip(params_of(eager), params_of(compiled)):
        g = torch.randn(pe.shape, generator=gen)
        pe.grad, pc.grad = g.clone(), g.clone()
    for opt in (eager, compiled):
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * (1.0 - 0.15 * t)


def assert_close_relative(actual, expected, rel=1e-6):
    """Equal to `rel` of the tensor's largest magnitude (elementwise relative error means little near 0)."""
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale)


def params_of(opt):
    return [p for g in opt.param_groups for p in g["params"]]


@pytest.mark.parametrize("name", ["adopt", "lion"])
def test_compiled_step_equals_eager(name):
    from torch._dynamo.utils import counters

    eager = build_optimizer(name, make_groups(), lr=1e-2)
    compiled = compile_step(build_optimizer(name, make_groups(), lr=1e-2))
    assert is_compiled(compiled) and not is_compiled(eager)
    hook_calls = []
    compiled.register_step_post_hook(lambda opt, args, kwargs: hook_calls.append(1))
    counters.clear()
    graphs = []
    for t in range(STEPS):
        same_gradients_and_lr(eager, compiled, t, seed=100 + t)
        eager.step()
        compiled.step()
        graphs.append(counters["stats"]["unique_graphs"])
        assert all(type(g["lr"]) is float for g in compiled.param_groups)  # the schedule's float is back
    assert hook_calls == [1] * STEPS
    assert graphs[0] >= 1, "nothing was compiled"
    assert graphs[-1] == graphs[1], f"recompiled after the second step: unique graphs per step {graphs}"
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    for pe, pc in zip(params_of(eager), params_of(compiled)):
        assert_close_relative(pc.detach(), pe.detach())
        for key, value in eager.state[pe].items():
            assert_close_relative(compiled.state[pc][key], value)
    uncompile_step(compiled)
    assert not is_compiled(compiled)


def test_compile_policy_is_declared_on_every_spec():
    from pretrain.optim import OPTIMIZERS
    assert all(s.compile in ("pays", "no_gain") or len(s.compile) > 20 for s in OPTIMIZERS.values())  # or a reason
    assert not any(compile_pays(n) for n in not_compilable())
    assert set(not_compilable()) == {"sgd_armijo", "vsgd", "sf_adamw", "sf_sgd", "adamw_8bit", "momentum",
                                     "adafactor"}


def test_import_is_cheap():
    code = "import sys, pretrain.optim.fast.compiled; sys.exit(int('torch._dynamo' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "importing compiled.py imports torch._dynamo"


# the fused CPU kernels (fast/cpu_kernels.py, enabled here) each compiled step must call, as custom ops
KERNEL_OPS = {"lamb": "pretrain::lamb_moments_norms_", "adam_hd": "pretrain::dot_adam_moments_",
              "lars": "pretrain::sq_norms", "sgd_hd": "pretrain::dot_update_"}


@pytest.mark.parametrize("name", ["lamb", "rdbd", "adam_hd", "lars", "sgd_hd"])
def test_step_counters_keep_the_graph_fused(name, monkeypatch):
    """The bias corrections come from each tensor's step (lamb: a tensor, rdbd/adam_hd: a Python int, which dynamo
    makes symbolic on the third step): no graph break, no new graph after the third step, the eager result, no
    unfused aten::_foreach_* fallback (a list of symbolic scalars) left in the compiled step, and the fused CPU
    kernels called as custom ops where the optimizer has one."""
    from torch._dynamo.utils import counters

    kernels_must_run(monkeypatch)  # opt-in: enabled for this test

    eager = build_optimizer(name, make_groups(), lr=1e-2)
    compiled = compile_step(build_optimizer(name, make_groups(), lr=1e-2))
    counters.clear()
    graphs = []
    for t in range(STEPS):
        same_gradients_and_lr(eager, compiled, t, seed=200 + t)
        eager.step()
        if t == STEPS - 1:
            with torch.profiler.profile() as prof:
                compiled.step()
        else:
            compiled.step()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[-1] == graphs[2], f"recompiled after the third step: unique graphs per step {graphs}"
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    keys = [e.key for e in prof.key_averages()]
    fallbacks = [k for k in keys if k.startswith("aten::_foreach_")]
    assert not fallbacks, f"unfused foreach kernels in the compiled step: {fallbacks}"
    if name in KERNEL_OPS:
        assert KERNEL_OPS[name] in keys, keys
    for pe, pc in zip(params_of(eager), params_of(compiled)):
        assert_close_relative(pc.detach(), pe.detach())


def test_auto_compiles_only_on_cpu_and_long_runs():
    """train.compile_optimizer: auto compiles where the spec says it pays (a CPU measurement), on CPU, for runs of
    >= 500 steps; never under DeepSpeed; `always` compiles on any device."""
    from pretrain.config import load_config
    from pretrain.build import should_compile as _compile_optimizer
    from pretrain.optim import build_optimizer

    opt = build_optimizer("adopt", [torch.nn.Parameter(torch.zeros(2, 2))])
    long_auto = load_config(["optim=adopt", "train.steps=1000"])
    assert _compile_optimizer(long_auto, opt, False, "cpu")
    assert not _compile_optimizer(long_auto, opt, False, "cuda")
    assert not _compile_optimizer(long_auto, opt, True, "cpu")  # DeepSpeed's engine calls the step
    assert not _compile_optimizer(load_config(["optim=adopt", "train.steps=100"]), opt, False, "cpu")
    assert _compile_optimizer(load_config(["optim=adopt", "train.steps=100", "train.compile_optimizer=always"]),
                              opt, False, "cuda")
    assert not _compile_optimizer(load_config(["optim=sgd_hd", "train.steps=1000"]),
                                  build_optimizer("sgd_hd", [torch.nn.Parameter(torch.zeros(2))]), False, "cpu")
