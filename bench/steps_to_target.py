#!/usr/bin/env python
"""Steps to a target validation loss under the tuning-budget protocol of Schmidt, Schneider & Hennig 2021
("Descending through a Crowded Valley"): every optimizer once at its defaults ("one-shot") and once after a
small random search over its lr with the same budget for all, on the same model, data and batch.

Setup (sized for a shared 2-core CPU; the model and data of bench/sample_efficiency.py): a 2-layer, 64-wide
GPT on 1 MB of the stdlib corpus, 8 x 64 tokens per step, --steps 300, cosine schedule with 10% warmup for
every optimizer (sf_adamw: schedule=constant and its own warmup_steps = the same 10%), clipping at norm 1,
validation loss on 16 fixed held-out batches every --eval-every steps.

  one-shot:  the registry's defaults (the paper's), `~optim.lr`; muon's AdamW part at its default too;
  tuned:     --budget lr samples, log-uniform in [default / 10, default x 10] (the same random draws, relative
             to each default, for every optimizer: numpy seed 0), each trained with seed 0; the one with the
             lowest final validation loss wins (Schmidt et al. pick by validation performance);
  then the default and the winner are trained with seeds 0, 1, 2.

Target: the mean over seeds of AdamW's final validation loss at its defaults (fixed before any other optimizer
is looked at: "what default AdamW reaches with the whole budget"). Steps to target: the first evaluation step
whose validation loss is <= the target (a resolution of --eval-every steps); "-" where a seed never reaches it.
Reported: mean and spread (min-max) over the seeds that reached it, how many did, and the final loss.

    python bench/steps_to_target.py                       # 6 optimizers x 13 runs (~22 min here, 1 thread)
    python bench/steps_to_target.py --quick --out /tmp/stt  # 2 optimizers, budget 2, 1 seed, 30 steps (a test)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sample_efficiency import ROOT, SMALL, provenance, train_run  # noqa: E402

OPTIMIZERS = ["adamw", "adopt", "lion", "sf_adamw", "sophia", "muon"]


def default_lr(name: str) -> float:
    from pretrain.optim import get_spec
    return float(get_spec(name).defaults["lr"])


def overrides_for(name: str, warmup: int) -> list[str]:
    if name == "sf_adamw":
        return [f"optim={name}", "schedule=constant", "schedule.warmup_steps=0", f"optim.warmup_steps={warmup}"]
    return [f"optim={name}", "schedule=cosine", f"schedule.warmup_steps={warmup}"]


def eval_curve(run_dir: str) -> list[tuple[int, float]]:
    from pretrain.tracking import read_metrics
    return [(r["step"], r["val_loss"]) for r in read_metrics(run_dir)
            if r.get("kind") == "eval" and r.get("val_loss") is not None]


def steps_to(curve, target: float) -> int | None:
    return next((s for s, v in curve if v <= target), None)


def render(res: dict) -> str:
    """The table this benchmark prints, from its results.json (the README's table is this text)."""
    st = res["settings"]

    def cell(x):
        if x["mean"] is None:
            return f"- ({x['reached']})"
        return f"{x['mean']:.0f} ({x['min']}-{x['max']}), {x['reached']}"

    lines = [f"### Steps to validation loss {res['target']:.4f} (AdamW one-shot's final, mean of seeds "
             f"{','.join(map(str, st['seeds']))}), {st['steps']} steps budget, eval every {st['eval_every']}", "",
             "| optimizer | one-shot lr | steps (mean, min-max), reached | final val loss | tuned lr "
             f"(best of {st['budget']}) | steps (mean, min-max), reached | final val loss |",
             "|---|---|---|---|---|---|---|"]
    for name, r in res["results"].items():
        one, tun = r["one_shot"], r["tuned"]
        lines.append(f"| {name} | {r['default_lr']:g} | {cell(one)} | {one['final']:.4f} +- {one['final_std']:.4f} "
                     f"| {r['best_lr']:.3g} | {cell(tun)} | {tun['final']:.4f} +- {tun['final_std']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_steps_to_target"))
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--steps", type=int, default=None, help="default 300 (30 with --quick)")
    ap.add_argument("--budget", type=int, default=None, help="lr samples of the random search (default 8)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eval-every", type=int, default=None, help="default steps / 20")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    import numpy as np

    from pretrain.optim import OPTIMIZERS as REGISTRY
    names = args.optimizers.split(",")
    bad = [n for n in names if n not in REGISTRY]
    if bad:
        raise SystemExit(f"unknown optimizers {bad}; registered: {', '.join(sorted(REGISTRY))}")
    if "adamw" not in names:
        names = ["adamw"] + names  # the target comes from AdamW's one-shot runs
    seeds = [int(s) for s in args.seeds.split(",")]
    steps, budget = args.steps or (30 if args.quick else 300), args.budget or (2 if args.quick else 8)
    if args.quick:
        seeds, names = [0], names[:2]
    warmup, every = max(steps // 10, 1), args.eval_every or max(steps // 20, 1)
    base = SMALL + [f"train.eval_every={every}"]
    draws = 10.0 ** np.random.default_rng(0).uniform(-1, 1, size=budget)  # x default lr, the same for all
    meta = provenance()  # the commit and machine the runs start at
    t0 = time.time()

    def run(name, lr, seed, tag):
        lr_ov = ["~optim.lr"] if lr is None else [f"optim.lr={lr}"]
        run_dir = os.path.join(args.out, "runs", f"{name}_{tag}_s{seed}")
        loss = train_run(base + overrides_for(name, warmup) + lr_ov + [f"seed={seed}"], run_dir, steps)
        return run_dir, loss

    results = {}
    for name in names:
        d = default_lr(name)
        print(f"{name}: one-shot (lr {d:g}), random search over lr x {np.round(draws, 3).tolist()}", flush=True)
        default = {s: run(name, None, s, "default") for s in seeds}
        search = {float(d * x): run(name, float(d * x), seeds[0], f"lr{d * x:.3g}") for x in draws}
        best = min(search, key=lambda lr: search[lr][1])
        tuned = {seeds[0]: search[best], **{s: run(name, best, s, f"lr{best:.3g}") for s in seeds[1:]}}
        results[name] = {"default_lr": d, "best_lr": best,
                         "search": {f"{k:.3g}": v[1] for k, v in search.items()},
                         "default": {s: v for s, v in default.items()}, "tuned": tuned}
    target = statistics.mean(v[1] for v in results["adamw"]["default"].values())

    def summary(arm):
        reached = [steps_to(eval_curve(d), target) for d, _ in arm.values()]
        hit = [s for s in reached if s is not None]
        finals = [loss for _, loss in arm.values()]
        return {"steps": reached, "mean": statistics.mean(hit) if hit else None,
                "min": min(hit) if hit else None, "max": max(hit) if hit else None,
                "reached": f"{len(hit)}/{len(reached)}", "final": statistics.mean(finals),
                "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0}

    out = {name: {"default_lr": r["default_lr"], "best_lr": r["best_lr"], "search": r["search"],
                  "one_shot": summary(r["default"]), "tuned": summary(r["tuned"])} for name, r in results.items()}
    res = {**meta, "settings": {"steps": steps, "budget": budget, "draws": draws.tolist(), "seeds": seeds,
                                        "eval_every": every, "warmup": warmup, "quick": args.quick},
           "target": target, "results": out, "runtime_s": time.time() - t0}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(render(res))
    print(f"\nwrote {os.path.join(args.out, 'results.json')} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
