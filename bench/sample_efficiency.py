#!/usr/bin/env python
"""Sample efficiency at a fixed token budget on the embedded corpus: final validation loss per optimizer /
schedule, each at its best lr from a small sweep, over 3 seeds.

Setup (sized for a shared 2-core CPU): tests/helpers.py's small GPT (2 layers, 64 wide, 0.2M parameters,
vocabulary 512 on 1 MB of the stdlib corpus), sequences of 64 tokens, 8 per step, --steps 300 (154k tokens),
validation loss on the same 16 held-out batches for every run (data.split_seed fixed). Clipping at global
norm 1 (the default) for all. Candidates:

  adamw_cosine, adamw_wsd (20% 1-sqrt decay), adamw_power (Shen et al.: a=4, b=-0.51, last 10% decayed),
  adopt, lion, sophia, muon (cosine; muon's AdamW part at lr 3e-3, the tiny recipe's AdamW lr),
  sf_adamw (schedule=constant, its own warmup), and adamw_mpl: a Multi-Power-Law-optimized schedule (at
  each lr of its sweep, the law is fitted on seed 0's constant + cosine AdamW runs at that lr and a schedule
  optimized under it with pretrain.schedules.mpl; AdamW-cosine's grid).

Protocol: every candidate's lr grid (CANDIDATES below, 3 values around its usual range) is trained with seed 0;
where the best lr is at an edge of the grid, the grid is extended past it by one step of its own ratio
(rounded to one digit), at most twice, so the best is bracketed where possible; the lr with the lowest final
validation loss is then trained with seeds 1 and 2. Warmup: 10% of the steps.
The table reports the mean +- sample std over seeds 0, 1, 2 of the final validation loss (seed 0 also chose
the lr: a small optimistic bias, the same for every candidate).

Runs live in <out>/runs/<candidate>_lr<lr>_s<seed>; a finished run (metrics reach the last step) is reused,
so an interrupted benchmark resumes where it stopped (reuse only runs of the same code: results.json records
the commit the benchmark ran at; a new --out for a new version); the run directories are what
`python -m pretrain.tools.compare <out>/runs/*` reads.

    python bench/sample_efficiency.py                     # 9 candidates, ~55 runs of 10-50 s (~13 min here)
    python bench/sample_efficiency.py --quick --out /tmp/se   # 3 candidates, 1 lr, 1 seed, 30 steps (a test)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
for _k, _v in (("WANDB_MODE", "offline"), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
               ("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
    os.environ.setdefault(_k, _v)

CACHE = os.environ.get("PRETRAIN_TEST_CACHE", os.path.join(ROOT, ".cache", "test-data"))
SMALL = ["data.max_bytes=1000000", f"data.cache_dir={CACHE}", "data.vocab_size=512",
         "model.d_model=64", "model.n_layer=2", "model.n_head=2", "train.seq_len=64",
         "train.global_batch_size=8", "train.micro_batch_size=4", "train.eval_batches=16",
         "train.progress=false", "log.log_every=5", "train.keep_checkpoints=1"]

# candidate -> (overrides, lr grid); "{w}" is replaced by the warmup steps
CANDIDATES = {
    "adamw_cosine": (["optim=adamw", "schedule=cosine", "schedule.warmup_steps={w}"], [1e-3, 3e-3, 1e-2]),
    "adamw_wsd": (["optim=adamw", "schedule=wsd", "schedule.warmup_steps={w}", "schedule.decay_fraction=0.2",
                   "schedule.decay_shape=1-sqrt"], [1e-3, 3e-3, 1e-2]),
    "adamw_power": (["optim=adamw", "schedule=power", "schedule.warmup_steps={w}"], [1e-3, 3e-3, 1e-2]),
    "adopt": (["optim=adopt", "schedule=cosine", "schedule.warmup_steps={w}"], [1e-3, 3e-3, 1e-2]),
    "lion": (["optim=lion", "schedule=cosine", "schedule.warmup_steps={w}"], [1e-4, 3e-4, 1e-3]),
    "sophia": (["optim=sophia", "schedule=cosine", "schedule.warmup_steps={w}"], [3e-4, 1e-3, 3e-3]),
    "sf_adamw": (["optim=sf_adamw", "schedule=constant", "schedule.warmup_steps=0", "optim.warmup_steps={w}"], [2.5e-3, 5e-3, 1e-2]),
    "muon": (["optim=muon", "schedule=cosine", "schedule.warmup_steps={w}", "optim.adamw_lr=3e-3"],
             [5e-3, 2e-2, 5e-2]),
}
MPL = "adamw_mpl"
ORDER = ["adamw_cosine", "adamw_wsd", "adamw_power", MPL, "adopt", "lion", "sophia", "sf_adamw", "muon"]


def finished(run_dir: str, steps: int) -> float | None:
    """The final validation loss of a run that reached `steps` (None if it did not)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    from pretrain.tracking import read_metrics
    evals = [r for r in read_metrics(path) if r.get("kind") == "eval" and r.get("val_loss") is not None]
    return evals[-1]["val_loss"] if evals and evals[-1]["step"] == steps else None


