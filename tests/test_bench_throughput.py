"""bench/throughput.py --quick measures train.py's loop, the raw PyTorch loop and the HF Trainer on one model and
prints their tokens/s and ratios; sample_efficiency.py and steps_to_target.py refuse unknown names up front."""
import json
import subprocess
import sys
from pathlib import Path

from helpers import dump, env

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_throughput_quick(tmp_path):
    out = tmp_path / "tp.json"
    cmd = [sys.executable, str(BENCH / "throughput.py"), "--quick", "--steps", "6", "--warmup", "2", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env())
    assert proc.returncode == 0, dump(proc)
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| eager")]
    assert len(rows) == 1, proc.stdout
    cells = [c.strip() for c in rows[0][1:-1]]
    loop, raw, trainer, loop_raw, loop_trainer, trainer_raw = map(float, cells[1:])
    res = json.loads(out.read_text())
    tps = res["tokens_per_s"]["eager"]
    assert all(len(tps[v]) == 1 and tps[v][0] > 0 for v in ("loop", "raw", "trainer"))
    # the printed ratios are the measured tokens/s divided within the round (independently recomputed)
    assert loop_raw == round(tps["loop"][0] / tps["raw"][0], 3)
    assert loop_trainer == round(tps["loop"][0] / tps["trainer"][0], 3)
    assert trainer_raw == round(tps["trainer"][0] / tps["raw"][0], 3)
    assert (loop, raw, trainer) == tuple(round(tps[v][0]) for v in ("loop", "raw", "trainer"))


def test_accuracy_benches_refuse_unknown_names():
    for script, arg in (("sample_efficiency.py", "--candidates=adamw_cosine,nope"),
                        ("steps_to_target.py", "--optimizers=adamw,nope")):
        proc = subprocess.run([sys.executable, str(BENCH / script), arg, "--out", "/nonexistent/x"],
                              capture_output=True, text=True, timeout=300, env=env())
        assert proc.returncode != 0 and "nope" in proc.stderr, dump(proc)
