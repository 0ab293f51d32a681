"""AutoLRS (schedule `autolrs`): the exponential forecast and the GP against independent computations written here,
an end-to-end search on a noisy quadratic whose best lr per stage is known in closed form, resume, and bad keywords.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.optimize import minimize_scalar

from pretrain.errors import ConfigError
from pretrain.schedules import SCHEDULES, build_schedule
from pretrain.schedules.autolrs import (AutoLRS, GaussianProcess, fit_exponential, forecast_loss, lcb_next,
                                        matern52)

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "schedule" / "autolrs.yaml"


# --------------------------------------------------------------------------------------------------------
# (1) exponential forecast
# --------------------------------------------------------------------------------------------------------
def closed_form_consecutive(y):
    """Noiseless y_t = a r^t + c at t = 0, 1, 2: r = (y2 - y1) / (y1 - y0), a = (y1 - y0) / (r - 1), c = y0 - a."""
    d0, d1 = y[1] - y[0], y[2] - y[1]
    r = d1 / d0
    a = d0 / (r - 1.0)
    return a, -math.log(r), y[0] - a


def closed_form_partial_sums(y):
    """The three-group partial-sums estimator for y_t = a r^t + c (three groups of m consecutive points):
    S_k = sum of group k, G = sum_{t<m} r^t; S2 - S1 = a G (r^m - 1), S3 - S2 = r^m (S2 - S1), S1 = a G + m c."""
    m = len(y) // 3
    s1, s2, s3 = (float(np.sum(y[k * m:(k + 1) * m])) for k in range(3))
    rm = (s3 - s2) / (s2 - s1)
    r = rm ** (1.0 / m)
    geo = (1.0 - rm) / (1.0 - r)  # sum_{t<m} r^t
    a = (s2 - s1) / (geo * (rm - 1.0))
    c = (s1 - a * geo) / m
    return a, -math.log(r), c


def test_exponential_fit_noiseless_matches_closed_form():
    a, b, c = 2.0, 0.15, 0.5
    t = np.arange(20)
    y = a * np.exp(-b * t) + c
    fit = fit_exponential(y)
    ref = closed_form_consecutive(y)
    assert fit.ok
    assert (fit.a, fit.b, fit.c) == pytest.approx(ref, rel=1e-6, abs=1e-8)
    assert (fit.a, fit.b, fit.c) == pytest.approx((a, b, c), rel=1e-6)
    assert forecast_loss(y, 100) == pytest.approx(a * math.exp(-b * 100) + c, rel=1e-6)
    # another rate and a rising curve (a < 0) are recovered too
    y2 = -0.7 * np.exp(-0.4 * t) + 3.0
    f2 = fit_exponential(y2)
    assert (f2.a, f2.b, f2.c) == pytest.approx(closed_form_consecutive(y2), rel=1e-6)


def test_exponential_fit_noisy_recovers_parameters():
    a, b, c = 1.5, 0.08, 2.0
    t = np.arange(60)
    rng = np.random.default_rng(0)
    y = a * np.exp(-b * t) + c + 0.01 * rng.standard_normal(t.size)
    y[17] += 0.5  # one outlier spike (a bad batch): the robust refinement should shrug it off
    fit = fit_exponential(y)
    clean = y.copy()
    clean[17] -= 0.5
    ps = closed_form_partial_sums(clean)
    assert fit.a == pytest.approx(a, rel=0.05) and fit.b == pytest.approx(b, rel=0.08)
    assert fit.c == pytest.approx(c, abs=0.03)
    assert (fit.a, fit.b, fit.c) == pytest.approx(ps, rel=0.1)
    truth = a * math.exp(-b * 300) + c
    assert forecast_loss(y, 300) == pytest.approx(truth, abs=0.03)


def test_forecast_fallbacks():
    assert forecast_loss([2.0, float("nan"), 1.0, 0.9], 50) == math.inf  # divergence
    assert forecast_loss([2.0, 1.0, float("inf")], 50) == math.inf
    assert forecast_loss([1.3] * 8, 50) == pytest.approx(1.3)  # flat
    short = fit_exponential([2.0, 1.0])
    assert not short.ok and short.c == pytest.approx(1.5)
    # nearly linear trial: b is bounded below (0.1 / horizon), so the forecast is at most a linear extrapolation
    y = 3.0 - 0.001 * np.arange(10)
    f = forecast_loss(y, 100)
    assert 3.0 - 0.001 * 100 - 1e-9 <= f < 3.0 - 0.009


# --------------------------------------------------------------------------------------------------------
# (2) Gaussian process
# --------------------------------------------------------------------------------------------------------
def ref_matern52(x1, x2, ell, s2):
    K = np.empty((len(x1), len(x2)))
    for i, u in enumerate(x1):
        for j, v in enumerate(x2):
            d = math.sqrt(5.0) * abs(u - v) / ell
            K[i, j] = s2 * (1.0 + d + d * d / 3.0) * math.exp(-d)
    return K


def ref_posterior(x, y, xs, ell, s2, noise):
    K = ref_matern52(x, x, ell, s2) + noise * np.eye(len(x))
    Ks = ref_matern52(x, xs, ell, s2)
    mean = Ks.T @ np.linalg.solve(K, y)
    cov = ref_matern52(xs, xs, ell, s2) - Ks.T @ np.linalg.solve(K, Ks)
    sign, logdet = np.linalg.slogdet(K)
    lml = -0.5 * y @ np.linalg.solve(K, y) - 0.5 * logdet - 0.5 * len(x) * math.log(2 * math.pi)
    return mean, np.diag(cov), lml


def test_gp_posterior_matches_formulas():
    x = np.array([0.1, 0.4, 0.45, 0.9])
    y = np.array([1.0, -0.3, -0.5, 0.8])
    xs = np.linspace(0.0, 1.0, 11)
    for ell, s2, noise in [(0.3, 1.0, 1e-4), (0.1, 2.5, 0.05), (1.5, 0.7, 1e-6)]:
        gp = GaussianProcess(ell, s2, noise).fit(x, y)
        mean, var = gp.predict(xs)
        rmean, rvar, rlml = ref_posterior(x, y, xs, ell, s2, noise)
        assert mean == pytest.approx(rmean, rel=1e-7, abs=1e-9)
        assert var == pytest.approx(np.maximum(rvar, 0.0), rel=1e-6, abs=1e-9)
        assert gp.log_marginal_likelihood() == pytest.approx(rlml, rel=1e-9)
    assert matern52([0.0], [0.0], 0.5, 3.0)[0, 0] == pytest.approx(3.0)


def test_gp_hyperparameters_maximize_marginal_likelihood():
    x = np.array([0.0, 0.2, 0.5, 0.55, 0.8, 1.0])
    y = np.sin(6 * x)
    y = (y - y.mean()) / y.std()
    gp = GaussianProcess.fit_ml(x, y)
    best = ref_posterior(x, y, x[:1], gp.length_scale, gp.signal_var, gp.noise_var)[2]
    for ell in GaussianProcess.LENGTH_GRID[::3]:
        for ratio in GaussianProcess.NOISE_RATIO_GRID[::2]:
            for s2 in (0.1, 1.0, 3.0):
                assert best >= ref_posterior(x, y, x[:1], ell, s2, ratio * s2)[2] - 1e-6


def test_lcb_acquisition():
    x = [0.1, 0.3, 0.5, 0.7]
    y = [3.0, 1.0, 2.0, 4.0]
    # kappa = 0: the posterior-mean minimum, near the best point; huge kappa: the farthest point from the data
    assert abs(lcb_next(x, y, kappa=0.0) - 0.3) < 0.1
    assert lcb_next(x, y, kappa=1e6) == pytest.approx(1.0)
    assert lcb_next([0.0, 1.0], [1.0, 2.0], kappa=1e6) == pytest.approx(0.5, abs=0.01)


# --------------------------------------------------------------------------------------------------------
# (3) end to end: noisy SGD on a quadratic
# --------------------------------------------------------------------------------------------------------
D, H, SIGMA = 2000, 1.0, 0.3


def expected_loss(lr, tau, m0):
    """E[0.5 h x_tau^2] for x <- x - lr (h x + sigma xi), E[x_0^2] = m0: m_t = rho^t (m0 - m_inf) + m_inf,
    rho = (1 - lr h)^2, m_inf = lr^2 sigma^2 / (1 - rho)."""
    rho = (1.0 - lr * H) ** 2
    m_inf = lr * lr * SIGMA ** 2 / (1.0 - rho)
    return 0.5 * H * (rho ** tau * (m0 - m_inf) + m_inf)


def best_lr(tau, m0):
    res = minimize_scalar(lambda u: expected_loss(math.exp(u), tau, m0), bounds=(math.log(1e-3), 0.0),
                          method="bounded", options={"xatol": 1e-9})
    return math.exp(res.x), res.fun


class Quadratic:
    """D independent coordinates, SGD with Gaussian gradient noise; the state is (x, RNG)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.x = np.ones(D)

    def step(self, lr):
        loss = 0.5 * H * float(np.mean(self.x ** 2))  # the loss of this update's batch, before the update
        self.x = self.x - lr * (H * self.x + SIGMA * self.rng.standard_normal(D))
        return loss

    def snapshot(self):
        return self.x.copy(), copy.deepcopy(self.rng.bit_generator.state)

    def restore(self, snap):
        self.x = snap[0].copy()
        self.rng.bit_generator.state = copy.deepcopy(snap[1])


