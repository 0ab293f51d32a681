"""Schedule pre-selection (pretrain.preselect, python -m pretrain.tools.preselect): features against plain loops,
rankings recovered from curves of a known law, the divergence rule, and the errors for bad grids and runs."""
import json
import math

import numpy as np
import pytest
import yaml

from pretrain.errors import ConfigError
from pretrain.preselect import (
    Candidate,
    DivergenceRule,
    FeatureRegression,
    MPLPredictor,
    RunRecord,
    candidate_lrs,
    check_compatible,
    config_diverged,
    divergence,
    f1_score,
    flag_threshold,
    parse_grid,
    preselect,
    schedule_features,
    top2_hit,
)
from pretrain.schedules.mpl import MPLParams, predict

# a hand-made schedule: warmup of 2 steps, a plateau, a drop, a bump back up, a tail
ETA = [0.0, 0.5, 1.0, 1.0, 0.8, 0.3, 0.6, 0.6, 0.1]


def test_features_match_plain_loops():
    c = 0.7
    f = schedule_features(ETA, warmup_steps=2, c=c)
    n = len(ETA)
    s1 = s2 = area = noise = 0.0
    for t in range(n):
        s1 += ETA[t]
        s2 += ETA[t] * ETA[t]
        later = 0.0
        for s in range(t + 1, n):
            later += ETA[s]
        noise += ETA[t] ** 2 * math.exp(-c * later)
    for k in range(1, n):
        if ETA[k - 1] > ETA[k]:
            area += ETA[k - 1] - ETA[k]
    assert f["S1"] == pytest.approx(s1, rel=1e-14) and s1 == pytest.approx(4.9)
    assert f["S2"] == pytest.approx(s2, rel=1e-14)
    assert f["area"] == pytest.approx(area, rel=1e-14) and area == pytest.approx(0.2 + 0.5 + 0.5)  # the bump is no anneal
    assert f["noise"] == pytest.approx(noise, rel=1e-12)
    assert f["peak"] == 1.0 and f["warmup"] == 2.0
    # c = 0: every step's noise counts in full (= S2); a large c keeps only the last step's
    assert schedule_features(ETA, 2, 0.0)["noise"] == pytest.approx(s2)
    assert schedule_features(ETA, 2, 1e4)["noise"] == pytest.approx(ETA[-1] ** 2)


def _cands(families, peaks, warmup=10):
    return [Candidate(f"{f}_lr{p:g}", f, s, dict(kw), p, warmup) for f, (s, kw) in families.items() for p in peaks]


FAMS = {"constant": ("constant", {}), "cosine": ("cosine", {"min_lr_ratio": 0.1}), "linear": ("linear", {}),
        "wsd": ("wsd", {"decay_fraction": 0.2, "decay_shape": "1-sqrt"})}
TRUE = MPLParams(L0=3.0, A=0.6, alpha=0.5, B=40.0, C=2.0, beta=0.6, gamma=0.5)


