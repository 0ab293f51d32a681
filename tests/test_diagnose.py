"""Instability diagnostics (pretrain.tools.diagnose): the verdict on metrics rows built by hand, then on real short
runs of cases built to have each problem (no warmup at a high lr; a planted gradient spike; a healthy recipe), and
bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import SMALL
from pretrain.tools.diagnose import (Thresholds, combine, diagnose_run, early_end, final_loss, find_events, main,
                                     sweep_lrs)


def rows_of(losses, norms, clipped=None, start=1):
    """Train rows as the loop writes them (step, loss, lr, grad_norm, clip_threshold, clipped, clip_fraction)."""
    clipped = clipped or [0] * len(losses)
    return [{"step": start + i, "tokens": (start + i) * 512, "loss": loss, "lr": 1e-3, "grad_norm": g,
             "clip_threshold": 1.0, "clipped": c, "clip_fraction": 0.0, "tokens_per_s": 1.0}
            for i, (loss, g, c) in enumerate(zip(losses, norms, clipped))]


def healthy(n=100, seed=0):
    """A decaying loss 3 + 3 exp(-t/30) with 1% noise and gradient norms 1 +- 10%: no event."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, n + 1)
    losses = (3 + 3 * np.exp(-t / 30)) * (1 + 0.01 * rng.standard_normal(n))
    norms = 1 + 0.1 * rng.standard_normal(n)
    return [float(x) for x in losses], [float(x) for x in norms]


def test_early_end_is_warmup_plus_the_larger_of_warmup_and_a_fifth_of_the_run():
    assert early_end(30, 300) == 30 + 60
    assert early_end(100, 300) == 200
    assert early_end(0, 60) == 12
    assert early_end(0, 61) == 13  # ceil(12.2)
    assert early_end(5, 100, Thresholds(early_fraction=0.5)) == 55


def test_healthy_rows_are_stable():
    losses, norms = healthy()
    d = diagnose_run(rows_of(losses, norms), warmup_steps=10, total_steps=100)
    assert d["verdict"] == "stable" and d["events"] == [], d
    assert d["final_loss"] == pytest.approx(float(np.median(losses[-10:])))


def test_spike_thresholds_against_hand_computed_medians():
    """Loss spike: loss > 1.1 x the median of the previous 10 losses; gradient spike: norm > 10 x the median of
    the previous 10 norms (strict)."""
    losses = [5.0] * 10 + [5.5, 5.0, 5.51]  # 5.5 = 1.1 x 5.0: no spike; 5.51: spike (median still 5.0)
    norms = [1.0] * 5 + [2.0] * 5 + [15.0, 1.0, 1.0]  # median of the 10 previous = 1.5: 15 is 10x, no spike
    ev = find_events(rows_of(losses, norms))
    assert [(e["step"], e["kind"]) for e in ev] == [(13, "loss_spike")]
    assert ev[0]["reference"] == 5.0 and ev[0]["value"] == 5.51
    norms[10] = 15.01
    ev = find_events(rows_of(losses, norms))
    assert [(e["step"], e["kind"]) for e in ev] == [(11, "grad_spike"), (13, "loss_spike")]
    assert ev[0]["reference"] == float(np.median(norms[0:10])) == 1.5
    # the reference is the median of the previous 10 rows: not the lowest loss so far (3.5 > 1.1 x 3.0)
    losses = [3.0] + [3.2] * 12 + [3.5]
    assert find_events(rows_of(losses, [1.0] * 14)) == []


