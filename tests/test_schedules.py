"""Schedules against independent computations: plain formulas written here, torch's schedulers, transformers'.

Index convention under test: `schedule(step)` is the lr of update step+1, `step` counted from 0, which is
the argument of transformers' LambdaLR lambdas and torch's scheduler lr after `step` calls to step().
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
import yaml

from pretrain.errors import ConfigError
from pretrain.schedules import SCHEDULES, build_schedule

PEAK = 3e-3
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "schedule"


def approx(x):
    return pytest.approx(x, rel=1e-9, abs=1e-15)


def boundary_steps(T, *marks):
    """0, each mark -1/0/+1, T-1, T, a few past T (clipped to >= 0)."""
    out = {0, 1, T - 1, T, T + 1, T + 7}
    for m in marks:
        out |= {m - 1, m, m + 1}
    return sorted(s for s in out if s >= 0)


def all_steps(T, *marks):
    return sorted(set(range(T + 1)) | set(boundary_steps(T, *marks)))


# --------------------------------------------------------------------------------------------------------
# independent reference formulas (plain math, deliberately written without the package's helpers)
# --------------------------------------------------------------------------------------------------------
def shape_f(q, shape):
    return {"linear": 1 - q, "cosine": (1 + math.cos(math.pi * q)) / 2, "1-sqrt": 1 - math.sqrt(q),
            "exponential": (math.exp(1 - q) - 1) / (math.e - 1)}[shape]


def ref_constant(s, T, W):
    s = min(s, T)
    return PEAK * (s / W if s < W else 1.0)


def ref_linear(s, T, W, m):
    s = min(s, T)
    if s < W:
        return PEAK * s / W
    return PEAK * (m + (1 - m) * (T - s) / (T - W))


def ref_cosine(s, T, W, m):
    s = min(s, T)
    if s < W:
        return PEAK * s / W
    return PEAK * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * (s - W) / (T - W))))


def ref_step(s, T, W, gamma, milestones=None, step_size=None, m=0.0):
    s = min(s, T)
    if s < W:
        return PEAK * s / W
    if step_size:
        k = s // step_size
    else:
        k = sum(1 for f in milestones if round(f * T) <= s)
    return PEAK * max(m, gamma ** k)


def ref_power_decay(s, T, W, beta, timescale=None, m=0.0):
    s = min(s, T)
    if s < W:
        return PEAK * s / W
    t0 = timescale or (W if W > 0 else 10_000)
    return PEAK * max(m, (1 + (s - W) / t0) ** -beta)


def ref_wsd(s, T, W, m, D, shape):
    s = min(s, T)
    S = T - W - D
    if s < W:
        return PEAK * (m + (1 - m) * s / W)
    if s < W + S:
        return PEAK
    if s < T:
        return PEAK * (m + (1 - m) * shape_f((s - W - S) / D, shape))
    return PEAK * m


def ref_one_cycle(s, T, pct=0.3, div=25.0, final_div=1e4, cos=True):
    """Two-phase 1cycle written from the paper's description (not torch's phase table)."""
    lo, hi = PEAK / div, PEAK / div / final_div
    up_end = pct * T - 1  # the step at which the max lr is used
    s = min(s, T - 1)

    def anneal(a, b, p):
        return b + (a - b) * (1 + math.cos(math.pi * p)) / 2 if cos else a + (b - a) * p

    if s <= up_end:
        return anneal(lo, PEAK, s / up_end)
    return anneal(PEAK, hi, (s - up_end) / (T - 1 - up_end))


def ref_power(s, T, W, D, a, b, batch, tps, m, shape, lr_max=PEAK):
    def law(k):
        return lr_max if k == 0 else min(lr_max, batch * a * (k * tps) ** b)
    s = min(s, T)
    Ns = T - D
    if s < W:
        return s / W * law(W)
    if s < Ns:
        return law(s)
    if s < T:
        return law(Ns) * (m + (1 - m) * shape_f((s - Ns) / D, shape))
    return law(Ns) * m


# --------------------------------------------------------------------------------------------------------
# every schedule against its formula, at every step of short runs and at the boundaries
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,W", [(40, 0), (40, 8), (37, 1), (25, 25)])
def test_constant(T, W):
    s = build_schedule("constant", peak_lr=PEAK, total_steps=T, warmup_steps=W)
    for k in all_steps(T, W):
        assert s(k) == approx(ref_constant(k, T, W) if W else PEAK), k


@pytest.mark.parametrize("T,W,m", [(40, 0, 0.0), (40, 8, 0.0), (41, 7, 0.1), (30, 29, 0.25)])
def test_linear(T, W, m):
    s = build_schedule("linear", peak_lr=PEAK, total_steps=T, warmup_steps=W, min_lr_ratio=m)
    for k in all_steps(T, W):
        assert s(k) == approx(ref_linear(k, T, W, m)), k
    assert s(W) == approx(PEAK) and s(T) == approx(m * PEAK) and s(T + 5) == approx(m * PEAK)


@pytest.mark.parametrize("T,W,m", [(40, 0, 0.0), (40, 8, 0.1), (33, 5, 0.5), (30, 1, 1.0)])
def test_cosine(T, W, m):
    s = build_schedule("cosine", peak_lr=PEAK, total_steps=T, warmup_steps=W, min_lr_ratio=m)
    for k in all_steps(T, W):
        assert s(k) == approx(ref_cosine(k, T, W, m)), k
    assert s(T) == approx(m * PEAK) and s(T + 3) == approx(m * PEAK)


@pytest.mark.parametrize("kw", [
    dict(warmup_steps=0, gamma=0.1, milestones=[0.5, 0.75], step_size=None, min_lr_ratio=0.0),
    dict(warmup_steps=5, gamma=0.3, milestones=[0.75, 0.25, 0.5], step_size=None, min_lr_ratio=0.05),
    dict(warmup_steps=4, gamma=0.5, milestones=[0.5], step_size=7, min_lr_ratio=0.0),
])
def test_step(kw):
    T = 40
    s = build_schedule("step", peak_lr=PEAK, total_steps=T, **kw)
    marks = [kw["warmup_steps"]] + [round(f * T) for f in kw["milestones"]]
    for k in all_steps(T, *marks):
        assert s(k) == approx(ref_step(k, T, kw["warmup_steps"], kw["gamma"], sorted(kw["milestones"]),
                                       kw["step_size"], kw["min_lr_ratio"])), k


@pytest.mark.parametrize("T,W,timescale,m", [(60, 10, None, 0.0), (60, 0, None, 0.0), (60, 0, 5, 0.0),
                                             (60, 4, 20, 0.3)])
def test_inverse_sqrt(T, W, timescale, m):
    s = build_schedule("inverse_sqrt", peak_lr=PEAK, total_steps=T, warmup_steps=W, timescale=timescale,
                       min_lr_ratio=m)
    for k in all_steps(T, W):
        assert s(k) == approx(ref_power_decay(k, T, W, 0.5, timescale, m)), k
    if W and timescale is None and not m:  # Vaswani's form: peak * sqrt(W / step) after warmup
        for k in range(W, T + 1):
            assert s(k) == approx(PEAK * math.sqrt(W / k))


@pytest.mark.parametrize("T,W,beta,timescale,m", [(60, 10, 1.0, None, 0.0), (60, 10, 0.75, 3, 0.2),
                                                  (60, 0, 2.0, 4, 0.0)])
def test_power_decay(T, W, beta, timescale, m):
    s = build_schedule("power_decay", peak_lr=PEAK, total_steps=T, warmup_steps=W, beta=beta,
                       timescale=timescale, min_lr_ratio=m)
    for k in all_steps(T, W):
        assert s(k) == approx(ref_power_decay(k, T, W, beta, timescale, m)), k
    if timescale is None and W:  # the documented form peak * (step / W)^-beta
        for k in range(W, T + 1):
            assert s(k) == approx(max(m, (k / W) ** -beta) * PEAK)


def test_power_decay_with_half_is_inverse_sqrt():
    a = build_schedule("power_decay", peak_lr=PEAK, total_steps=50, warmup_steps=6, beta=0.5)
    b = build_schedule("inverse_sqrt", peak_lr=PEAK, total_steps=50, warmup_steps=6)
    assert [a(k) for k in range(55)] == [b(k) for k in range(55)]


@pytest.mark.parametrize("kw", [
    dict(),
    dict(pct_start=0.25, div_factor=10.0, final_div_factor=100.0),
    dict(anneal_strategy="linear"),
])
def test_one_cycle_formula(kw):
    T = 50
    s = build_schedule("one_cycle", peak_lr=PEAK, total_steps=T, **kw)
    pct, div, fdiv = kw.get("pct_start", 0.3), kw.get("div_factor", 25.0), kw.get("final_div_factor", 1e4)
    peak_at = pct * T - 1
    for k in all_steps(T, int(peak_at), T - 1):
        assert s(k) == approx(ref_one_cycle(k, T, pct, div, fdiv, kw.get("anneal_strategy", "cos") == "cos")), k
    assert s(0) == approx(PEAK / div) and s(T - 1) == approx(PEAK / div / fdiv) and s(T + 4) == s(T - 1)


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt", "exponential"])
@pytest.mark.parametrize("T,W,m,frac", [(50, 5, 0.0, 0.2), (50, 0, 0.1, 0.3), (48, 7, 0.05, 0.1),
                                        (20, 2, 0.0, 0.9), (20, 3, 0.2, 0.0)])
def test_wsd(shape, T, W, m, frac):
    s = build_schedule("wsd", peak_lr=PEAK, total_steps=T, warmup_steps=W, min_lr_ratio=m,
                       decay_fraction=frac, decay_shape=shape)
    D = round(frac * T)
    assert s.decay_steps == D and s.stable_steps == T - W - D
    for k in all_steps(T, W, T - D):
        assert s(k) == approx(ref_wsd(k, T, W, m, D, shape)), k
    if D:
        assert s(T - D) == approx(PEAK) and s(T - D - 1) == approx(PEAK if T - D - 1 >= W else s(T - D - 1))


def test_wsd_decay_steps_override_fraction():
    s = build_schedule("wsd", peak_lr=PEAK, total_steps=60, warmup_steps=5, decay_fraction=0.5, decay_steps=12)
    assert s.decay_steps == 12
    for k in all_steps(60, 5, 48):
        assert s(k) == approx(ref_wsd(k, 60, 5, 0.0, 12, "1-sqrt"))


@pytest.mark.parametrize("m", [0.0, 0.1])
def test_wsd_branched_cooldown_matches_stable_run(m):
    """Resume a stable run's checkpoint at step S0, decay for D steps: identical up to S0, then the decay."""
    W, S0, D = 10, 120, 30
    stable_wsd = build_schedule("wsd", peak_lr=PEAK, total_steps=100_000, warmup_steps=W, min_lr_ratio=m)
    branch = build_schedule("wsd", peak_lr=PEAK, total_steps=S0 + D, warmup_steps=W, min_lr_ratio=m,
                            decay_steps=D, decay_shape="1-sqrt")
    for k in range(S0 + 1):  # step S0: first update of the cooldown still uses the peak (q = 0)
        assert branch(k) == stable_wsd(k), k
    if m == 0.0:
        constant = build_schedule("constant", peak_lr=PEAK, total_steps=100_000, warmup_steps=W)
        for k in range(S0 + 1):
            assert branch(k) == constant(k), k
    for k in range(S0, S0 + D + 3):
        q = min(k - S0, D) / D
        expect = PEAK * (m + (1 - m) * (1 - math.sqrt(q)))
        assert branch(k) == approx(expect), k
    # a longer cooldown branched from the same checkpoint shares the pre-branch values too
    other = build_schedule("wsd", peak_lr=PEAK, total_steps=S0 + 2 * D, warmup_steps=W, min_lr_ratio=m,
                           decay_steps=2 * D)
    assert [other(k) for k in range(S0 + 1)] == [branch(k) for k in range(S0 + 1)]