def run(sched, prob, start, stop, calls):
    """The loop protocol: search at stage starts (trials from a snapshot), restore, train with lr(step)."""
    step = start
    while step < stop:
        if sched.wants_search(step):
            snap = prob.snapshot()

            def trial(lr, n):
                prob.restore(snap)
                calls.append((step, lr, n))
                return [prob.step(lr) for _ in range(n)]

            sched.search(step, trial)
            prob.restore(snap)
            assert not sched.wants_search(step)
        prob.step(sched.lr(step))
        step += 1


def test_end_to_end_picks_near_optimal_stage_lrs():
    T, tau, tau_p, k = 300, 100, 20, 10
    sched = build_schedule("autolrs", peak_lr=1.0, total_steps=T, stage_steps=tau, trial_steps=tau_p,
                           n_candidates=k, seed=0)
    prob = Quadratic(10)
    calls, optima = [], []
    step = 0
    while step < T:  # as run(), recording the analytic optimum of each stage from its starting state
        if sched.wants_search(step):
            m0 = float(np.mean(prob.x ** 2))
            optima.append((step, m0) + best_lr(tau, m0))
            snap = prob.snapshot()

            def trial(lr, n):
                prob.restore(snap)
                calls.append((step, lr, n))
                return [prob.step(lr) for _ in range(n)]

            sched.search(step, trial)
            prob.restore(snap)
        prob.step(sched.lr(step))
        step += 1

    assert [o[0] for o in optima] == [0, 100, 200]
    assert len(calls) == 3 * k and all(n == tau_p for _, _, n in calls)
    assert sched.metrics()["autolrs_trial_steps"] == 3 * k * tau_p
    chosen = sched.stage_lrs
    assert sched.metrics()["autolrs_stage_lr"] == chosen[-1]
    for (start, m0, lr_star, loss_star), lr, rec in zip(optima, chosen, sched.history):
        assert rec["step"] == start and len(rec["lrs"]) == k
        assert all(1e-3 * (1 - 1e-12) <= v <= 1.0 * (1 + 1e-12) for v in rec["lrs"])
        assert len(set(rec["lrs"])) == k  # no candidate tried twice
        assert lr == rec["lrs"][int(np.argmin(rec["forecasts"]))]  # the best forecast is trained
        assert [c[1] for c in calls if c[0] == start] == rec["lrs"]
        assert 0.5 <= lr / lr_star <= 2.0, (start, lr, lr_star)
        assert expected_loss(lr, tau, m0) <= 3.0 * loss_star  # the loss rises steeply left of the optimum
        assert all(sched.lr(s) == lr for s in range(start, start + tau))
    # the optimum falls as the noise floor is approached; the chosen schedule anneals with it
    assert optima[0][2] > optima[1][2] > optima[2][2]
    assert chosen[0] > chosen[1] and chosen[0] > chosen[2]
    assert sched.lr(T) == sched.lr(T + 50) == chosen[-1]
    assert sched.factor(150) == sched.lr(150) / 1.0