def train_run(overrides: list[str], run_dir: str, steps: int, log=print) -> float:
    """Train one run in this process (or reuse a finished one); its final validation loss."""
    done = finished(run_dir, steps)
    if done is not None:
        log(f"  reuse {run_dir}: val_loss {done:.4f}")
        return done
    if os.path.exists(run_dir):  # an interrupted run: start it again
        import shutil
        shutil.rmtree(run_dir)
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from pretrain.config import load_config
    from pretrain.loop import train

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    t = time.time()
    train(load_config(list(overrides) + [f"run_dir={run_dir}", f"train.steps={steps}"]), log=lambda *_: None)
    loss = finished(run_dir, steps)
    log(f"  trained {run_dir}: val_loss {loss:.4f} ({time.time() - t:.0f} s)")
    return loss


def fmt_lr(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


def one_digit(lr: float) -> float:
    """lr rounded to one significant digit (how the grids are written, and the run directories named)."""
    return float(f"{lr:.0e}")


LR_GRID_MAX = 5  # a grid grows by at most 2 points past a winning edge


def mpl_schedule(out: str, const_dir: str, cos_dir: str, steps: int, lr: float, warmup: int, quick: bool) -> str:
    """Fit the Multi-Power Law to the constant + cosine runs, optimize a schedule, write it; its path."""
    from pretrain.schedules.mpl import fit, load_runs_from_metrics, optimize_schedule, save_schedule

    path = os.path.join(out, f"mpl_schedule_T{steps}_lr{fmt_lr(lr)}.json")
    if os.path.exists(path):
        return path
    runs = load_runs_from_metrics([const_dir, cos_dir], key="val_loss", warmup_steps=warmup)
    params, report = fit(runs, steps=100 if quick else 400, restarts=1 if quick else 3)
    lrs = optimize_schedule(params, steps, lr, warmup, iters=200 if quick else 5000)
    save_schedule(path, lrs, {"peak_lr": lr, "warmup_steps": warmup, "params": params})
    print(f"  MPL fitted on {const_dir}, {cos_dir}; schedule in {path}")
    return path


def provenance() -> dict:
    """The commit the benchmark ran at and the machine, for its results.json."""
    import platform
    import subprocess

    import torch
    commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                            text=True, check=False).stdout.strip() or "unknown"
    return {"commit": commit, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                                         f"torch {torch.__version__}, {torch.get_num_threads()} threads"}