POWER_CASES = [  # peak 1e-3, batch 1, 1e6 tokens/step: the power law drops below the cap near step 11.5
    dict(T=60, W=5, frac=0.1, shape="exponential", m=0.0),     # warmup ends at the cap
    dict(T=60, W=20, frac=0.2, shape="linear", m=0.1),         # warmup ends below the cap
    dict(T=60, W=0, frac=0.0, shape="1-sqrt", m=0.0),          # no warmup, no decay
    dict(T=61, W=3, frac=0.3, shape="cosine", m=0.5),
]


@pytest.mark.parametrize("case", POWER_CASES)
def test_power(case):
    T, W, frac, shape, m = case["T"], case["W"], case["frac"], case["shape"], case["m"]
    a, b, batch, tps = 4.0, -0.51, 1, 1_000_000
    s = build_schedule("power", peak_lr=PEAK / 3, total_steps=T, a=a, b=b, batch_size=batch, tokens_per_step=tps,
                       warmup_steps=W, decay_fraction=frac, decay_shape=shape, min_lr_ratio=m)
    D = round(frac * T)
    for k in all_steps(T, W, T - D, 11, 12):
        assert s(k) == approx(ref_power(k, T, W, D, a, b, batch, tps, m, shape, lr_max=PEAK / 3)), k
    assert s.factor(T - D - 1) == approx(s(T - D - 1) / (PEAK / 3))


