#!/usr/bin/env python
"""Schedules found five ways, trained on the tiny recipe at the same token budget, 3 seeds.

Every run: the tiny recipe (`python train.py`'s 4-layer, 128-wide GPT on the stdlib corpus, 16 x 128 tokens a
step) for --steps steps with torch's momentum SGD (optim=momentum, momentum 0.9, clipping at norm 1 as the
recipe), warmup --warmup, evaluated on the recipe's 8 validation batches. Rows, and the compute each cost to find:

1. cosine: its peak lr tuned on seed 0 over --grid (cost: len(grid) target runs), then every seed;
2. wsd (1-sqrt decay over the last 20%) at the tuned peak (no search of its own);
3. mpl: the Multi-Power Law fitted to seed 0's constant + cosine runs (training loss, 25-step moving
   average; cost: one constant run beyond the sweep), the schedule optimized under it (`schedule=mpl`);
4. sgd_hd / adam_hd: online hypergradient descent (Baydin et al. 2018) from the tuned peak (sgd_hd, momentum
   0.9, constant schedule after warmup) / the recipe's AdamW lr 3e-3 (adam_hd): no search;
5. learned: `python -m pretrain.tools.hyperlearn` on its proxy (a 32-wide GPT, `tools.hyperlearn.PROXY`) for the
   same --steps, per parameter group, learning the lr per group per block from the tuned cosine; trained with
   `schedule=learned` (cost: the proxy's inner steps, forward and reverse, and its seconds).

Prints a markdown table (final val loss per seed, mean +- sample std, cost) and writes <out>/results.json.
Finished runs are reused, so an interrupted benchmark resumes.

    nohup python bench/hyper_schedules.py --out runs/hyper_bench > hyper_bench.log &   # ~1 h on a shared 2-core CPU
    python bench/hyper_schedules.py --quick --out /tmp/hq                             # smoke: tiny model, 1 seed
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
QUICK_CACHE = os.environ.get("PRETRAIN_TEST_CACHE", os.path.join(ROOT, ".cache", "test-data"))
QUICK = ["data.max_bytes=1000000", f"data.cache_dir={QUICK_CACHE}", "data.vocab_size=512", "model.d_model=64",
         "model.n_layer=2", "model.n_head=2", "train.seq_len=64", "train.global_batch_size=8",
         "train.micro_batch_size=4"]


SGD = ["optim=momentum", "optim.momentum=0.9"]  # torch heavy ball, the form the proxy's schedule is exported in


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--grid", default="0.03,0.1,0.3", help="cosine peak lrs tried on seed 0")
    ap.add_argument("--meta-steps", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=3, help="runs in parallel (1 thread each)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "hyper_bench"))
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.steps, a.warmup, a.grid, a.meta_steps = "0", 20, 2, "0.1,0.3", 1
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.grid = [float(x) for x in a.grid.split(",")]
    return a


def train_run(a, name: str, overrides: list[str], seed: int) -> dict:
    """Train one run with train.py (or reuse a finished one): {run_dir, val, seconds}."""
    run_dir = os.path.join(a.out, "runs", f"{name}_s{seed}")
    warm = [] if "schedule=learned" in overrides else [f"schedule.warmup_steps={a.warmup}"]  # the file has its own
    ov = (QUICK if a.quick else []) + [f"train.steps={a.steps}"] + warm + [f"seed={seed}", f"run_dir={run_dir}",
                                       f"train.eval_every={a.steps // 3}", "log.log_every=1",
                                       "train.progress=false"] + overrides
    marker = os.path.join(run_dir, "bench.json")
    if os.path.isfile(marker):
        info = json.load(open(marker))
        if info["overrides"] == ov:
            return info
    if os.path.isdir(run_dir):
        import shutil
        shutil.rmtree(run_dir)
    t0 = time.time()
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + ov, cwd=ROOT, env=ENV,
                       capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{name} seed {seed} failed:\n{p.stderr[-3000:]}")
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl")) if line.strip()]
    val = next(r["val_loss"] for r in reversed(rows) if r.get("kind") == "eval" and r["step"] == a.steps)
    info = {"run_dir": run_dir, "val": val, "seconds": round(time.time() - t0, 1), "overrides": ov}
    json.dump(info, open(marker, "w"))
    print(f"  {name} seed {seed}: val {val:.4f} ({info['seconds']:.0f} s)", flush=True)
    return info


def many(a, jobs: list[tuple[str, list[str], int]]) -> list[dict]:
    with ThreadPoolExecutor(a.jobs) as ex:
        return list(ex.map(lambda j: train_run(a, *j), jobs))


def mpl_schedule(a, const_dir: str, cos_dir: str, peak: float) -> str:
    from pretrain.schedules.mpl import fit, load_runs_from_metrics, optimize_schedule, save_schedule

    params, _ = fit(load_runs_from_metrics([const_dir, cos_dir], key="loss", smooth=min(25, a.steps // 4)),
                    skip_fraction=0.1)
    lrs = optimize_schedule(params, total_steps=a.steps, peak_lr=peak, warmup_steps=a.warmup)
    path = os.path.join(a.out, "mpl_schedule.json")
    save_schedule(path, lrs, {"peak_lr": peak, "warmup_steps": a.warmup})
    return path


def learned_schedule(a, peak: float) -> tuple[str, dict]:
    out = os.path.join(a.out, "hyperlearn")
    path = os.path.join(out, "learned_schedule.json")
    if os.path.isfile(path):
        doc = json.load(open(path))
        if doc["total_steps"] == a.steps and doc["learned"]["start"]["lr"] == peak:
            return path, doc["learned"]
    cmd = [sys.executable, "-m", "pretrain.tools.hyperlearn", "--steps", str(a.steps), "--lr", str(peak),
           "--warmup", str(a.warmup), "--learn", "lr", "--block-len", str(max(1, a.steps // 10)),
           "--meta-steps", str(a.meta_steps), "--out", out]
    if a.quick:
        cmd += ["--", "data.max_bytes=1000000", f"data.cache_dir={QUICK_CACHE}", "data.vocab_size=512",
                "model.d_model=32", "model.n_layer=2", "model.n_head=2", "train.seq_len=32",
                "train.global_batch_size=4", "train.micro_batch_size=4"]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"hyperlearn failed:\n{p.stderr[-3000:]}")
    print(p.stdout.strip().splitlines()[-1], flush=True)
    return path, json.load(open(path))["learned"]


def main(argv=None):
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    print(f"tuning cosine on seed {a.seeds[0]} over {a.grid}", flush=True)
    # the constant run MPL fits on, at every grid lr alongside the sweep (only the tuned peak's is used)
    first = many(a, [(f"cosine_lr{lr:g}", SGD + [f"optim.lr={lr}", "schedule=cosine"], a.seeds[0]) for lr in a.grid] +
                 [(f"constant_lr{lr:g}", SGD + [f"optim.lr={lr}", "schedule=constant"], a.seeds[0]) for lr in a.grid])
    sweep, consts = first[:len(a.grid)], first[len(a.grid):]
    peak = a.grid[min(range(len(a.grid)), key=lambda i: sweep[i]["val"])]
    print(f"tuned peak lr {peak:g}", flush=True)
    pool = ThreadPoolExecutor(1)
    learning = pool.submit(learned_schedule, a, peak)  # on the proxy, beside the target runs
    const = consts[a.grid.index(peak)]
    mpl_path = mpl_schedule(a, const["run_dir"], sweep[a.grid.index(peak)]["run_dir"], peak)
    learned_path = os.path.join(a.out, "hyperlearn", "learned_schedule.json")
    rows = {
        "cosine": SGD + [f"optim.lr={peak}", "schedule=cosine"],
        "wsd": SGD + [f"optim.lr={peak}", "schedule=wsd", "schedule.decay_fraction=0.2", "schedule.decay_shape=1-sqrt"],
        "mpl": SGD + [f"optim.lr={peak}", "schedule=mpl", f"schedule.path={mpl_path}"],
        "sgd_hd": ["optim=sgd_hd", f"optim.lr={peak}", "optim.momentum=0.9", "schedule=constant"],
        "adam_hd": ["optim=adam_hd", "optim.lr=3e-3", "schedule=constant"],
        "learned": SGD + [f"optim.lr={peak}", "schedule=learned", f"schedule.path={learned_path}"],
    }
    jobs = [(name, ov, s) for name, ov in rows.items() for s in a.seeds]
    jobs = [(n if n != "cosine" else f"cosine_lr{peak:g}", ov, s) for n, ov, s in jobs]
    first = many(a, [j for j in jobs if j[0] != "learned"])  # cosine at the tuned peak reuses the sweep's seed 0
    learned = learning.result()[1]
    results = first + many(a, [j for j in jobs if j[0] == "learned"])
    jobs = [j for j in jobs if j[0] != "learned"] + [j for j in jobs if j[0] == "learned"]
    vals: dict[str, list[float]] = {}
    for (n, _, _), r in zip(jobs, results):
        vals.setdefault(n.split("_lr")[0] if n.startswith("cosine") else n, []).append(r["val"])
    T = a.steps
    cost = {"cosine": f"{len(a.grid)} x {T} target steps (lr sweep)",
            "wsd": "0 (cosine's peak)", "mpl": f"+1 x {T} target steps (constant run) + fit",
            "sgd_hd": "0 (online; cosine's peak as start)", "adam_hd": "0 (online; recipe's lr)",
            "learned": f"{learned['inner_steps']} proxy steps ({a.meta_steps} meta steps x {T} fwd + {T} rev, "
                       f"{learned['seconds']:.0f} s; proxy val {learned['val_loss_start']:.3f} -> "
                       f"{learned['val_loss_learned']:.3f})"}
    print("\n| schedule | " + " | ".join(f"seed {s}" for s in a.seeds) + " | mean +- std | cost to find |")
    print("|---|" + "---|" * len(a.seeds) + "---|---|")
    for n, v in vals.items():
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        print(f"| {n} | " + " | ".join(f"{x:.4f}" for x in v) + f" | {statistics.mean(v):.4f} +- {sd:.4f} | "
              f"{cost[n]} |")
    res = {"steps": T, "peak_lr": peak, "sweep": {str(lr): r["val"] for lr, r in zip(a.grid, sweep)},
           "vals": vals, "cost": cost, "learned": learned, "seconds": round(time.time() - t0)}
    json.dump(res, open(os.path.join(a.out, "results.json"), "w"), indent=1)
    print(f"\n{time.time() - t0:.0f} s; results in {os.path.join(a.out, 'results.json')}")


if __name__ == "__main__":
    main()
