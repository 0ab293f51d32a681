"""Multi-Power Law: prediction against a plain double loop, fit recovery, schedule optimization, the `mpl`
schedule, metrics.jsonl parsing and the CLI."""
import json

import numpy as np
import pytest
import torch

from pretrain.errors import ConfigError
from pretrain.schedules import build_schedule
from pretrain.schedules.mpl import (PAPER_25M, MPLParams, Run, evaluate, fit, load_runs_from_metrics,
                                    load_schedule, optimize_schedule, predict, save_schedule)

P = PAPER_25M


# ---------------------------------------------------------------- schedules used below (project warmup: step/W)
def warm(peak, W):
    return peak * np.arange(W) / W


def constant(T, W, peak):
    return np.concatenate([warm(peak, W), np.full(T - W, peak)])


def cosine(T, W, peak, lo=0.1):
    s = np.arange(T - W)
    return np.concatenate([warm(peak, W), lo * peak + 0.5 * (1 - lo) * peak * (1 + np.cos(np.pi * s / (T - W)))])


def two_step(T, W, peak, at=0.6, low=0.3):
    s = np.arange(W, T)
    return np.concatenate([warm(peak, W), np.where(s < W + int(at * (T - W)), peak, low * peak)])


def wsd(T, W, peak, decay=0.2, lo=0.05):
    s = np.arange(W, T)
    d0 = T - int(decay * T)
    frac = np.clip((s - d0) / (T - d0), 0, 1)
    return np.concatenate([warm(peak, W), peak * (1 - frac) + lo * peak * frac])


def reference_predict(p: MPLParams, lrs, W):
    """The formula as a plain double loop: S(t) = sum_{tau<=t} eta; LD over k = W+1..t."""
    T = len(lrs)
    out = np.full(T, np.nan)
    for t in range(1, T):
        ld = 0.0
        for k in range(W + 1, t + 1):
            s_k = np.sum(lrs[k:t + 1])
            ld += (lrs[k - 1] - lrs[k]) * (1.0 - (p.C * lrs[k] ** (-p.gamma) * s_k + 1.0) ** (-p.beta))
        out[t] = p.L0 + p.A * np.sum(lrs[:t + 1]) ** (-p.alpha) - p.B * ld
    return out


# ---------------------------------------------------------------- (a) predict == double loop
@pytest.mark.parametrize("kind", ["constant", "cosine", "two_step"])
@pytest.mark.parametrize("W", [30, 0])
def test_predict_matches_double_loop(kind, W):
    T, peak = 300, 3e-4
    if W == 0:  # no warmup: the official fitting convention, the ramp (if any) sits inside LD
        lrs = {"constant": constant, "cosine": cosine, "two_step": two_step}[kind](T, 30, peak)
    else:
        lrs = {"constant": constant, "cosine": cosine, "two_step": two_step}[kind](T, W, peak)
    ref = reference_predict(P, lrs, W)
    got = predict(P, lrs, warmup_steps=W)
    assert isinstance(got, np.ndarray) and got.shape == (T,)
    np.testing.assert_allclose(got[1:], ref[1:], rtol=1e-10, atol=0)
    at = [1, 17, W + 1, 150, 299]
    np.testing.assert_allclose(predict(P, lrs, W, at_steps=at), ref[at], rtol=1e-10, atol=0)


def test_predict_is_differentiable_and_fast():
    lrs = torch.tensor(cosine(300, 30, 3e-4), requires_grad=True)
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in P.to_dict().items()}
    out = predict(params, lrs, 30, at_steps=[299])
    assert torch.is_tensor(out) and out.dtype == torch.float64
    out.sum().backward()
    assert lrs.grad is not None and torch.isfinite(lrs.grad).all()
    assert all(torch.isfinite(v.grad) for v in params.values())
    # a paper-sized run at 100 points is cheap
    import time

    big = cosine(24000, 2160, 3e-4)
    t0 = time.perf_counter()
    y = predict(P, big, 2160, at_steps=np.linspace(2161, 23999, 100).astype(int))
    assert time.perf_counter() - t0 < 3.0
    assert np.all(np.isfinite(y)) and 3.0 < y[-1] < y[0]


def test_params_json_roundtrip(tmp_path):
    P.to_json(tmp_path / "p.json", note="x")
    assert MPLParams.from_json(tmp_path / "p.json") == P
    assert MPLParams.from_dict({"params": P.to_dict()}) == P