def test_power_matches_dolomite_form():
    """dolomite-engine's PowerScheduler lambda (its a = batch*a, c = tokens/step) and its ExponentialScheduler."""
    T, W, D, lr_max, a, b, batch, tps = 80, 6, 16, 1e-3, 4.0, -0.51, 2, 1_000_000
    s = build_schedule("power", peak_lr=lr_max, total_steps=T, a=a, b=b, batch_size=batch, tokens_per_step=tps,
                       warmup_steps=W, decay_steps=D, decay_shape="exponential", min_lr_ratio=0.05)
    big_a = batch * a
    w_top = min(1.0, big_a / lr_max * (W * tps) ** b)
    for k in range(0, T - D):
        dolo = w_top / W * k if k <= W else min(1.0, big_a / lr_max * (k * tps) ** b)
        assert s.factor(k) == approx(dolo), k
    base, m = s(T - D), 0.05
    ea, eb = (1 - m) * math.e / (math.e - 1), (m * math.e - 1) / (math.e - 1)
    for x in range(0, D + 1):  # dolomite ExponentialScheduler from the decay start, relative to its lr
        assert s(T - D + x) == approx(base * (ea * math.exp(-x / D) + eb)), x


def test_power_batch_size_scales_law():
    kw = dict(peak_lr=1.0, total_steps=100, warmup_steps=0, tokens_per_step=4096, decay_fraction=0.0)
    one = build_schedule("power", batch_size=1, **kw)
    four = build_schedule("power", batch_size=4, **kw)
    assert four(50) == approx(4 * one(50))
    assert one(50) == approx(4.0 * (50 * 4096) ** -0.51)


