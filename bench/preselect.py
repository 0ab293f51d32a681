#!/usr/bin/env python
"""Schedule pre-selection evaluated like Opt-Laws (Xie et al., arXiv 2409.04777; this project's reading of it):
fit the two predictors of `pretrain.preselect` on small runs, rank held-out configurations never used in a fit.

Setup (fixed before any run): tests/helpers.py's SMALL GPT (d_model 64, 2 layers, vocab 512, seq 64, 8
sequences a step) on 1 MB of the embedded stdlib corpus, AdamW with the recipe's clipping (norm 1.0),
--steps 200 steps, validation every 10 steps (4 batches, split seed 1234 for every run), seeds 0, 1, 2 for
every configuration. A configuration is (family, peak lr, warmup steps).

* FIT: the loss predictors' runs: constant, cosine, linear, wsd_1sqrt x peak {1e-3, 3e-3, 1e-2} x warmup {5, 25}.
* DIV_FIT: runs only the divergence rule sees: constant, cosine x peak {0.3, 1, 3} x warmup {5, 25}.
* HELD_OUT (never in any fit): all seven families (the four above, wsd_linear, power, mpl) x peak
  {2e-3, 5e-3, 8e-3} x warmup 12 (21 configurations), and for the divergence F1 additionally wsd_1sqrt,
  linear, power x peak {0.2, 0.6, 2} x warmup 12 (9 configurations). The mpl family's schedules are optimized
  under the Multi-Power Law fitted on FIT (`pretrain.preselect.mpl_candidate_lrs`), then trained.

Evaluation (`pretrain.preselect.evaluate_*`):
* top-2 hit rate: ranking tasks over held-out configurations (all 21; each peak lr slice: 3 tasks of 7
  schedules; each family slice: 7 tasks of 3 peak lrs). A hit: the true best (mean of 3 seeds) is within one
  seed spread (the sample std of the best's 3 seeds) of the true mean of one of the predicted top two.
* out-of-family: for each FIT family, refit without any of its runs and rank its 3 held-out configurations
  among all 21; reported: its true and predicted rank of its best configuration, and the task's top-2 hit.
* divergence F1 over the 30 held-out configurations (label: 2 of 3 seeds diverged; a run diverged if its loss
  became non-finite, it stopped early, or its loss rose above its initial value), rule learned on FIT + DIV_FIT.

    python bench/preselect.py                     # ~200 runs of ~10 s each, then the fits (about an hour
                                                  # on a shared 2-core CPU with --workers 2)
    python bench/preselect.py --quick --out /tmp/ps   # smoke test: 30 steps, 1 seed, a few configurations

Runs live in <out>/runs/<config>_s<seed>; a finished run (marker bench.json with the same overrides) is
reused, so an interrupted benchmark resumes. Prints markdown tables and writes <out>/results.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
for _k, _v in (("WANDB_MODE", "offline"), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
               ("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
    os.environ.setdefault(_k, _v)

SPLIT_SEED = 1234
CACHE = os.environ.get("PRETRAIN_TEST_CACHE", os.path.join(ROOT, ".cache", "test-data"))
MODEL = ["data.max_bytes=1000000", f"data.cache_dir={CACHE}", "data.vocab_size=512",
         "model.d_model=64", "model.n_layer=2", "model.n_head=2",
         "train.seq_len=64", "train.global_batch_size=8", "train.micro_batch_size=4"]
# family -> schedule overrides (mpl: the schedule file is added per configuration)
FAMILIES = {
    "constant": ["schedule=constant"],
    "cosine": ["schedule=cosine", "schedule.min_lr_ratio=0.1"],
    "linear": ["schedule=linear", "schedule.min_lr_ratio=0.0"],
    "wsd_1sqrt": ["schedule=wsd", "schedule.decay_fraction=0.2", "schedule.decay_shape=1-sqrt"],
    "wsd_linear": ["schedule=wsd", "schedule.decay_fraction=0.2", "schedule.decay_shape=linear"],
    "power": ["schedule=power"],
    "mpl": ["schedule=mpl"],
}
FIT_FAMILIES = ("constant", "cosine", "linear", "wsd_1sqrt")


def grids(quick: bool) -> dict:
    """name of the set -> list of (family, peak, warmup)."""
    if quick:
        return {"fit": [(f, p, 2) for f in ("constant", "cosine") for p in (1e-3, 1e-2)],
                "div_fit": [("constant", 3.0, 2)],
                "held_out": [(f, 3e-3, 3) for f in ("constant", "cosine", "wsd_linear", "mpl")],
                "div_held_out": [("wsd_linear", 3.0, 3)]}
    return {
        "fit": [(f, p, 5) for f in FIT_FAMILIES for p in (1e-3, 3e-3, 1e-2)] + [(f, 3e-3, 20) for f in FIT_FAMILIES],
        "div_fit": [(f, p, 5) for f in ("constant", "cosine") for p in (0.3, 1.0, 3.0)] + [("constant", 1.0, 20)],
        "held_out": [(f, p, 10) for f in FAMILIES for p in (2e-3, 6e-3)],
        "div_held_out": [(f, p, 10) for f in ("wsd_1sqrt", "linear", "power") for p in (0.5, 2.0)],
    }


def config_name(family: str, peak: float, warmup: int) -> str:
    return f"{family}_lr{peak:g}_w{warmup}"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke mode: 30 steps, seed 0, 10 configurations")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; 0 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="train.steps (default 200; 30 with --quick)")
    ap.add_argument("--eval-every", type=int, default=None, help="default 10 (5 with --quick)")
    ap.add_argument("--out", default=None, help="work dir (default runs/bench/preselect, git-ignored)")
    ap.add_argument("--workers", type=int, default=1, help="training processes in parallel (each 1 thread)")
    ap.add_argument("--bootstrap", type=int, default=None, help="bootstrap refits (default 100; 10 with --quick)")
    ap.add_argument("--mpl-bootstrap", type=int, default=None, help="MPL bootstrap refits (default 8; 2 quick)")
    ap.add_argument("--train-only", action="store_true", help="(worker) train the listed shard and exit")
    ap.add_argument("--shard", default="0/1", help="(worker) i/n: train every n-th run starting at i")
    ap.add_argument("--stage", default="1", help="(worker) 1: the runs without mpl; 2: the mpl runs")
    ap.add_argument("--json", default=None, help="results file (default <out>/results.json)")
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",") if s.strip()]
    args.steps = args.steps or (30 if args.quick else 100)
    args.eval_every = args.eval_every or (5 if args.quick else 10)
    args.bootstrap = args.bootstrap or (10 if args.quick else 100)
    args.mpl_bootstrap = args.mpl_bootstrap or (2 if args.quick else 8)
    args.out = os.path.abspath(args.out or os.path.join(ROOT, "runs", "bench", "preselect" + ("_quick" if args.quick else "")))
    args.json = args.json or os.path.join(args.out, "results.json")
    return args


# ------------------------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------------------------

def run_dir(args, cfg, seed) -> str:
    return os.path.join(args.out, "runs", f"{config_name(*cfg)}_s{seed}")


def mpl_schedule_path(args, peak, warmup) -> str:
    return os.path.join(args.out, "mpl_schedules", f"mpl_lr{peak:g}_w{warmup}.json")


def overrides(args, cfg, seed) -> list[str]:
    family, peak, warmup = cfg
    sched = list(FAMILIES[family])
    if family == "mpl":
        sched.append(f"schedule.path={mpl_schedule_path(args, peak, warmup)}")
    return MODEL + sched + [
        f"seed={seed}", f"data.split_seed={SPLIT_SEED}", f"optim.lr={peak}", f"schedule.warmup_steps={warmup}",
        f"train.steps={args.steps}", f"train.eval_every={args.eval_every}", "train.eval_batches=4",
        "train.progress=false", "log.log_every=1", "train.compile_optimizer=never",
        f"run_dir={run_dir(args, cfg, seed)}",
    ]


def all_runs(args, stage: str) -> list[tuple]:
    out = []
    for cfgs in grids(args.quick).values():
        for cfg in cfgs:
            if (cfg[0] == "mpl") == (stage == "2"):
                out += [(cfg, s) for s in args.seeds]
    return out


def train_one(args, cfg, seed) -> dict:
    """Train (or reuse) one run in this process; a non-finite loss that stops the run is recorded, not raised."""
    d = run_dir(args, cfg, seed)
    ov = overrides(args, cfg, seed)
    marker = os.path.join(d, "bench.json")
    if os.path.isfile(marker):
        with open(marker) as f:
            info = json.load(f)
        if info.get("overrides") == ov:
            return info
    if os.path.isdir(d):
        shutil.rmtree(d)
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from pretrain.config import load_config
    from pretrain.loop import train

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    t0 = time.time()
    error = None
    try:
        train(load_config(ov), log=lambda *_: None)
    except FloatingPointError as e:  # the loop stops a run whose loss is not finite
        error = str(e)
    info = {"overrides": ov, "seconds": time.time() - t0, "error": error}
    with open(marker, "w") as f:
        json.dump(info, f)
    print(f"  {os.path.basename(d)}: {info['seconds']:.0f} s" + (f" ({error})" if error else ""), flush=True)
    return info


def train_stage(args, stage: str) -> None:
    """Train every run of a stage, in --workers processes (each takes every n-th run)."""
    todo = all_runs(args, stage)
    if args.workers <= 1:
        for cfg, seed in todo:
            train_one(args, cfg, seed)
        return
    procs = []
    for i in range(args.workers):
        cmd = [sys.executable, os.path.abspath(__file__), "--train-only", "--shard", f"{i}/{args.workers}",
               "--stage", stage, "--out", args.out, "--steps", str(args.steps), "--eval-every", str(args.eval_every),
               "--seeds", ",".join(map(str, args.seeds))] + (["--quick"] if args.quick else [])
        procs.append(subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a training worker failed: exit codes {codes}")


def worker(args) -> int:
    import torch
    torch.set_num_threads(1)
    i, n = (int(x) for x in args.shard.split("/"))
    for k, (cfg, seed) in enumerate(all_runs(args, args.stage)):
        if k % n == i:
            train_one(args, cfg, seed)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.train_only:
        return worker(args)
    raise SystemExit("not yet")


if __name__ == "__main__":
    sys.exit(main())