# ---------------------------------------------------------------- (b) fit recovers the curves
def test_fit_recovers_paper_curves():
    # the published 25M fit, shortened to 3000 steps (10% warmup) with a larger peak so the lr area is similar
    T, W, peak = 3000, 270, 1e-3
    at = np.unique(np.linspace(W + 1, T - 1, 60).astype(int))
    train = {"constant": constant(T, W, peak), "cosine": cosine(T, W, peak), "two_step": two_step(T, W, peak)}
    runs = [Run(l, at, predict(P, l, W, at_steps=at), W, n) for n, l in train.items()]
    held = {"wsd": wsd(T, W, peak)}
    heldout = [Run(l, at, predict(P, l, W, at_steps=at), W, n) for n, l in held.items()]
    params, report = fit(runs, heldout=heldout, steps=150, restarts=2)
    dense = np.arange(W + 1, T, 7)
    for name, l in {**train, **held}.items():
        true = predict(P, l, W, at_steps=dense)
        got = predict(params, l, W, at_steps=dense)
        assert np.max(np.abs(got - true) / true) < 1e-3, name
    assert report["train"]["all"]["r2"] > 0.999 and report["heldout"]["runs"]["wsd"]["mare"] < 1e-3
    assert set(report["train"]["runs"]) == set(train)
    assert all(v > 0 for v in params.as_tuple())
    ev = evaluate(params, heldout)
    assert ev["runs"]["wsd"]["max_rel_err"] < 1e-3 and ev["all"]["mae"] < 3e-3


# ---------------------------------------------------------------- (c) optimize
def test_optimize_schedule_beats_cosine_and_constant():
    T, W, peak, min_lr = 1500, 135, 1e-3, 1e-5
    lrs = optimize_schedule(P, T, peak, W, min_lr=min_lr, iters=200)
    assert lrs.shape == (T,)
    np.testing.assert_allclose(lrs[:W], warm(peak, W))
    post = lrs[W:]
    assert post[0] == peak
    assert np.all(np.diff(post) <= 0)
    assert post.min() >= min_lr
    final = lambda l: predict(P, l, W, at_steps=[T - 1])[0]  # noqa: E731
    f_opt = final(lrs)
    assert f_opt < final(cosine(T, W, peak)) and f_opt < final(constant(T, W, peak))


# ---------------------------------------------------------------- (d) the `mpl` schedule
def test_mpl_schedule_reads_file(tmp_path):
    T, W, peak = 50, 5, 2e-3
    lrs = cosine(T, W, peak)
    path = save_schedule(tmp_path / "s.json", lrs, {"peak_lr": peak, "warmup_steps": W, "params": P})
    doc = load_schedule(path)
    assert doc["total_steps"] == T and doc["warmup_steps"] == W and doc["params"] == P.to_dict()
    np.testing.assert_allclose(doc["lrs"], lrs)
    s = build_schedule("mpl", peak_lr=2 * peak, total_steps=T, path=str(path))
    for step in (0, 3, W, 20, T - 1):
        assert s(step) == pytest.approx(2 * lrs[step], rel=1e-12)
        assert s.factor(step) == pytest.approx(lrs[step] / peak, rel=1e-12)
    assert s(T + 10) == pytest.approx(2 * lrs[-1])


def test_mpl_schedule_errors(tmp_path):
    with pytest.raises(ConfigError, match="schedule.path") as e:
        build_schedule("mpl", peak_lr=1e-3, total_steps=10)
    assert e.value.field == "schedule.path"
    with pytest.raises(ConfigError, match="schedule.path") as e:
        build_schedule("mpl", peak_lr=1e-3, total_steps=10, path=str(tmp_path / "nope.json"))
    assert "does not exist" in str(e.value) and "pretrain.tools.mpl optimize" in str(e.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="schedule.path") as e:
        build_schedule("mpl", peak_lr=1e-3, total_steps=10, path=str(bad))
    assert "cannot read" in str(e.value)
    path = save_schedule(tmp_path / "s.json", np.full(12, 1e-3), {"peak_lr": 1e-3})
    with pytest.raises(ConfigError, match="schedule.path") as e:
        build_schedule("mpl", peak_lr=1e-3, total_steps=10, path=str(path))
    assert "12" in str(e.value) and "10" in str(e.value) and e.value.field == "schedule.path"