def _mpl_record(c: Candidate, T: int, every: int = 10) -> RunRecord:
    lrs = candidate_lrs(c, T)
    r = RunRecord(c.name, lrs, c.warmup, c.peak, np.arange(0, T + 1, every), np.zeros(T // every + 1))
    seq = r.mpl_run().lrs
    steps = np.arange(every, T + 1, every)
    r.val_steps, r.val_losses = steps, predict(TRUE, seq, c.warmup, at_steps=steps)
    return r


def test_mpl_ranking_recovers_the_laws_order():
    """Runs whose validation curves follow a known Multi-Power Law: the fitted law ranks held-out schedules (other
    families and peaks) in the true law's order."""
    T = 200
    fit_runs = [_mpl_record(c, T) for c in _cands({k: FAMS[k] for k in ("constant", "cosine")}, (5e-3, 1e-2))]
    held = _cands({"linear": FAMS["linear"], "wsd": FAMS["wsd"],
                   "cos0": ("cosine", {"min_lr_ratio": 0.0}), "wsd_lin": ("wsd", {"decay_shape": "linear"})},
                  (4e-3, 7e-3))
    true = np.array([_mpl_record(c, T).final_loss for c in held])
    model = MPLPredictor(restarts=1, steps=150).fit(fit_runs)
    pred = model.predict([candidate_lrs(c, T) for c in held], [c.warmup for c in held])
    assert np.argsort(pred).tolist() == np.argsort(true).tolist(), (pred, true)
    assert np.abs(pred - true).max() < 2e-3


def test_feature_ranking_recovers_a_known_linear_law():
    """Final losses generated from a known linear law of the features (with c = 3): the regression picks c = 3 and
    ranks held-out candidates in the law's order."""
    T, c = 100, 3.0
    w_true = np.array([-0.8, 4.0, 0.5, 6.0, 0.2, 0.002])

    def law(lrs, warmup):
        f = schedule_features(lrs, warmup, c)
        z = np.array([math.log(f["S1"]), f["S2"], f["area"], f["noise"], math.log(f["peak"]), f["warmup"]])
        return 4.0 + z @ w_true

    fams = {"constant": FAMS["constant"], "cosine": FAMS["cosine"], "wsd": FAMS["wsd"]}
    runs = []
    for w in (5, 20):
        for cand in _cands(fams, (1e-3, 3e-3, 1e-2, 3e-2), warmup=w):
            lrs = candidate_lrs(cand, T)
            runs.append(RunRecord(cand.name, lrs, w, cand.peak, np.array([T]), np.array([law(lrs, w)])))
    model = FeatureRegression(lam=1e-6).fit(runs)
    assert model.c == 3.0
    held = _cands({"linear": FAMS["linear"], "wsd_lin": ("wsd", {"decay_shape": "linear"})}, (2e-3, 5e-3, 2e-2), 10)
    L = [candidate_lrs(h, T) for h in held]
    pred, true = model.predict(L, [10] * len(held)), np.array([law(x, 10) for x in L])
    assert np.argsort(pred).tolist() == np.argsort(true).tolist()
    assert np.abs(pred - true).max() < 1e-4


def test_preselect_ranks_flags_and_bootstraps():
    """End to end on known-law curves: the winner is the true best, high lrs that diverged in the small runs are
    flagged, every prediction has a bootstrap spread, and P(best) sums to one."""
    T = 100
    fit = [_mpl_record(c, T) for c in _cands(FAMS, (2e-3, 5e-3, 1e-2), 5)]
    for i, r in enumerate(fit):
        r.val_losses = r.val_losses + 1e-3 * np.sin(i + np.arange(r.val_losses.size))  # not exactly the law
    hot = []
    for p, w in ((0.3, 5), (1.0, 5), (3.0, 5), (0.3, 30), (1.0, 30), (3.0, 30)):
        c = Candidate("hot", "constant", "constant", {}, p, w)
        hot.append(RunRecord(f"hot{p}_{w}", candidate_lrs(c, T), w, p, np.array([T]), np.array([9.0]),
                             diverged=p >= 1.0, reason="test"))
    cands = _cands({"cosine": FAMS["cosine"], "linear": FAMS["linear"]}, (3e-3, 2.0), 10)
    res = preselect(fit, cands, hot, bootstrap={"mpl": 2, "features": 30}, mpl_fit={"restarts": 1, "steps": 150})
    assert res["flagged"].tolist() == [False, True, False, True]
    true = [_mpl_record(c, T).final_loss for c in cands]
    for name in ("mpl", "features"):
        d = res["predictions"][name]
        assert d["n_boot"] >= 2 and np.all(d["std"][~res["flagged"]] > 0)
        assert d["p_best"][res["flagged"]].sum() == 0 and d["p_best"].sum() == pytest.approx(1.0)
        assert d["rank"][res["flagged"]].min() > d["rank"][~res["flagged"]].max()  # flagged ones rank last
    assert int(np.argmin(res["predictions"]["mpl"]["rank"])) == int(np.argmin([true[0], 99, true[2], 99]))


def test_divergence_rule_and_run_labels():
    runs = [RunRecord(f"r{p}", np.full(10, p), 0, p, np.array([10]), np.array([1.0]), diverged=p > 0.5)
            for p in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)]
    rule = DivergenceRule().fit(runs)
    assert rule.prob([0.02, 2.0], [0, 0]).round().tolist() == [0.0, 1.0]
    assert not DivergenceRule().fit(runs[:3]).active  # no diverged run: no rule, no flag
    steps = np.arange(1, 11)
    assert divergence(np.r_[6.0, 5.0, np.nan], steps[:3], np.array([6.0]), np.array([0]), 10)[0]
    assert "stopped at step 3" in divergence(np.array([6.0, 5.0, 4.0]), steps[:3], np.array([6.0]), np.array([0]), 10)[1]
    up = np.r_[6.0, 5.0, 5.0, 6.5, 7.0, 7.5, 8.0, 8.0, 8.0, 8.0]
    assert divergence(up, steps, np.array([6.0, 5.0]), np.array([0, 10]), 10)[0]
    ok = np.linspace(6.0, 4.0, 10)
    assert divergence(ok, steps, np.array([6.0, 4.5]), np.array([0, 10]), 10) == (False, "")


def test_configuration_label_and_its_matching_flag_threshold():
    def rec(d):
        return RunRecord("r", np.ones(3), 0, 1.0, np.array([3]), np.array([1.0]), diverged=d)

    assert [config_diverged([rec(d) for d in ds]) for ds in ([1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1])] == \
        [True, False, False, True]  # most of 3 = at least 2
    assert config_diverged([rec(1), rec(0), rec(0)], k=1) and not config_diverged([rec(0)] * 3, k=1)
    assert not config_diverged([rec(1), rec(1), rec(0), rec(0)])  # most of 4 = at least 3
    # the threshold: P(at least k of n seeds diverge) = 1/2, against a binomial tail summed term by term
    for n, k, closed in ((3, 2, 0.5), (5, 3, 0.5), (3, 1, 1 - 0.5 ** (1 / 3)), (3, 3, 0.5 ** (1 / 3)), (4, 3, None)):
        p = flag_threshold(n, k)
        tail = 0.0
        for j in range(k, n + 1):
            tail += math.factorial(n) / (math.factorial(j) * math.factorial(n - j)) * p ** j * (1 - p) ** (n - j)
        assert tail == pytest.approx(0.5, abs=1e-12)
        if closed is not None:
            assert p == pytest.approx(closed, abs=1e-12)
    assert flag_threshold(3) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="k"):
        flag_threshold(3, 4)