def test_early_loss_spike_or_divergence_means_warmup():
    losses, norms = healthy()
    losses[6] = losses[5] * 1.4  # step 7, during warmup
    d = diagnose_run(rows_of(losses, norms), warmup_steps=10, total_steps=100)
    assert d["verdict"] == "warmup" and d["events"][0]["step"] == 7 and d["events"][0]["kind"] == "loss_spike"
    assert "step 7" in d["reason"] and "steps <= 30" in d["reason"]
    # right after warmup still counts as early: warmup 10 + max(10, 20) = 30
    losses, norms = healthy()
    losses[29] *= 1.5
    assert diagnose_run(rows_of(losses, norms), warmup_steps=10, total_steps=100)["verdict"] == "warmup"
    losses, norms = healthy()
    losses[30] *= 1.5  # step 31
    assert diagnose_run(rows_of(losses, norms), warmup_steps=10, total_steps=100)["verdict"] == "clipping"
    # divergence: the loop stops at a non-finite loss, so the rows end early
    losses, norms = healthy()
    d = diagnose_run(rows_of(losses[:8], norms[:8]), warmup_steps=10, total_steps=100)
    assert d["verdict"] == "warmup" and d["events"] == [
        {"step": 9, "kind": "diverged", "value": None, "reference": None,
         "detail": "the run stopped after step 8 of 100"}]
    assert d["final_loss"] == math.inf
    # a non-finite loss logged (metrics.jsonl writes it as null)
    rows = rows_of(losses, norms)
    rows[3]["loss"] = None
    d = diagnose_run(rows, warmup_steps=10, total_steps=100)
    assert d["verdict"] == "warmup" and d["events"][0]["kind"] == "diverged" and d["events"][0]["step"] == 4


def test_late_isolated_gradient_spike_with_recovery_means_clipping():
    losses, norms = healthy()
    norms[59] = 1000.0  # step 60: a corrupted batch
    losses[59] *= 1000
    clipped = [0] * 100
    clipped[59] = 1
    d = diagnose_run(rows_of(losses, norms, clipped), warmup_steps=10, total_steps=100)
    assert d["verdict"] == "clipping" and d["recovered"] is True
    assert [(e["step"], e["kind"]) for e in d["events"]] == [(60, "grad_spike"), (60, "loss_spike")]
    ratio = 1000.0 / float(np.median(norms[49:59]))
    assert f"{ratio:.3g}x" in d["reason"] and "isolated" in d["reason"] and "1 of them clipped" in d["reason"]
    assert "came back" in d["reason"]


def test_late_spike_without_recovery_is_still_clipping_and_says_so():
    losses, norms = healthy()
    norms[59] = 50.0
    losses[59:] = [x * 1.5 for x in losses[59:]]  # the loss jumps and stays up
    d = diagnose_run(rows_of(losses, norms), warmup_steps=10, total_steps=100)
    assert d["verdict"] == "clipping" and d["recovered"] is False
    assert "did not come back" in d["reason"]


def test_eval_loss_rise_is_an_event():
    losses, norms = healthy()
    evals = [{"step": s, "kind": "eval", "val_loss": v} for s, v in
             [(0, 6.0), (10, 5.0), (20, 4.0), (30, 4.1), (40, 4.3)]]  # 4.1 <= 1.05 x 4; 4.3 > 4.2
    d = diagnose_run(rows_of(losses, norms) + evals, warmup_steps=0, total_steps=100)
    assert [(e["step"], e["kind"]) for e in d["events"]] == [(40, "val_rise")]
    assert d["verdict"] == "clipping"  # after early_end(0, 100) = 20
    evals[2]["val_loss"] = 6.5  # step 20 > 1.05 x 5.0: early
    assert diagnose_run(rows_of(losses, norms) + evals, warmup_steps=0, total_steps=100)["verdict"] == "warmup"


def test_combine_early_first_then_late():
    assert combine(["stable", "stable"]) == "stable"
    assert combine(["stable", "clipping"]) == "clipping"
    assert combine(["clipping", "warmup", "stable"]) == "warmup"
    assert combine([]) == "stable"


def test_final_loss_and_sweep_lrs():
    losses = [float(x) for x in range(40, 0, -1)]
    assert final_loss(rows_of(losses, [1.0] * 40)) == float(np.median([4.0, 3.0, 2.0, 1.0]))
    assert final_loss(rows_of([5.0, 4.0], [1.0, 1.0])) == 4.0
    assert final_loss(rows_of([5.0, 4.0], [1.0, 1.0]), total_steps=10) == math.inf
    assert sweep_lrs(1e-3, 5, 2.0) == pytest.approx([2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3])
    assert sweep_lrs(1e-3, 2, 10.0) == pytest.approx([1e-4, 1e-3])
    assert sweep_lrs(3e-3, 1, 2.0) == [3e-3]