# --------------------------------------------------------------------------------------------------------
# extra independent checks: torch's and transformers' schedulers
# --------------------------------------------------------------------------------------------------------
def _opt():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)


def _torch_lrs(make, T):
    opt = _opt()
    sched = make(opt)
    lrs = []
    for _ in range(T):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("kw", [dict(), dict(three_phase=True), dict(anneal_strategy="linear", pct_start=0.4),
                                dict(pct_start=0.2, div_factor=5.0, final_div_factor=50.0, three_phase=True)])
def test_one_cycle_matches_torch(kw):
    T = 45
    s = build_schedule("one_cycle", peak_lr=PEAK, total_steps=T, **kw)
    torch_lrs = _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=PEAK, total_steps=T, cycle_momentum=False, **kw), T)
    assert [s(k) for k in range(T)] == pytest.approx(torch_lrs, rel=1e-9, abs=1e-15)


def test_step_matches_torch():
    T = 40
    s = build_schedule("step", peak_lr=PEAK, total_steps=T, gamma=0.5, milestones=[0.25, 0.6])
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[10, 24], gamma=0.5), T)
    assert [s(k) for k in range(T)] == pytest.approx(ref, rel=1e-12)
    s = build_schedule("step", peak_lr=PEAK, total_steps=T, gamma=0.5, step_size=6)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=6, gamma=0.5), T)
    assert [s(k) for k in range(T)] == pytest.approx(ref, rel=1e-12)


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("transformers.optimization")