def test_top2_hit_and_f1():
    mean = {"a": 1.00, "b": 1.02, "c": 1.10}
    assert not top2_hit({"a": 3, "b": 1, "c": 2}, mean, {"a": 0.01, "b": 0, "c": 0})[0]  # a not in the top 2 ...
    hit, info = top2_hit({"a": 3, "b": 1, "c": 2}, mean, {"a": 0.03, "b": 0, "c": 0})  # ... but b is within a's spread
    assert hit and info["best"] == "a" and info["top2"] == ["b", "c"] and info["gap"] == pytest.approx(0.02)
    assert top2_hit({"a": 2, "b": 1, "c": 3}, mean, {"a": 0.0, "b": 0, "c": 0})[0]  # a in the top 2
    s = f1_score([True, True, False, False], [True, False, True, False])
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (1, 1, 1, 1) and s["f1"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------

GRID = {"peak_lr": [1e-3], "warmup_steps": [5], "families": {"cos": {"schedule": "cosine", "min_lr_ratio": 0.1}}}


@pytest.mark.parametrize("change, field", [
    ({"families": {"x": {"schedule": "cosin"}}}, "candidates.families.x.schedule"),
    ({"families": {"x": {"schedule": "wsd", "decay_shap": "linear"}}}, "candidates.families.x.decay_shap"),
    ({"families": {"x": {"schedule": "mpl", "path": "a.json"}}}, "candidates.families.x.path"),
    ({"families": {"x": {"schedule": "wsd", "warmup_steps": 3}}}, "candidates.families.x.warmup_steps"),
    ({"peak_lrs": [1e-3]}, "candidates.peak_lrs"),
    ({"peak_lr": [-1.0]}, "candidates.peak_lr"),
    ({"warmup_steps": [2.5]}, "candidates.warmup_steps"),
    ({"mpl": {"iter": 3}}, "candidates.mpl.iter"),
])
def test_grid_errors_name_the_field(change, field):
    with pytest.raises(ConfigError) as e:
        parse_grid({**GRID, **change})
    assert e.value.field == field
    assert "allowed" in str(e.value) or "must" in str(e.value) or "required" in str(e.value)


def test_grid_ok_and_bad_keyword_values(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({**GRID, "steps": 50}))
    cands, opts = parse_grid(p)
    assert [c.name for c in cands] == ["cos_lr0.001_w5"] and opts["steps"] == 50
    bad = parse_grid({**GRID, "families": {"w": {"schedule": "wsd", "decay_shape": "squiggle"}}})[0][0]
    with pytest.raises(ConfigError, match="candidates.families.w"):
        candidate_lrs(bad, 50)


def _rec(name, **cfg):
    base = {"model": {"d_model": 64, "n_layer": 2}, "optim": {"name": "adamw"}, "train": {"steps": 10, "seq_len": 8,
                                                                                          "global_batch_size": 4}}
    for k, v in cfg.items():
        sec, key = k.split("__")
        base[sec] = {**base[sec], key: v}
    return RunRecord(name, np.full(10, 1e-3), 0, 1e-3, np.array([10]), np.array([3.0]), config=base)


@pytest.mark.parametrize("kw, field", [({"model__d_model": 128}, "model.d_model"),
                                       ({"train__steps": 20}, "train.steps"),
                                       ({"train__global_batch_size": 8}, "train.global_batch_size"),
                                       ({"optim__name": "lion"}, "optim.name")])
def test_mixed_models_or_budgets_are_refused(kw, field):
    with pytest.raises(ConfigError) as e:
        check_compatible([_rec("a"), _rec("b", **kw)])
    assert e.value.field == field and "'a'" in str(e.value) and "'b'" in str(e.value)
    with pytest.raises(ConfigError) as e:  # and preselect refuses before fitting
        preselect([_rec("a")] * 9 + [_rec("b", **kw)], parse_grid(GRID)[0], predictors=("features",))
    assert e.value.field == field


def test_too_few_runs_are_refused():
    cands = parse_grid(GRID)[0]
    with pytest.raises(ConfigError) as e:
        preselect([_rec(f"r{i}") for i in range(5)], cands, predictors=("features",))
    assert e.value.field == "runs" and "at least 8" in str(e.value)
    with pytest.raises(ConfigError) as e:
        preselect([_rec("r0")], cands, predictors=("mpl",), mpl_fit={"steps": 1})
    assert e.value.field == "runs" and "at least 2" in str(e.value)
    with pytest.raises(ConfigError) as e:  # constant runs only: the law's decay term cannot be fitted
        MPLPredictor().fit([_rec("a"), _rec("b")])
    assert e.value.field == "runs" and "decays" in str(e.value)
    with pytest.raises(ConfigError) as e:
        preselect([_rec(f"r{i}") for i in range(9)], cands, predictors=("features",), steps=50)
    assert e.value.field == "candidates.steps"


def test_cli_end_to_end(tmp_path):
    """The command line on run directories written as train.py writes them (config.yaml from the real config
    schema, metrics.jsonl rows), with curves from a known law: table, plot, results and a winner recipe that
    names a registered schedule."""
    from helpers import SMALL

    from pretrain.config import load_config
    from pretrain.tools.preselect import main

    base = load_config(SMALL + ["train.steps=60"]).to_dict()
    T = 60
    for i, c in enumerate(_cands(FAMS, (2e-3, 6e-3, 1.5e-2), 5)):
        r = _mpl_record(c, T)
        d = tmp_path / "runs" / c.name
        d.mkdir(parents=True)
        cfg = json.loads(json.dumps(base))
        cfg["optim"]["lr"] = c.peak
        cfg["schedule"] = {"name": c.schedule, "warmup_steps": c.warmup, **c.kw}
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        rows = [{"step": 0, "kind": "eval", "val_loss": 6.0}]
        rows += [{"step": s + 1, "loss": 5.0 - 0.01 * s, "lr": float(r.lrs[s])} for s in range(T)]
        rows += [{"step": int(s), "kind": "eval", "val_loss": float(v)} for s, v in zip(r.val_steps, r.val_losses)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"steps": T, "peak_lr": [4e-3, 1e-2], "warmup_steps": [8], "families": {
        "linear": {"schedule": "linear"}, "wsd_lin": {"schedule": "wsd", "decay_shape": "linear"},
        "mpl": {"schedule": "mpl"}}, "mpl": {"iters": 200}}))
    out = tmp_path / "out"
    assert main(["--runs", str(tmp_path / "runs"), "--candidates", str(grid), "--out", str(out),
                 "--bootstrap-mpl", "2", "--bootstrap-features", "20", "--mpl-restarts", "1", "--mpl-steps", "100"]) == 0
    for f in ("table.md", "results.json", "curves.png", "winner.yaml"):
        assert (out / f).is_file(), f
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["candidates"]) == 6 and sorted(c["features"]["rank"] for c in doc["candidates"]) == list(range(1, 7))
    win = yaml.safe_load((out / "winner.yaml").read_text())
    best = min(doc["candidates"], key=lambda c: c["features"]["rank"])
    assert win["optim"]["lr"] == best["peak_lr"] and win["schedule"]["warmup_steps"] == 8
    assert len(list((out / "mpl_schedules").glob("*.json"))) == 2
    # an unknown schedule in the grid: exit code 2 and the field named, before any run is read
    grid.write_text(yaml.safe_dump({"peak_lr": 1e-3, "families": {"z": {"schedule": "zigzag"}}}))
    assert main(["--runs", str(tmp_path / "nowhere"), "--candidates", str(grid), "--out", str(out)]) == 2
