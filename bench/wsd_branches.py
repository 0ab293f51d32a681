#!/usr/bin/env python
"""WSD cooldowns branched from one stable run (Hägele et al. 2024): one constant-lr run with checkpoints gives a
finished model at every length for the price of its cooldowns, each as good as a cosine run of that length.

Setup: the model and data of bench/sample_efficiency.py (2-layer 64-wide GPT, 1 MB of the stdlib corpus, 8 x 64
tokens per step), AdamW at lr 3e-3 (sample_efficiency's best lr for WSD), 10% warmup of the longest run, clip 1.
Per seed:

  stable:   schedule=constant, --lengths' largest L_max steps, a checkpoint every 20% of L_max / ... (every
            branch point: 80% of each length);
  branch:   for each length L, `train.init_from=<stable>/checkpoints/step_{0.8 L}`, schedule=wsd with the last
            20% decayed (1-sqrt to 0, the shape Hägele et al. recommend): trains only the 0.2 L cooldown steps;
  full:     the same WSD schedule of length L trained from scratch (what the branch must equal: same model,
            optimizer state, data position and lr at the branch point, so the branch's steps are the full run's);
  cosine:   cosine to 10% of the peak over L steps from scratch, same peak lr and warmup.

Printed per length: final validation loss of branch, full WSD and cosine, mean +- std over seeds; whether the
branch's steps (loss, gradient norm, lr) and final loss equal the full run's bit for bit; WSD - cosine; and the steps trained in all for the set
of lengths: branches (L_max + sum of cooldowns) vs cosine (sum of lengths).

    python bench/wsd_branches.py                    # lengths 150, 225, 300; 3 seeds (~12 min on 2 CPU cores)
    python bench/wsd_branches.py --quick --out /tmp/wb   # lengths 20, 30; 1 seed (a test)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from functools import reduce
from math import gcd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sample_efficiency import ROOT, SMALL, finished, provenance, train_run  # noqa: E402

LR = 3e-3


def branch_step(length: int) -> int:
    """The stable run's step a cooldown of 20% of `length` starts from."""
    return length - round(0.2 * length)


def same_steps(branch: str, full: str, steps: int) -> bool:
    """Every step the branch trained (loss, grad norm, lr) and its final validation loss equal the full run's."""
    from pretrain.tracking import read_metrics

    def rows(d):
        return {r["step"]: (r["loss"], r.get("grad_norm"), r["lr"]) for r in read_metrics(d)
                if r.get("kind", "train") == "train" and "loss" in r}
    b, f = rows(branch), rows(full)
    return bool(b) and all(f.get(s) == v for s, v in b.items()) and finished(branch, steps) == finished(full, steps)


def render(res: dict) -> str:
    """The table this benchmark prints, from its results.json (the README's table is this text)."""
    def ms(xs):
        return f"{statistics.mean(xs):.3f}" + (f" +- {statistics.stdev(xs):.3f}" if len(xs) > 1 else "")

    lines = [f"final validation loss, AdamW lr {res['lr']}, seeds {res['seeds']}; branch = cooldown of 20% from the "
             f"stable run's checkpoint", "",
             "| steps | WSD branched | WSD full run | branch == full (bitwise) | cosine | WSD - cosine |",
             "|---|---|---|---|---|---|"]
    for n in res["lengths"]:
        r = res["results"][str(n)]
        diff = statistics.mean(b - c for b, c in zip(r["branch"], r["cosine"]))
        lines.append(f"| {n} | {ms(r['branch'])} | {ms(r['full'])} | {sum(r['bitwise'])}/{len(res['seeds'])} | "
                     f"{ms(r['cosine'])} | {diff:+.3f} |")
    b, c = res["steps_branched"], res["steps_cosine"]
    lines += ["", f"steps trained for all {len(res['lengths'])} lengths, per seed: stable run + cooldowns {b}, "
                  f"separate cosine runs {c} ({b / c:.2f}x)"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_wsd_branches"))
    ap.add_argument("--lengths", default=None, help="run lengths in steps (default 150,225,300; 20,30 --quick)")
    ap.add_argument("--seeds", default=None, help="default 0,1,2 (0 with --quick)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    lengths = sorted(int(x) for x in (a.lengths or ("20,30" if a.quick else "150,225,300")).split(","))
    seeds = [int(x) for x in (a.seeds or ("0" if a.quick else "0,1,2")).split(",")]
    longest = lengths[-1]
    warmup = max(1, round(0.1 * longest))
    points = sorted({branch_step(n) for n in lengths})
    if points[0] <= warmup:
        raise SystemExit(f"--lengths: every branch point (80% of a length) must come after the warmup ({warmup} "
                         f"steps); got {points}")
    # every step logged: the branch's rows are compared with the full run's step by step
    small = [o for o in SMALL if not o.startswith(("train.keep_checkpoints", "log.log_every"))] + ["log.log_every=1"]
    base = small + ["optim=adamw", f"optim.lr={LR}", f"schedule.warmup_steps={warmup}",
                    "train.keep_checkpoints=100", "train.eval_every=5" if a.quick else "train.eval_every=15"]
    wsd = ["schedule=wsd", "schedule.decay_shape=1-sqrt", "schedule.min_lr_ratio=0.0"]
    meta = provenance()  # the commit and machine the runs start at
    res: dict = {n: {"branch": [], "full": [], "cosine": [], "bitwise": []} for n in lengths}
    runs = os.path.join(a.out, "runs")
    every = reduce(gcd, points)  # a checkpoint at every branch point: save_every = their greatest common divisor
    for seed in seeds:
        stable = os.path.join(runs, f"stable_s{seed}")
        train_run(base + [f"seed={seed}", "schedule=constant", f"train.save_every={every}"], stable, longest)
        for n in lengths:
            decay = n - branch_step(n)
            ck = os.path.join(stable, "checkpoints", f"step_{branch_step(n)}")
            branch = os.path.join(runs, f"branch_L{n}_s{seed}")
            full = os.path.join(runs, f"wsd_L{n}_s{seed}")
            cos = os.path.join(runs, f"cosine_L{n}_s{seed}")
            tail = [f"seed={seed}", f"schedule.decay_steps={decay}", "train.save_every=100000"]
            res[n]["branch"].append(train_run(base + wsd + tail + [f"train.init_from={ck}"], branch, n))
            res[n]["full"].append(train_run(base + wsd + tail, full, n))
            res[n]["cosine"].append(train_run(base + [f"seed={seed}", "schedule=cosine",
                                                      "schedule.min_lr_ratio=0.1", "train.save_every=100000"],
                                              cos, n))
            res[n]["bitwise"].append(same_steps(branch, full, n))

    out = {**meta, "lr": LR, "seeds": seeds, "lengths": lengths, "warmup": warmup,
           "results": {str(n): v for n, v in res.items()},
           "steps_branched": longest + sum(n - branch_step(n) for n in lengths), "steps_cosine": sum(lengths)}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(render(out))
    return out


if __name__ == "__main__":
    main()