def test_stages_warmup_and_unsearched_defaults():
    s = build_schedule("autolrs", peak_lr=2e-3, total_steps=395, warmup_steps=50, stage_steps=100, trial_steps=10)
    assert s.starts == [50, 150, 250, 350] and s.lengths == [100, 100, 100, 45]  # a 45-step tail is a stage
    s = build_schedule("autolrs", peak_lr=2e-3, total_steps=358, warmup_steps=50, stage_steps=100, trial_steps=10)
    assert s.starts == [50, 150, 250] and s.lengths == [100, 100, 108]  # 8-step tail merged into the last stage
    assert [s.lr(k) for k in (0, 10, 49)] == pytest.approx([0.0, 2e-3 * 10 / 50, 2e-3 * 49 / 50])
    assert s.lr(50) == s.lr(357) == 2e-3  # nothing searched yet: peak
    assert [k for k in range(400) if s.wants_search(k)] == [50, 150, 250]
    assert s.lr_max == 2e-3 and s.lr_min == pytest.approx(2e-6)
    s.search(150, lambda lr, n: [1.0 / (1 + j * lr * 1e3) for j in range(n)])
    assert s.lr(149) == 2e-3 and s.lr(150) == s.lr(300) == s.stage_lrs[1]  # later stages inherit until searched
    with pytest.raises(ValueError):
        s.search(151, lambda lr, n: [1.0] * n)
    d = build_schedule("autolrs", peak_lr=1.0, total_steps=2000, stage_steps=100, trial_steps=10,
                       max_stage_steps=400)  # the paper's doubling of tau and tau' up to tau_max
    assert d.starts == [0, 100, 300, 700, 1100, 1500, 1900] and d.trials == [10, 20] + [40] * 5
    assert d.lengths == [100, 200, 400, 400, 400, 400, 100]
    tiny = build_schedule("autolrs", peak_lr=1.0, total_steps=8, stage_steps=100, trial_steps=10)
    assert not any(tiny.wants_search(k) for k in range(8)) and tiny.lr(3) == 1.0