def _lam(sched):
    return sched.lr_lambdas[0]


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("T,W,m,frac", [(50, 5, 0.0, 0.2), (50, 0, 0.1, 0.3), (47, 9, 0.3, 0.15)])
def test_wsd_matches_transformers(hf, shape, T, W, m, frac):
    s = build_schedule("wsd", peak_lr=PEAK, total_steps=T, warmup_steps=W, min_lr_ratio=m, decay_fraction=frac,
                       decay_shape=shape)
    lam = _lam(hf.get_wsd_schedule(_opt(), num_warmup_steps=W, num_decay_steps=s.decay_steps, num_training_steps=T,
                                   decay_type=shape, min_lr_ratio=m))
    for k in all_steps(T, W):
        assert s.factor(k) == approx(lam(k)), k


@pytest.mark.parametrize("T,W,m", [(50, 5, 0.0), (50, 0, 0.1), (40, 10, 0.3)])
def test_cosine_and_linear_match_transformers(hf, T, W, m):
    s = build_schedule("cosine", peak_lr=PEAK, total_steps=T, warmup_steps=W, min_lr_ratio=m)
    lam = _lam(hf.get_cosine_with_min_lr_schedule_with_warmup(_opt(), W, T, min_lr_rate=m))
    for k in range(T + 1):  # past T transformers' cosine rises again; ours holds
        assert s.factor(k) == approx(lam(k)), k
    if m == 0.0:
        lam = _lam(hf.get_cosine_schedule_with_warmup(_opt(), W, T))
        assert [s.factor(k) for k in range(T + 1)] == pytest.approx([lam(k) for k in range(T + 1)], rel=1e-9)
        s = build_schedule("linear", peak_lr=PEAK, total_steps=T, warmup_steps=W)
        lam = _lam(hf.get_linear_schedule_with_warmup(_opt(), W, T))
        for k in all_steps(T, W):
            assert s.factor(k) == approx(lam(k)), k


@pytest.mark.parametrize("W,timescale", [(10, None), (0, None), (4, 25)])
def test_inverse_sqrt_and_constant_match_transformers(hf, W, timescale):
    T = 60
    s = build_schedule("inverse_sqrt", peak_lr=PEAK, total_steps=T, warmup_steps=W, timescale=timescale)
    lam = _lam(hf.get_inverse_sqrt_schedule(_opt(), num_warmup_steps=W, timescale=timescale))
    for k in range(T + 1):
        assert s.factor(k) == approx(lam(k)), k
    c = build_schedule("constant", peak_lr=PEAK, total_steps=T, warmup_steps=W)
    lam = _lam(hf.get_constant_schedule_with_warmup(_opt(), num_warmup_steps=W))
    for k in all_steps(T, W):
        assert c.factor(k) == approx(lam(k)), k


# --------------------------------------------------------------------------------------------------------
# registry, defaults, recipes
# --------------------------------------------------------------------------------------------------------
EXPECTED = {"constant", "linear", "cosine", "step", "inverse_sqrt", "one_cycle", "power_decay", "wsd", "power"}
POWER_FILL = dict(batch_size=8, tokens_per_step=8 * 128)


def test_registered_with_class_defaults():
    assert EXPECTED <= set(SCHEDULES)
    for name in EXPECTED:
        spec = SCHEDULES[name]
        params = inspect.signature(spec.factory).parameters
        assert set(params) - {"peak_lr", "total_steps", "self"} == set(spec.defaults), name
        for key, value in spec.defaults.items():
            default = params[key].default
            assert (list(default) if isinstance(default, tuple) else default) == value, (name, key)
        assert spec.paper


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_yaml_matches_defaults(name):
    path = RECIPES / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    assert data.pop("name") == name
    spec = SCHEDULES[name]
    assert list(data) == list(spec.defaults)
    for key, value in spec.defaults.items():
        assert data[key] == value and type(data[key]) is type(value), (key, data[key], value)
    kw = {**data, **(POWER_FILL if name == "power" else {})}
    sched = build_schedule(name, peak_lr=PEAK, total_steps=1000, **kw)
    vals = [sched(k) for k in range(0, 1001, 50)]
    assert all(0.0 <= v <= PEAK * (1 + 1e-12) for v in vals) and max(vals) > 0
    assert sched.factor(500) == approx(sched(500) / PEAK)


def test_negative_step_rejected():
    with pytest.raises(ValueError):
        build_schedule("cosine", peak_lr=PEAK, total_steps=10, warmup_steps=0)(-1)