def render(res: dict) -> str:
    """The table this benchmark prints, from its results.json (the README's table is this text)."""
    steps, seeds = res["settings"]["steps"], [str(sd) for sd in res["settings"]["seeds"]]
    lines = [f"### Final validation loss at {steps} steps ({steps * 8 * 64 / 1e3:.0f}k tokens), best lr of the "
             f"sweep, seeds {','.join(seeds)}", "",
             "| optimizer / schedule | lr sweep (seed 0: val loss) | best lr | " +
             " | ".join(f"seed {sd}" for sd in seeds) + " | mean +- std |",
             "|---|---|---|" + "---|" * len(seeds) + "---|"]
    for name, r in sorted(res["results"].items(), key=lambda kv: kv[1]["mean"]):
        sweep = ", ".join(f"{k}: {v:.3f}" for k, v in r["sweep"].items())
        lines.append(f"| {name} | {sweep} | {fmt_lr(r['best_lr'])} | " +
                     " | ".join(f"{r['per_seed'][sd]:.4f}" for sd in seeds) + f" | {r['mean']:.4f} +- {r['std']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_sample_efficiency"))
    ap.add_argument("--steps", type=int, default=None, help="train.steps (default 300; 30 with --quick)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--candidates", default=",".join(ORDER))
    ap.add_argument("--eval-every", type=int, default=None, help="default steps/15 (the MPL fit uses these)")
    ap.add_argument("--quick", action="store_true", help="3 candidates, their middle lr, seed 0, 30 steps")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.candidates.split(",")
    unknown = sorted(set(names) - set(ORDER))
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; allowed: {', '.join(ORDER)}")
    steps = args.steps or (30 if args.quick else 300)
    if args.quick:
        seeds, names = [0], [n for n in names if n in ("adamw_cosine", "lion", MPL)] or names[:1]
    warmup = max(steps // 10, 1)
    every = args.eval_every or max(steps // 15, 1)
    base = SMALL + [f"train.eval_every={every}"]
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    meta = provenance()  # the commit and machine the runs start at
    t0 = time.time()

    def run(name, overrides, lr, seed):
        ov = [o.replace("{w}", str(warmup)) for o in overrides]
        run_dir = os.path.join(args.out, "runs", f"{name}_lr{fmt_lr(lr)}_s{seed}")
        return train_run(base + ov + [f"optim.lr={lr}", f"seed={seed}"], run_dir, steps)

    def sweep(name, grid, train):
        """Seed 0 over the grid, extended past an edge that wins (up to twice); the best lr's other seeds."""
        grid, losses = sorted(grid), {}
        for _ in range(3):
            for lr in grid:
                if lr not in losses:
                    losses[lr] = train(lr, seeds[0])
            best = min(losses, key=losses.get)
            if args.quick or best not in (grid[0], grid[-1]) or len(grid) >= LR_GRID_MAX:
                break
            lo = best == grid[0]
            grid = sorted(grid + [one_digit(grid[0] ** 2 / grid[1] if lo else grid[-1] ** 2 / grid[-2])])
            print(f"  {name}: best lr {fmt_lr(best)} at the grid's {'low' if lo else 'high'} edge; extending",
                  flush=True)
        per_seed = {seeds[0]: losses[best], **{sd: train(best, sd) for sd in seeds[1:]}}
        return {"sweep": {fmt_lr(k): v for k, v in sorted(losses.items())}, "best_lr": best, "per_seed": per_seed}

    results = {}
    for name in names:
        if name == MPL:
            continue
        overrides, grid = CANDIDATES[name]
        grid = [grid[1]] if args.quick else grid
        print(f"{name}: lr sweep {grid} (seed {seeds[0]})", flush=True)
        results[name] = sweep(name, grid, lambda lr, sd, name=name, ov=overrides: run(name, ov, lr, sd))
    if MPL in names:
        cosine = CANDIDATES["adamw_cosine"][0]
        const = ["optim=adamw", "schedule=constant", "schedule.warmup_steps={w}"]

        def train_mpl(lr, seed):
            # the law is fitted on seed 0's constant and cosine runs at this lr; every seed trains its schedule
            cos_dir, const_dir = (os.path.join(args.out, "runs", f"{n}_lr{fmt_lr(lr)}_s{seeds[0]}")
                                  for n in ("adamw_cosine", "adamw_constant"))
            run("adamw_cosine", cosine, lr, seeds[0])
            run("adamw_constant", const, lr, seeds[0])
            path = mpl_schedule(args.out, const_dir, cos_dir, steps, lr, warmup, args.quick)
            return run(MPL, ["optim=adamw", "schedule=mpl", f"schedule.path={path}", "schedule.warmup_steps={w}"],
                       lr, seed)

        grid = [CANDIDATES["adamw_cosine"][1][1]] if args.quick else CANDIDATES["adamw_cosine"][1]
        print(f"{MPL}: lr sweep {grid} (seed {seeds[0]}; a law fitted and a schedule optimized per lr)", flush=True)
        results[MPL] = sweep(MPL, grid, train_mpl)

    for r in results.values():
        vals = [r["per_seed"][sd] for sd in seeds]
        r["mean"], r["std"] = statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
    res = {**meta, "settings": {"steps": steps, "seeds": seeds, "warmup": warmup, "eval_every": every,
                                        "quick": args.quick, "overrides": base},
           "results": {k: {**v, "per_seed": {str(sd): x for sd, x in v["per_seed"].items()}}
                       for k, v in results.items()},
           "runtime_s": time.time() - t0}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(render(res))
    print(f"\nwrote {os.path.join(args.out, 'results.json')} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
