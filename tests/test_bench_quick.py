"""Every accuracy benchmark's --quick mode runs end to end, and what it prints and writes is recomputed here from
the run directories it leaves (metrics.jsonl), not taken from the benchmark's own bookkeeping."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import CACHE, dump, env, load_bench

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, env={**env(), "PRETRAIN_TEST_CACHE": CACHE})
    assert proc.returncode == 0, dump(proc)
    return proc


def table_rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows of the output: first cell -> the other cells."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def evals(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["val_loss"]) for r in rows if r.get("kind") == "eval" and r.get("val_loss") is not None]


def train_rows(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in rows if r.get("kind", "train") == "train" and "loss" in r}


def test_sample_efficiency_quick(tmp_path):
    out = tmp_path / "se"
    proc = bench("sample_efficiency.py", "--quick", "--out", str(out))
    res = json.loads((out / "results.json").read_text())
    assert set(res["results"]) == {"adamw_cosine", "adamw_mpl", "lion"}
    rows = table_rows(proc.stdout)
    means = []
    for name, r in res["results"].items():
        lr = r["best_lr"]
        tag = f"{lr:.0e}".replace("e-0", "e-")
        final = evals(out / "runs" / f"{name}_lr{tag}_s0")[-1]
        assert final[0] == 30 and r["per_seed"]["0"] == final[1]  # the final validation loss of that run
        assert rows[name][-1].startswith(f"{final[1]:.4f}")
        means.append((final[1], name))
    # printed in val-loss order
    assert [n for n in rows if n in res["results"]] == [n for _, n in sorted(means)]
    # the MPL schedule was fitted at its lr and is what its run trained with: its lrs are the run's lrs
    sched = json.loads(next(out.glob("mpl_schedule_T30_lr*.json")).read_text())
    got = train_rows(out / "runs" / f"adamw_mpl_lr{tag}_s0")
    assert len(sched["lrs"]) == 30
    for step, row in got.items():
        assert row["lr"] == pytest.approx(sched["lrs"][step - 1], rel=1e-6)
    assert res["commit"]


def test_steps_to_target_quick(tmp_path):
    out = tmp_path / "stt"
    bench("steps_to_target.py", "--quick", "--out", str(out))
    res = json.loads((out / "results.json").read_text())
    runs = out / "runs"
    # the target is AdamW's one-shot final validation loss (one seed here)
    assert res["target"] == evals(runs / "adamw_default_s0")[-1][1]
    assert set(res["results"]) == {"adamw", "adopt"}
    for name, r in res["results"].items():
        for arm, tag in (("one_shot", "default"), ("tuned", f"lr{r['best_lr']:.3g}")):
            curve = evals(runs / f"{name}_{tag}_s0")
            first = next((s for s, v in curve if v <= res["target"]), None)
            assert r[arm]["steps"] == [first], (name, arm)
            assert r[arm]["final"] == curve[-1][1]
        # the tuned lr is the search's best, drawn from [default / 10, default x 10]
        assert r["search"][f"{r['best_lr']:.3g}"] == min(r["search"].values())
        assert r["default_lr"] / 10 <= r["best_lr"] <= r["default_lr"] * 10
    assert res["results"]["adamw"]["one_shot"]["steps"] == [30]  # reaches its own final loss at the end


def test_wsd_branches_quick(tmp_path):
    out = tmp_path / "wb"
    proc = bench("wsd_branches.py", "--quick", "--lengths", "10,15", "--out", str(out))
    runs = out / "runs"
    stable = train_rows(runs / "stable_s0")
    for n, start in ((10, 8), (15, 12)):
        branch, full = train_rows(runs / f"branch_L{n}_s0"), train_rows(runs / f"wsd_L{n}_s0")
        assert sorted(branch) == list(range(start + 1, n + 1))  # only the cooldown was trained
        for s in branch:  # the branch's steps are the full WSD run's, bit for bit
            assert (branch[s]["loss"], branch[s]["lr"]) == (full[s]["loss"], full[s]["lr"])
        assert branch[start + 1]["loss"] == stable[start + 1]["loss"]
        assert full[start]["lr"] == stable[start]["lr"]
        assert table_rows(proc.stdout)[str(n)][2] == "1/1"
    assert "stable run + cooldowns 20, separate cosine runs 25" in proc.stdout


def adam_reference(grads, b1, b2, lrs, eps=1e-8):
    x, m, v, xs = 0.0, 0.0, 0.0, []
    for t, (g, lr) in enumerate(zip(grads, lrs), 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x -= lr * (m / (1 - b1 ** t)) / (math.sqrt(v / (1 - b2 ** t)) + eps)
        xs.append(x := min(1.0, max(-1.0, x)))
    return xs


def adopt_reference(grads, b1, b2, lrs, clip, eps=1e-6):
    """Taniguchi et al.'s Algorithm (official code's clip t**0.25, t = steps before this one)."""
    x, m, v, xs = 0.0, 0.0, None, []
    for t, (g, lr) in enumerate(zip(grads, lrs)):
        if v is None:
            v = g * g
        else:
            n = g / max(math.sqrt(v), eps)
            if clip:
                n = min(t ** 0.25, max(-t ** 0.25, n))
            m = m + (1 - b1) * (n - m)
            x -= lr * m
            v = b2 * v + (1 - b2) * g * g
        xs.append(x := min(1.0, max(-1.0, x)))
    return xs


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_adopt_counterexample_harness_against_plain_loops(beta1):
    """The benchmark's online problem through the registry's optimizers = plain-Python Adam / ADOPT on the same
    gradients (Reddi et al.'s f_t), per beta2, as the mean of x over the last 10% of steps."""
    mod = load_bench("adopt_counterexample")
    steps, alpha = 600, 0.1
    grads = [3.0 if t % 3 == 1 else -1.0 for t in range(1, steps + 1)]
    lrs = [alpha / math.sqrt(t) for t in range(1, steps + 1)]
    problem = f"online C=3, beta1={beta1:g}"
    for name in ("adam", "adopt", "adopt_noclip"):
        got = mod.run(problem, name, steps, 1, alpha, 0)
        for b2 in mod.BETA2:
            xs = (adam_reference(grads, beta1, b2, lrs) if name == "adam" else
                  adopt_reference(grads, beta1, b2, lrs, clip=name == "adopt"))
            assert got[b2]["x"] == pytest.approx(float(np.mean(xs[steps - steps // 10:])), abs=1e-9), (name, b2)


def test_adopt_counterexample_quick(tmp_path):
    out = tmp_path / "adopt.json"
    proc = bench("adopt_counterexample.py", "--quick", "--out", str(out))
    res = json.loads(out.read_text())["results"]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 4 * 4  # header + 4 problems x 4 optimizers
    for line in rows[1:]:  # the printed table is the JSON
        problem, name, *cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert [float(c.split()[0]) for c in cells] == [round(res[problem][name][b]["x"], 3)
                                                      for b in ("0.1", "0.5", "0.9", "0.99", "0.999")]
    # the paper's point at this scale. Reddi et al.'s online problem at their beta1 = 0, beta2 = 1/(1+C^2) = 0.1:
    # Adam ends at the worst point, ADOPT (clipped or not) at the minimum for every beta2
    online = res["online C=3, beta1=0"]
    assert online["adam"]["0.1"]["x"] > 0.99
    assert all(r["x"] < -0.99 for name in ("adopt", "adopt_noclip") for r in online[name].values())
    # the stochastic one (k = 10): unclipped ADOPT on the minimum's side for every beta2, Adam at a small one not
    k10 = res["stochastic k=10"]
    assert all(r["x"] < 0 for r in k10["adopt_noclip"].values()), k10["adopt_noclip"]
    assert k10["adam"]["0.1"]["x"] > 0.5, k10["adam"]


def test_mutransfer_quick(tmp_path):
    out = tmp_path / "mt"
    proc = bench("mutransfer.py", "--quick", "--out", str(out))
    drifts = dict(re.findall(r"^\s+(\w+ \w+)\s+([+-]\d+\.\d+)$", proc.stdout, re.M))
    assert set(drifts) == {"width sp", "width mup", "depth mup", "depth completep"}
    for axis in ("width", "depth"):
        rows = [json.loads(line) for line in (out / axis / "results.jsonl").read_text().splitlines()]
        assert (out / f"{axis}.png").stat().st_size > 0
        for name in {r["parametrization"] for r in rows}:
            xs = sorted({r[axis] for r in rows if r["parametrization"] == name})
            # lr* per width/depth from the rows (one seed): the vertex of the parabola in log2 lr through the
            # best loss and its neighbours (closed form on the evenly spaced grid), the grid's best at an edge;
            # the drift = least-squares slope of log2 lr* on log2 x
            opt = []
            for x in xs:
                pts = sorted((math.log2(r["lr"]), r["loss"]) for r in rows
                             if r["parametrization"] == name and r[axis] == x)
                i = min(range(len(pts)), key=lambda j: pts[j][1])
                if i in (0, len(pts) - 1):
                    opt.append(pts[i][0])
                    continue
                (x0, y0), (x1, y1), (x2, y2) = pts[i - 1:i + 2]
                h, curv = x1 - x0, y2 - 2 * y1 + y0
                assert x2 - x1 == pytest.approx(h)
                opt.append(min(x2, max(x0, x1 - h / 2 * (y2 - y0) / curv)) if curv > 0 else x1)
            slope = np.polyfit(np.log2(xs), opt, 1)[0]
            assert float(drifts[f"{axis} {name}"]) == pytest.approx(slope, abs=6e-4), (axis, name)


def test_hyper_schedules_quick(tmp_path):
    out = tmp_path / "hq"
    proc = bench("hyper_schedules.py", "--quick", "--out", str(out))
    res = json.loads((out / "results.json").read_text())
    runs = out / "runs"
    # the cosine peak is the sweep's best, and every row's value is its run's final validation loss
    assert res["sweep"][f"{res['peak_lr']:g}"] == min(res["sweep"].values())
    dirs = {"cosine": f"cosine_lr{res['peak_lr']:g}_s0", **{n: f"{n}_s0" for n in res["vals"] if n != "cosine"}}
    assert set(res["vals"]) == {"cosine", "wsd", "mpl", "sgd_hd", "adam_hd", "learned"}
    rows = table_rows(proc.stdout)
    for name, d in dirs.items():
        final = evals(runs / d)[-1]
        assert final[0] == res["steps"] and res["vals"][name] == [final[1]], name
        assert rows[name][0] == f"{final[1]:.4f}"
    # the learned run trained with the lrs the proxy learned, at optim.lr = the cosine peak (every group rescaled
    # by peak / the file's peak_lr): its logged lr is one group's rescaled learned lr at that step
    learned = json.loads((out / "hyperlearn" / "learned_schedule.json").read_text())
    assert learned["total_steps"] == res["steps"] and (out / "hyperlearn" / "learned_lrs.png").stat().st_size > 0
    scale = res["peak_lr"] / learned["peak_lr"]
    for step, row in train_rows(runs / "learned_s0").items():
        assert any(row["lr"] == pytest.approx(scale * lrs[step - 1], rel=1e-6)
                   for lrs in learned["lrs"].values()), (step, row["lr"])