# --------------------------------------------------------------------------------------------------------
# (4) resume
# --------------------------------------------------------------------------------------------------------
def test_state_dict_round_trip_gives_identical_choices():
    kw = dict(peak_lr=1.0, total_steps=300, stage_steps=100, trial_steps=10, n_candidates=4, seed=3)
    a = build_schedule("autolrs", **kw)
    prob_a = Quadratic(1)
    run(a, prob_a, 0, 200, [])  # stages 0 and 1 searched and trained
    state = json.loads(json.dumps(a.state_dict()))  # plain data: survives JSON as well as torch.save
    b = build_schedule("autolrs", **kw)
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    assert [b.lr(k) for k in range(0, 300, 7)] == [a.lr(k) for k in range(0, 300, 7)]
    assert b.metrics() == a.metrics() and b.wants_search(200) and not b.wants_search(100)
    prob_b = Quadratic(0)
    prob_b.restore(prob_a.snapshot())
    calls_a, calls_b = [], []
    run(a, prob_a, 200, 300, calls_a)
    run(b, prob_b, 200, 300, calls_b)
    assert len(calls_a) == 4 and calls_a == calls_b and prob_a.x.tolist() == prob_b.x.tolist()
    assert a.state_dict() == b.state_dict() and a.metrics() == b.metrics()
    other = build_schedule("autolrs", **{**kw, "seed": 4})
    with pytest.raises(ValueError):
        other.load_state_dict(state)


# --------------------------------------------------------------------------------------------------------
# (5) bad keywords
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, field", [
    (dict(trial_steps=100), "schedule.trial_steps"),
    (dict(trial_steps=150), "schedule.trial_steps"),
    (dict(trial_steps=0), "schedule.trial_steps"),
    (dict(stage_steps=0), "schedule.stage_steps"),
    (dict(stage_steps=-5), "schedule.stage_steps"),
    (dict(n_candidates=0), "schedule.n_candidates"),
    (dict(n_candidates=2.5), "schedule.n_candidates"),
    (dict(lr_min=1e-2, lr_max=1e-3), "schedule.lr_min"),
    (dict(lr_min=1e-3, lr_max=1e-3), "schedule.lr_min"),
    (dict(lr_min=0.0), "schedule.lr_min"),
    (dict(lr_max=-1.0), "schedule.lr_max"),
    (dict(lr_max="big"), "schedule.lr_max"),
    (dict(warmup_steps=2000), "schedule.warmup_steps"),
    (dict(warmup_steps=-1), "schedule.warmup_steps"),
    (dict(kappa=-1.0), "schedule.kappa"),
    (dict(max_stage_steps=50), "schedule.max_stage_steps"),
    (dict(seed=-1), "schedule.seed"),
    (dict(tau=5), "schedule.tau"),
])
def test_bad_keywords_name_the_field(kw, field):
    with pytest.raises(ConfigError) as e:
        build_schedule("autolrs", peak_lr=1e-3, total_steps=1000, **kw)
    assert e.value.field == field and field in str(e.value)


def test_zero_peak_needs_lr_max():
    with pytest.raises(ConfigError) as e:
        AutoLRS(peak_lr=0.0, total_steps=100)
    assert e.value.field == "schedule.lr_max"
    assert AutoLRS(peak_lr=0.0, total_steps=100, lr_max=1e-3).lr(5) == 0.0  # factor() stays 0 with peak 0


def test_recipe_matches_registered_defaults():
    data = yaml.safe_load(RECIPE.read_text())
    assert data.pop("name") == "autolrs"
    spec = SCHEDULES["autolrs"]
    assert list(data) == list(spec.defaults)
    for key, value in spec.defaults.items():
        assert data[key] == value and type(data[key]) is type(value), key
    s = build_schedule("autolrs", peak_lr=3e-3, total_steps=1000, **data)
    assert s.stage_steps == 100 and s.trial_steps == 10 and s.n_candidates == 6
    assert all(s(k) == 3e-3 for k in range(0, 1001, 50)) and s.factor(500) == 1.0