# ---------------------------------------------------------------- (e) metrics.jsonl
def _write_run(d, lrs, W, every=10, eval_every=50, noise=0.0, params=P, rng=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(f"schedule:\n  name: cosine\n  warmup_steps: {W}\ntrain:\n  steps: {len(lrs)}\n")
    truth = predict(params, lrs, W, at_steps=np.arange(1, len(lrs)))
    with open(d / "metrics.jsonl", "w") as f:
        for s in range(every, len(lrs), every):
            loss = truth[s - 1] + (noise * rng.standard_normal() if noise else 0.0)
            f.write(json.dumps({"step": s, "tokens": s * 100, "loss": loss, "lr": lrs[s], "grad_norm": 1.0,
                                "tokens_per_s": 1.0}) + "\n")
            if s % eval_every == 0:
                f.write(json.dumps({"step": s, "val_loss": truth[s - 1]}) + "\n")
        f.write("\n")
    return truth


def test_load_runs_from_metrics(tmp_path):
    T, W, peak = 400, 40, 1e-3
    lrs = cosine(T, W, peak)
    truth = _write_run(tmp_path / "cos", lrs, W)
    (run,) = load_runs_from_metrics([tmp_path / "cos"])
    assert run.name == "cos" and run.warmup_steps == W
    assert run.lrs.size == 391 and run.lrs[0] == 0.0
    np.testing.assert_allclose(run.lrs[10:391:10], lrs[10:391:10])
    np.testing.assert_allclose(run.lrs[20:391], lrs[20:391], rtol=0, atol=1e-3 * peak)  # interpolated in between
    np.testing.assert_array_equal(run.steps, np.arange(50, 391, 50))
    np.testing.assert_allclose(run.losses, truth[run.steps - 1])
    (tr,) = load_runs_from_metrics(tmp_path / "cos" / "metrics.jsonl", key="loss", smooth=3, warmup_steps=7)
    assert tr.warmup_steps == 7 and tr.steps.size == 39
    raw = truth[tr.steps - 1]
    assert tr.losses[5] == pytest.approx(raw[4:7].mean()) and tr.losses[0] == pytest.approx(raw[0])
    assert tr.losses[-1] == pytest.approx(raw[-1])
    with pytest.raises(ValueError, match="no rows with 'nope'"):
        load_runs_from_metrics([tmp_path / "cos"], key="nope")


# ---------------------------------------------------------------- CLI
def test_cli_fit_predict_optimize(tmp_path, capsys):
    from pretrain.tools import mpl as cli

    T, W, peak = 600, 60, 2e-3
    _write_run(tmp_path / "const", constant(T, W, peak), W)
    _write_run(tmp_path / "cos", cosine(T, W, peak), W)
    _write_run(tmp_path / "wsd", wsd(T, W, peak), W)
    out = tmp_path / "params.json"
    assert cli.main(["fit", "--runs", str(tmp_path / "const"), str(tmp_path / "cos"), "--heldout",
                     str(tmp_path / "wsd"), "--out", str(out), "--steps", "60", "--restarts", "1"]) == 0
    text = capsys.readouterr().out
    assert "held-out runs:" in text and "R^2=" in text and "wsd" in text
    fitted = MPLParams.from_json(out)
    fit_meta = json.loads(out.read_text())["fit"]
    assert fit_meta["heldout"]["n"] > 0 and len(fit_meta["heldout_runs"]) == 1

    lrs_file = save_schedule(tmp_path / "cos_sched.json", cosine(T, W, peak), {"peak_lr": peak, "warmup_steps": W})
    assert cli.main(["predict", "--params", str(out), "--lrs-file", str(lrs_file), "--steps", str(T),
                     "--out", str(tmp_path / "pred.json")]) == 0
    pred = json.loads((tmp_path / "pred.json").read_text())
    assert pred["warmup_steps"] == W
    assert pred["loss"][-1] == pytest.approx(predict(fitted, cosine(T, W, peak), W, at_steps=[T - 1])[0])
    assert "predicted final loss" in capsys.readouterr().out

    sched = tmp_path / "opt.json"
    assert cli.main(["optimize", "--params", str(out), "--steps", str(T), "--peak-lr", str(peak), "--warmup",
                     str(W), "--iters", "30", "--out", str(sched)]) == 0
    s = build_schedule("mpl", peak_lr=peak, total_steps=T, path=str(sched))
    assert s(W) == pytest.approx(peak) and s(T - 1) <= peak
    assert "optimized" in capsys.readouterr().out


def test_cli_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from pretrain.tools import mpl as cli

    T, W, peak = 300, 30, 2e-3
    _write_run(tmp_path / "cos", cosine(T, W, peak), W, every=5, eval_every=25)
    P.to_json(tmp_path / "p.json")
    assert cli.main(["fit", "--runs", str(tmp_path / "cos"), "--init", str(tmp_path / "p.json"), "--steps", "5",
                     "--plot", str(tmp_path / "fit.png")]) == 0
    assert cli.main(["optimize", "--params", str(tmp_path / "p.json"), "--steps", str(T), "--peak-lr", str(peak),
                     "--warmup", str(W), "--iters", "5", "--plot", str(tmp_path / "opt.png")]) == 0
    assert (tmp_path / "fit.png").stat().st_size > 1000 and (tmp_path / "opt.png").stat().st_size > 1000


def test_fit_adamw_only_accepts_tuples_and_evaluate_is_exact_at_truth():
    T, W, peak = 400, 40, 1e-3
    at = np.arange(W + 1, T, 9)
    runs = [(l, at, predict(P, l, W, at_steps=at), W) for l in (constant(T, W, peak), cosine(T, W, peak))]
    params, report = fit(runs, init=[P.to_dict(), P], steps=10, polish=None, skip_fraction=0.0)
    assert len(report["restarts"]) == 2 and report["polish"] is None
    assert report["objective"] == report["objective_adamw"] and all(v > 0 for v in params.as_tuple())
    ev = evaluate(P, runs)
    assert set(ev["runs"]) == {"run0", "run1"}
    assert ev["all"]["r2"] == pytest.approx(1.0) and ev["all"]["mae"] < 1e-12