def _raises(field, name, total_steps=100, **kw):
    with pytest.raises(ConfigError) as e:
        build_schedule(name, peak_lr=PEAK, total_steps=total_steps, **kw)
    assert f"schedule.{field}" in str(e.value), str(e.value)
    return str(e.value)


def test_bad_inputs_name_the_field():
    assert "[0.0, 1.0]" in _raises("decay_fraction", "wsd", decay_fraction=1.5)
    _raises("decay_fraction", "power", decay_fraction=-0.1, **POWER_FILL)
    _raises("warmup_steps", "cosine", warmup_steps=-1)
    _raises("warmup_steps", "wsd", warmup_steps=2.5)
    assert "warmup longer than the run" in _raises("warmup_steps", "linear", warmup_steps=101)
    assert "longer than the run" in _raises("decay_fraction", "wsd", warmup_steps=90, decay_fraction=0.2)
    assert "longer than the run" in _raises("decay_steps", "wsd", warmup_steps=50, decay_steps=60)
    assert "longer than the run" in _raises("decay_fraction", "power", warmup_steps=95, **POWER_FILL)
    _raises("min_lr_ratio", "cosine", min_lr_ratio=1.5)
    _raises("min_lr_ratio", "wsd", min_lr_ratio=-0.1)
    _raises("min_lr_ratio", "linear", min_lr_ratio="0.1")
    msg = _raises("decay_shape", "wsd", decay_shape="sqrt")
    assert "linear, cosine, 1-sqrt, exponential" in msg and "Did you mean '1-sqrt'" in msg
    _raises("decay_shape", "power", decay_shape="step", **POWER_FILL)
    assert "0.0)" in _raises("b", "power", b=0.1, **POWER_FILL)
    _raises("b", "power", b=0.0, **POWER_FILL)
    _raises("a", "power", a=-1.0, **POWER_FILL)
    _raises("batch_size", "power", tokens_per_step=100)
    _raises("tokens_per_step", "power", batch_size=4)
    _raises("tokens_per_step", "power", batch_size=4, tokens_per_step=0)
    _raises("pct_start", "one_cycle", pct_start=0.0)
    _raises("pct_start", "one_cycle", total_steps=3, pct_start=0.3)
    assert "cos, linear" in _raises("anneal_strategy", "one_cycle", anneal_strategy="cosine")
    _raises("div_factor", "one_cycle", div_factor=0.0)
    _raises("gamma", "step", gamma=0.0)
    _raises("milestones", "step", milestones=[0.5, 1.5])
    _raises("milestones", "step", milestones=None)
    _raises("step_size", "step", step_size=0)
    _raises("timescale", "inverse_sqrt", timescale=0)
    _raises("beta", "power_decay", beta=-0.5)


def test_unknown_keyword_names_allowed_ones():
    msg = _raises("decay_shape", "cosine", decay_shape="linear")
    assert "allowed: min_lr_ratio, warmup_steps" in msg
    with pytest.raises(ConfigError, match="schedule.name.*wsd"):
        build_schedule("wsdd", peak_lr=PEAK, total_steps=10)


# --------------------------------------------------------------------------------------------------------
# plot tool
# --------------------------------------------------------------------------------------------------------
def test_plot_tool_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from pretrain.tools.plot_schedule import main, plot_schedules

    scheds = {n: build_schedule(n, peak_lr=PEAK, total_steps=60, warmup_steps=5) for n in ("cosine", "wsd")}
    out = plot_schedules(scheds, tmp_path / "sub" / "two.png")
    data = Path(out).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    out = main(["--name", "power", "--peak-lr", "1e-3", "--steps", "50", "--kw", "batch_size=2",
                "--kw", "tokens_per_step=1000000", "--kw", "warmup_steps=5", "--kw", "decay_steps=null",
                "--out", str(tmp_path / "p.png")])
    assert Path(out).stat().st_size > 1000
    out = main(["--name", "step", "--peak-lr", "0.01", "--steps", "40", "--kw", "milestones=[0.3, 0.6]",
                "--out", str(tmp_path / "s.png")])
    assert Path(out).read_bytes()[:4] == b"\x89PNG"