# -- bad input: one line, before any run ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, field", [
    (["--bogus"], "arguments: unrecognized arguments: --bogus"),
    (["train.steps=10", "--lrs", ""], "--lrs: the sweep is empty"),
    (["--points", "0"], "--points: the sweep is empty"),
    (["--lrs", "1e-3,abc"], "--lrs: expected comma-separated numbers"),
    (["--lrs=0,1e-3"], "--lrs: 0.0 is out of range"),
    (["--multipliers", ""], "--multipliers: no probe lrs"),
    (["train.steps=10", "--spike-step", "11"], "--spike-step: 11 is out of range"),
    (["--points", "x"], "arguments: argument --points: invalid int value"),
    (["optim.lrr=1"], "optim.lrr"),
    (["--lrs", "1e-3,0.001"], "--lrs: values repeat"),
])
def test_bad_input_is_one_line_before_any_run(tmp_path, capsys, args, field):
    out = tmp_path / "d"
    assert main([*SMALL, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"config error: {field}") and err.count("\n") == 1, err
    assert not out.exists()


def test_existing_out_is_refused(tmp_path, capsys):
    (tmp_path / "d" / "probe_2x").mkdir(parents=True)
    assert main([*SMALL, "--lrs", "1e-3", "--out", str(tmp_path / "d")]) == 2
    assert "--out" in capsys.readouterr().err
    assert not (tmp_path / "d" / "sweep_lr0.001").exists()


# -- real short runs of the tiny recipe ----------------------------------------------------------------------------
def diagnose_cli(tmp_path, name, args):
    out = tmp_path / name
    assert main([*SMALL, "train.steps=40", "--eval-every", "4", "--out", str(out), *args]) == 0
    report = json.loads((out / "report.json").read_text())
    for png in ("loss.png", "grad_norm.png", "grad_norm_hist.png", "clip_fraction.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    return report, out


def test_end_to_end_planted_spike_needs_clipping(tmp_path):
    """A healthy recipe with a corrupted batch at step 25 of 40 (loss x1000): an isolated late gradient spike."""
    report, out = diagnose_cli(tmp_path, "spike", ["schedule.warmup_steps=4", "--lrs", "1.5e-3,3e-3",
                                                   "--multipliers", "2", "--spike-step", "25"])
    assert report["verdict"] == "clipping", report
    assert report["lr_star"] in (1.5e-3, 3e-3) and report["early_end"] == 4 + 8
    runs = {r["name"]: r for r in report["runs"]}
    assert set(runs) == {"sweep_lr0.0015", "sweep_lr0.003", "probe_2x"}
    assert runs["probe_2x"]["lr"] == pytest.approx(2 * report["lr_star"])
    for r in runs.values():
        assert r["verdict"] == "clipping" and r["recovered"] is True
        assert {(e["step"], e["kind"]) for e in r["events"]} >= {(25, "grad_spike"), (25, "loss_spike")}
    from pretrain.tracking import read_metrics
    rows = [r for r in read_metrics(str(out / "probe_2x")) if r.get("kind", "train") == "train"]
    assert [r["step"] for r in rows] == list(range(1, 41))  # every step logged
    spike, before = rows[24], rows[23]
    assert spike["loss"] > 500 * before["loss"] and spike["grad_norm"] > 100 * before["grad_norm"]
    assert spike["clipped"] == 1  # clip.policy=norm, the recipe's default
    evals = [r["step"] for r in read_metrics(str(out / "probe_2x")) if r.get("kind") == "eval"]
    assert evals == list(range(0, 41, 4))


def test_end_to_end_no_warmup_at_a_high_lr_needs_warmup_and_healthy_is_stable(tmp_path):
    """(a) lr 0.05 without warmup: the loss jumps in the first steps -> warmup. (c) the tiny recipe's lr 3e-3
    with a short warmup, probed at 2x and 4x: stable."""
    report, _ = diagnose_cli(tmp_path, "nowarmup", ["schedule.warmup_steps=0", "--lrs", "0.05", "--multipliers", "2"])
    assert report["verdict"] == "warmup", report
    assert all(r["verdict"] == "warmup" and r["events"][0]["step"] <= 8 for r in report["runs"]), report["runs"]
    report, _ = diagnose_cli(tmp_path, "healthy", ["schedule.warmup_steps=4", "--lrs", "3e-3", "--multipliers", "2,4"])
    assert report["verdict"] == "stable", report
    assert [r["verdict"] for r in report["runs"]] == ["stable"] * 3
