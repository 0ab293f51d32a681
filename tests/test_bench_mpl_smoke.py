"""bench/mpl_tiny.py --quick trains its four small runs, fits, optimizes, prints its tables and writes its JSON."""
import json
import subprocess
import sys
from pathlib import Path

from helpers import dump, env

BENCH = Path(__file__).resolve().parents[1] / "bench" / "mpl_tiny.py"


def test_mpl_tiny_bench_quick(tmp_path):
    out = tmp_path / "mpl"
    cmd = [sys.executable, str(BENCH), "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env())
    assert proc.returncode == 0, dump(proc)
    text = proc.stdout
    assert "### MPL prediction of the held-out WSD run's final validation loss" in text, dump(proc)
    assert "### Final validation loss per schedule" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for name in ("mpl_r2", "mpl", "cosine", "wsd", "constant", "val_loss/skip0.1 (primary)"):
        assert name in rows, (name, list(rows))

    res = json.loads((out / "results.json").read_text())
    for key in ("settings", "machine", "runs", "primary_variant", "prediction", "pooled_fit", "schedule",
                "schedule_round2", "final_val_loss", "runtime_s"):
        assert key in res, key
    assert res["settings"]["quick"] and res["settings"]["seeds"] == [0]
    assert set(res["runs"]) == {"constant", "cosine", "wsd", "mpl", "mpl_r2"}
    pred = res["prediction"][res["primary_variant"]]
    assert abs(pred["per_seed"]["0"]["rel_err"]) < 0.5  # a number, and not absurd
    for name in ("mpl_r2", "mpl", "cosine", "wsd", "constant"):
        assert res["final_val_loss"][name]["per_seed"]["0"] > 0
    assert set(res["pooled_fits"][res["primary_variant"]]["rel_err_per_seed"]) == {"0"}
    # round 2 is fitted on every run of round 1
    assert sorted(res["schedule_round2"]["fit_runs"]) == sorted(r["run_dir"] for n, v in res["runs"].items()
                                                                 if n != "mpl_r2" for r in v.values())
    for key in ("schedule", "schedule_round2"):
        sched = json.loads(Path(res[key]["path"]).read_text())
        assert sched["total_steps"] == res["settings"]["steps"] and len(sched["lrs"]) == sched["total_steps"]

    # a second call reuses every run (resumable) and gives the same final losses
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env())
    assert again.returncode == 0, dump(again)
    assert again.stdout.count("  reuse ") == 5, again.stdout
    res2 = json.loads((out / "results.json").read_text())
    assert res2["final_val_loss"] == res["final_val_loss"]
