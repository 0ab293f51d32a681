"""bench/optim_step.py runs on a small model and prints its table (reference packages optional)."""
import os
import subprocess
import sys
from pathlib import Path

from helpers import load_bench

BENCH = Path(__file__).resolve().parents[1] / "bench" / "optim_step.py"


def test_optim_step_bench_prints_table(tmp_path):
    out = tmp_path / "out.json"
    # --compile none: compiling on a 10M-parameter model takes minutes on 2 cores (tests/test_optim_compiled.py
    # covers the compiled step)
    cmd = [sys.executable, str(BENCH), "--small", "--optims", "adopt,lion", "--repeats", "2", "--warmup", "1",
           "--compile", "none", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("optimizer"))
    for col in ("source", "eager", "compiled", "bound", "reference packages", "state B/param"):
        assert col in lines[header]
    rows = {line.split()[0]: line for line in lines[header + 2:header + 4]}
    assert set(rows) == {"adopt", "lion"}
    assert rows["adopt"].split()[1] == "here"
    float(rows["adopt"].split()[2])  # the eager ratio is a number
    assert out.exists()
    import json

    data = json.loads(out.read_text())
    bounds = {r["name"]: r["bound"] for r in data["rows"]}
    assert bounds == {"adopt": 1.0, "lion": 20 / 28}  # the traffic floor column (MIN_BYTES / AdamW's 28 B)


def test_traffic_floor_table_names_registered_optimizers():
    """MIN_BYTES (the `bound` column) is keyed by registered names; one-pass optimizers' floors are
    12 B (p read+written, g read) + each state tensor read and written."""
    from pretrain.optim import OPTIMIZERS

    mod = load_bench("optim_step")
    assert set(mod.MIN_BYTES) <= set(OPTIMIZERS)
    for name, n_state in {"adamw": 2, "adopt": 2, "lion": 1, "rdbd": 5}.items():
        assert mod.MIN_BYTES[name] == 12 + 8 * n_state
