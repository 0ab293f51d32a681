"""The README's benchmark tables are what the benchmarks printed: each benchmark's results (bench/results/*.json,
copied from the run's results.json) rendered by the benchmark's own table code must appear line for line in
the README."""
import json
from pathlib import Path

import pytest

from helpers import load_bench

ROOT = Path(__file__).resolve().parents[1]
# (benchmark script, its results file in bench/results)
RESULTS = [("throughput", "throughput"), ("throughput", "throughput_accum2"),
           ("sample_efficiency", "sample_efficiency"), ("steps_to_target", "steps_to_target"),
           ("wsd_branches", "wsd_branches"), ("adopt_counterexample", "adopt_counterexample")]


@pytest.mark.parametrize(("name", "results"), RESULTS)
def test_readme_table_is_what_the_benchmark_printed(name, results):
    res = json.loads((ROOT / "bench" / "results" / f"{results}.json").read_text())
    table = [line for line in load_bench(name).render(res).splitlines() if line.startswith("|") and "---" not in line]
    readme = set((ROOT / "README.md").read_text().splitlines())
    missing = [line for line in table if line not in readme]
    assert len(table) >= 2 and not missing, f"bench/results/{results}.json rows not in the README:\n" + "\n".join(missing)
