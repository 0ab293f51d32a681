#!/usr/bin/env python
"""Multi-Power Law on the embedded corpus: predict a held-out WSD run, then train the MPL-optimized schedule.

With the tiny recipe (`python train.py`'s model and data: a 4-layer, 128-wide GPT on the stdlib corpus), for
every seed in --seeds (seed=<s>: model init and data order; data.split_seed stays 1234, so every run is
evaluated on the same validation set):

1. trains constant, cosine (the recipe's cosine: to 0.1 x peak) and WSD (1-sqrt decay over the last 20%)
   runs, all with peak lr 3e-3 and 30 warmup steps, evaluating every --eval-every steps (8 batches);
2. fits the Multi-Power Law (`pretrain.schedules.mpl.fit`) to that seed's constant + cosine runs and
   predicts the held-out WSD run's final loss. Variants (all reported; the primary one, val_loss with
   skip_fraction 0.1, was fixed before any run): the validation loss, or the training loss (logged every
   step) smoothed by a centered moving average of --smooth steps (25 and 100); skip_fraction 0.05 / 0.1 / 0.2
   of the post-warmup steps left out. The WSD run is never used to choose a variant: the tables also give each
   fit's error on its own training runs (constant + cosine), the only fair basis for choosing;
3. fits the law once more to the constant + cosine runs of every seed together (each val_loss variant,
   against each seed's WSD final loss and their mean), optimizes a schedule under the primary one
   (`optimize_schedule`, same steps, peak and warmup), writes it to <out>/mpl_schedule.json and trains it
   (`schedule=mpl schedule.path=...`) for every seed ("mpl", round 1);
4. round 2: refits the law (primary variant) on every run trained so far, constant + cosine + WSD + round-1
   MPL of every seed, optimizes again, writes <out>/mpl_schedule_round2.json and trains it for every seed
   ("mpl_r2"). The round-1 law, fitted on constant + cosine only, predicts its own schedule 2.8% too low
   (it has seen no late decay); round 2 is the same fit-optimize step with those runs added.

It prints markdown tables (prediction errors per seed and variant; final validation loss of every
schedule per seed, mean +- sample std, and the paired differences to cosine and WSD) and writes
<out>/results.json.
Runs live in <out>/runs/<schedule>_T<steps>_s<seed>; a run whose metrics reach the last step (and whose
overrides match) is reused, so an interrupted benchmark resumes where it stopped.

    python bench/mpl_tiny.py                          # 3 seeds x 600 steps: 15 runs, 3-8 min each on 1 thread
                                                      # of a shared 2-core machine, then ~10 min of fits
    python bench/mpl_tiny.py --seeds 0 --steps 300
    python bench/mpl_tiny.py --quick --out /tmp/mpl   # smoke mode: tiny model, 40 steps, 1 seed (~30 s)

The default --out is under runs/ (git-ignored).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
for _k, _v in (("WANDB_MODE", "offline"), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
               ("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
    os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402

PEAK_LR = 3e-3
WARMUP = 30
SPLIT_SEED = 1234
SCHEDULES = {  # name -> overrides (the recipe's cosine keeps min_lr_ratio 0.1; WSD decays to 0)
    "constant": ["schedule=constant"],
    "cosine": ["schedule=cosine"],
    "wsd": ["schedule=wsd", "schedule.decay_fraction=0.2", "schedule.decay_shape=1-sqrt"],
}
# smoke mode: tests/helpers.py's SMALL model on 1 MB of the corpus (tokenizer cached with the tests')
QUICK_CACHE = os.environ.get("PRETRAIN_TEST_CACHE", os.path.join(ROOT, ".cache", "test-data"))
QUICK = ["data.max_bytes=1000000", f"data.cache_dir={QUICK_CACHE}", "data.vocab_size=512",
         "model.d_model=64", "model.n_layer=2", "model.n_head=2",
         "train.seq_len=64", "train.global_batch_size=8", "train.micro_batch_size=4"]
PRIMARY = "val_loss/skip0.1"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--steps", type=int, default=None, help="train.steps (default 600; 40 with --quick)")
    ap.add_argument("--eval-every", type=int, default=None, help="train.eval_every (default 20; 5 with --quick)")
    ap.add_argument("--smooth", default=None,
                    help="comma-separated moving-average windows (steps) of the training-loss fits "
                         "(default 25,100; 5 with --quick)")
    ap.add_argument("--out", default=None, help="work dir (default runs/bench/mpl_tiny, git-ignored)")
    ap.add_argument("--iters", type=int, default=None, help="optimize_schedule iterations (default 5000)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke mode: tests' small model, 40 steps, warmup 4, seed 0 unless --seeds is given")
    ap.add_argument("--json", default=None, help="results file (default <out>/results.json)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared 2-core machine two threads that wait "
                         "on each other make a step 10x slower)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds if "--seeds" in (argv if argv is not None else sys.argv) else "0"
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    args.steps = args.steps or (40 if args.quick else 600)
    args.eval_every = args.eval_every or (5 if args.quick else 20)
    args.smooth = [int(w) for w in str(args.smooth or ("5" if args.quick else "25,100")).split(",") if w.strip()]
    args.iters = args.iters or (300 if args.quick else 5000)
    args.warmup = 4 if args.quick else WARMUP
    default_out = os.path.join(ROOT, "runs", "bench", "mpl_tiny" + ("_quick" if args.quick else ""))
    args.out = os.path.abspath(args.out or default_out)
    args.json = args.json or os.path.join(args.out, "results.json")
    return args


# ------------------------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------------------------

def run_overrides(args, schedule: list[str], seed: int, run_dir: str) -> list[str]:
    base = QUICK if args.quick else []
    return base + schedule + [
        f"seed={seed}", f"data.split_seed={SPLIT_SEED}", f"optim.lr={PEAK_LR}", f"schedule.warmup_steps={args.warmup}",
        f"train.steps={args.steps}", f"train.eval_every={args.eval_every}",
        f"train.eval_batches={4 if args.quick else 8}", "train.progress=false", "log.log_every=1",
        "train.compile_optimizer=never",  # the eager step in every run (auto compiles AdamW from 500 steps)
        f"run_dir={run_dir}",
    ]


def _complete(run_dir: str, steps: int) -> bool:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("kind") == "eval" and row.get("step") == steps:
                return True
    return False


def train_run(args, name: str, schedule: list[str], seed: int, tag: str = "") -> dict:
    """Train one run in this process (or reuse a finished one); returns {run_dir, final_val_loss, seconds}."""
    run_dir = os.path.join(args.out, "runs", f"{name}_T{args.steps}_s{seed}")
    overrides = run_overrides(args, schedule, seed, run_dir)
    marker = os.path.join(run_dir, "bench.json")
    if _complete(run_dir, args.steps) and os.path.isfile(marker):
        with open(marker) as f:
            info = json.load(f)
        if info.get("overrides") == overrides and info.get("tag", "") == tag:
            print(f"  reuse {os.path.relpath(run_dir, args.out)} ({info['seconds']:.0f} s when trained)", flush=True)
            return {"run_dir": run_dir, "final_val_loss": final_val(run_dir, args.steps), "seconds": info["seconds"],
                    "reused": True}
    if os.path.isdir(run_dir):  # unfinished, or trained with other settings: start again
        shutil.rmtree(run_dir)

    from accelerate.state import AcceleratorState, GradientState, PartialState

    from pretrain.config import load_config
    from pretrain.loop import train

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    cfg = load_config(overrides)
    t0 = time.time()
    train(cfg, log=lambda *_: None)
    seconds = time.time() - t0
    with open(marker, "w") as f:
        json.dump({"overrides": overrides, "tag": tag, "seconds": seconds}, f)
    val = final_val(run_dir, args.steps)
    print(f"  trained {os.path.relpath(run_dir, args.out)}: final val_loss {val:.4f} ({seconds:.0f} s)", flush=True)
    return {"run_dir": run_dir, "final_val_loss": val, "seconds": seconds, "reused": False}


def final_val(run_dir: str, steps: int) -> float:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return float(next(r["val_loss"] for r in reversed(rows) if r.get("kind") == "eval" and r.get("step") == steps))


# ------------------------------------------------------------------------------------------------------------
# fitting and predicting
# ------------------------------------------------------------------------------------------------------------

def variants(args) -> dict:
    """name -> (key, smooth, skip_fraction)."""
    skips = (0.1,) if args.quick else (0.05, 0.1, 0.2)
    out = {}
    for key, smooth in [("val_loss", None)] + [("loss", w) for w in args.smooth]:
        for skip in skips:
            out[f"{'val_loss' if key == 'val_loss' else f'train_loss_ma{smooth}'}/skip{skip:g}"] = (key, smooth, skip)
    return out


def load(run_dirs, key, smooth):
    from pretrain.schedules.mpl import load_runs_from_metrics
    return load_runs_from_metrics(run_dirs, key=key, smooth=smooth)


def tail_mean_pred(params, run, last: int) -> tuple[float, float]:
    """(observed, predicted) mean over the last `last` observations of a run (raw, unsmoothed observations)."""
    from pretrain.schedules.mpl import predict
    steps = run.steps[-last:]
    return float(run.losses[-last:].mean()), float(predict(params, run.lrs, run.warmup_steps, at_steps=steps).mean())


def fit_and_predict(args, fit_dirs: list[str], wsd_dir: str, key: str, smooth, skip: float) -> dict:
    """Fit on fit_dirs; predict the WSD run's final validation loss (and, for training-loss fits, its final
    training loss: the mean of the last `smooth` per-step losses, against the mean prediction there)."""
    from pretrain.schedules.mpl import evaluate, fit, predict

    runs = load(fit_dirs, key, smooth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params, report = fit(runs, skip_fraction=skip)
    wsd_val = load([wsd_dir], "val_loss", None)[0]
    obs = float(wsd_val.losses[-1])
    pred = float(predict(params, wsd_val.lrs, wsd_val.warmup_steps, at_steps=[wsd_val.steps[-1]])[0])
    out = {
        "params": params.to_dict(),
        "objective": report["objective"],
        "fit_mare": report["train"]["all"]["mare"],  # mean |rel err| on the fitted (constant + cosine) points
        "fit_r2": report["train"]["all"]["r2"],
        "fit_final_rel_err": {n: m["final_rel_err"] for n, m in report["train"]["runs"].items()},
        "wsd_final_val_obs": obs,
        "wsd_final_val_pred": pred,
        "rel_err": (pred - obs) / obs,
    }
    if key != "val_loss":
        raw = load([wsd_dir], "loss", None)[0]
        o, p = tail_mean_pred(params, raw, smooth)
        out.update(wsd_final_train_obs=o, wsd_final_train_pred=p, rel_err_train=(p - o) / o)
        heldout_curve = load([wsd_dir], key, smooth)
    else:
        heldout_curve = [wsd_val]
    ev = evaluate(params, heldout_curve, skip_fraction=skip)["all"]
    out["wsd_curve_mare"] = ev["mare"]  # mean |rel err| over the whole held-out curve (after warmup + skip)
    return out


def mean_std(xs) -> tuple[float, float]:
    xs = [float(x) for x in xs]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def schedule_lrs(name: str, args) -> np.ndarray:
    from pretrain.schedules import build_schedule
    kw = {"constant": {}, "cosine": {"min_lr_ratio": 0.1},
          "wsd": {"decay_fraction": 0.2, "decay_shape": "1-sqrt"}}[name]
    s = build_schedule(name, peak_lr=PEAK_LR, total_steps=args.steps, warmup_steps=args.warmup, **kw)
    return np.array([s(i) for i in range(args.steps)], dtype=np.float64)


def shape(lrs: np.ndarray, args) -> dict:
    """Where an optimized schedule leaves the peak (fraction of the post-warmup steps), where it ends, and its lr
    at 50/75/90/100% of the run."""
    below = np.flatnonzero(lrs[args.warmup:] < 0.999 * PEAK_LR)
    return {"peak_hold_fraction": float(below[0] / (args.steps - args.warmup)) if below.size else 1.0,
            "final_lr_ratio": float(lrs[-1] / PEAK_LR),
            "lr_at": [float(lrs[min(int(f * args.steps), args.steps - 1)]) for f in (0.5, 0.75, 0.9, 1.0)]}


def sha1(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------------------

def pct(x: float, signed: bool = True) -> str:
    return f"{x:+.2%}" if signed else f"{x:.2%}"


def tables(res: dict) -> str:
    seeds = res["settings"]["seeds"]
    lines = ["### MPL prediction of the held-out WSD run's final validation loss (fit: constant + cosine)", "",
             "| fit variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean abs err +- std | "
             "fit mean abs rel err (const+cos) | held-out curve mean abs rel err |",
             "|---|" + "---:|" * (len(seeds) + 3)]
    for name, v in res["prediction"].items():
        per = [v["per_seed"][str(s)] for s in seeds]
        star = " (primary)" if name == res["primary_variant"] else ""
        lines.append(f"| {name}{star} | " + " | ".join(pct(p["rel_err"]) for p in per)
                     + f" | {pct(v['abs_err_mean'], False)} +- {pct(v['abs_err_std'], False)}"
                     + f" | {pct(v['fit_mare_mean'], False)} | {pct(v['wsd_curve_mare_mean'], False)} |")
    tr = {n: v for n, v in res["prediction"].items() if "abs_err_train_mean" in v}
    if tr:
        lines += ["", "Training-loss fits against the WSD run's own training loss (mean of its last W per-step "
                  "losses against the mean prediction there, W = the fit's smoothing window):", "",
                  "| fit variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean abs err +- std |",
                  "|---|" + "---:|" * (len(seeds) + 1)]
        for name, v in tr.items():
            per = [v["per_seed"][str(s)] for s in seeds]
            lines.append(f"| {name} | " + " | ".join(pct(p["rel_err_train"]) for p in per)
                         + f" | {pct(v['abs_err_train_mean'], False)} +- {pct(v['abs_err_train_std'], False)} |")
    lines += ["", "Pooled fits (constant + cosine of every seed together; no WSD run in the fit) against each seed's "
              "WSD run and the mean over seeds of their final validation loss:", "",
              "| fit variant | predicted | " + " | ".join(f"error seed {s}" for s in seeds)
              + " | observed mean | error vs mean | fit mean abs rel err (const+cos) |",
              "|---|---:|" + "---:|" * (len(seeds) + 3)]
    for name, v in res["pooled_fits"].items():
        star = " (primary; round 1 is optimized under it)" if name == res["primary_variant"] else ""
        lines.append(f"| {name}{star} | {v['wsd_pred']:.4f} | "
                     + " | ".join(pct(v["rel_err_per_seed"][str(s)]) for s in seeds)
                     + f" | {v['wsd_obs_mean']:.4f} | {pct(v['rel_err'])} | {pct(v['fit_mare'], False)} |")
    lines.append("")

    sch, sch2 = res["schedule"], res["schedule_round2"]
    lines += ["### Final validation loss per schedule", "",
              "mpl: round 1, optimized under the pooled constant + cosine fit; mpl_r2: round 2, optimized under a "
              "refit on every run of round 1 (constant, cosine, WSD, mpl of every seed).", "",
              "| schedule | " + " | ".join(f"seed {s}" for s in seeds) + " | mean +- std | vs cosine (paired) "
              "| predicted by the round-2 fit | by the round-1 fit |", "|---|" + "---:|" * (len(seeds) + 4)]
    for name, v in res["final_val_loss"].items():
        per = " | ".join(f"{v['per_seed'][str(s)]:.4f}" for s in seeds)
        d = v.get("vs_cosine")
        dtxt = "" if d is None else f"{pct(d['mean'])} +- {pct(d['std'], False)}"
        lines.append(f"| {name} | {per} | {v['mean']:.4f} +- {v['std']:.4f} | {dtxt} | "
                     f"{sch2['predicted_final'].get(name, float('nan')):.4f} | "
                     f"{sch['predicted_final'].get(name, float('nan')):.4f} |")
    for name, sc in (("mpl", sch), ("mpl_r2", sch2)):
        vw = res["final_val_loss"][name]["vs_wsd"]
        lines += ["", f"{name} vs WSD (paired): {pct(vw['mean'])} +- {pct(vw['std'], False)} "
                  "(" + ", ".join(f"seed {s} {pct(x)}" for s, x in vw["per_seed"].items()) + "). "
                  f"Schedule: holds the peak for {sc['peak_hold_fraction']:.0%} of the post-warmup steps, ends at "
                  f"{sc['final_lr_ratio']:.3g} x peak (lr at 50/75/90/100% of the run: "
                  + ", ".join(f"{x:.2e}" for x in sc["lr_at"]) + ")."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    print(f"MPL tiny benchmark: seeds {args.seeds}, {args.steps} steps, peak {PEAK_LR}, warmup {args.warmup}, "
          f"eval every {args.eval_every}; out {args.out}", flush=True)

    runs = {name: {} for name in SCHEDULES}
    for seed in args.seeds:
        for name, ov in SCHEDULES.items():
            runs[name][seed] = train_run(args, name, ov, seed)

    # 2. per-seed fit on constant + cosine, prediction of the held-out WSD run
    print("fitting ...", flush=True)
    prediction = {}
    for vname, (key, smooth, skip) in variants(args).items():
        per = {}
        for seed in args.seeds:
            per[str(seed)] = fit_and_predict(args, [runs["constant"][seed]["run_dir"], runs["cosine"][seed]["run_dir"]],
                                             runs["wsd"][seed]["run_dir"], key, smooth, skip)
        errs = [abs(p["rel_err"]) for p in per.values()]
        v = {"key": key, "smooth": smooth, "skip_fraction": skip, "per_seed": per}
        v["rel_err_mean"], v["rel_err_std"] = mean_std(p["rel_err"] for p in per.values())
        v["abs_err_mean"], v["abs_err_std"] = mean_std(errs)
        v["fit_mare_mean"] = mean_std(p["fit_mare"] for p in per.values())[0]
        v["wsd_curve_mare_mean"] = mean_std(p["wsd_curve_mare"] for p in per.values())[0]
        if key != "val_loss":
            v["abs_err_train_mean"], v["abs_err_train_std"] = mean_std(abs(p["rel_err_train"]) for p in per.values())
        prediction[vname] = v
        print(f"  {vname}: WSD final val loss rel err " + ", ".join(pct(p["rel_err"]) for p in per.values()),
              flush=True)

    # 3. pooled fit (every seed's constant + cosine), optimized schedule, MPL runs
    from pretrain.schedules.mpl import compare_final, fit, optimize_schedule, predict, save_schedule

    fit_dirs = [runs[n][s]["run_dir"] for s in args.seeds for n in ("constant", "cosine")]
    wsd_runs = load([runs["wsd"][s]["run_dir"] for s in args.seeds], "val_loss", None)
    wsd_obs = statistics.fmean(float(r.losses[-1]) for r in wsd_runs)
    pooled_fits = {}
    for vname, (key, smooth, skip) in variants(args).items():
        if key != "val_loss":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, report = fit(load(fit_dirs, key, smooth), skip_fraction=skip)
        w = wsd_runs[0]  # every seed's WSD run has the same lrs
        wsd_pred = float(predict(p, w.lrs, w.warmup_steps, at_steps=[w.steps[-1]])[0])
        per_seed = {str(s): (wsd_pred - float(r.losses[-1])) / float(r.losses[-1])
                    for s, r in zip(args.seeds, wsd_runs)}
        pooled_fits[vname] = {"variant": vname, "params": p.to_dict(), "fit_mare": report["train"]["all"]["mare"],
                              "wsd_pred": wsd_pred, "wsd_obs_mean": wsd_obs, "rel_err": (wsd_pred - wsd_obs) / wsd_obs,
                              "rel_err_per_seed": per_seed}
        if vname == PRIMARY:
            params = p
    pooled = pooled_fits[PRIMARY]

    print("optimizing the schedule ...", flush=True)
    lrs = optimize_schedule(params, total_steps=args.steps, peak_lr=PEAK_LR, warmup_steps=args.warmup, iters=args.iters)
    refs = {n: schedule_lrs(n, args) for n in SCHEDULES}
    predicted = compare_final(params, {"mpl": lrs, **refs}, args.warmup)
    sched_path = os.path.join(args.out, "mpl_schedule.json")
    save_schedule(sched_path, lrs, {"peak_lr": PEAK_LR, "warmup_steps": args.warmup, "params": params,
                                    "predicted_final_loss": predicted,
                                    "fit": {"runs": [os.path.relpath(d, args.out) for d in fit_dirs],
                                            "variant": PRIMARY}})
    schedule = {"path": sched_path, "sha1": sha1(sched_path), "predicted_final": predicted, **shape(lrs, args)}

    runs["mpl"] = {}
    for seed in args.seeds:
        runs["mpl"][seed] = train_run(args, "mpl", ["schedule=mpl", f"schedule.path={sched_path}"], seed,
                                      tag=schedule["sha1"])

    # 4. round 2: refit on every run trained so far (constant, cosine, WSD and the round-1 MPL runs of every seed:
    # the law now also sees a held-to-the-end decay and its own schedule), re-optimize, train for every seed
    print("round 2: refitting on every run so far, optimizing again ...", flush=True)
    r2_names = ("constant", "cosine", "wsd", "mpl")
    r2_dirs = [runs[n][s]["run_dir"] for s in args.seeds for n in r2_names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key, smooth, skip = variants(args)[PRIMARY]
        params2, report2 = fit(load(r2_dirs, key, smooth), skip_fraction=skip)
    lrs2 = optimize_schedule(params2, total_steps=args.steps, peak_lr=PEAK_LR, warmup_steps=args.warmup,
                             iters=args.iters)
    sched2_path = os.path.join(args.out, "mpl_schedule_round2.json")
    save_schedule(sched2_path, lrs2, {"peak_lr": PEAK_LR, "warmup_steps": args.warmup, "params": params2})
    predicted2 = compare_final(params2, {"mpl_r2": lrs2, "mpl": lrs, **refs}, args.warmup)
    schedule2 = {"path": sched2_path, "sha1": sha1(sched2_path), "predicted_final": predicted2,
                 "fit_runs": [os.path.relpath(d, args.out) for d in r2_dirs], "params": params2.to_dict(),
                 "fit_mare": report2["train"]["all"]["mare"], **shape(lrs2, args)}
    runs["mpl_r2"] = {}
    for seed in args.seeds:
        runs["mpl_r2"][seed] = train_run(args, "mpl_r2", ["schedule=mpl", f"schedule.path={sched2_path}"], seed,
                                         tag=schedule2["sha1"])

    final = {}
    for name in ("mpl_r2", "mpl", "cosine", "wsd", "constant"):
        vals = {str(s): runs[name][s]["final_val_loss"] for s in args.seeds}
        m, sd = mean_std(vals.values())
        final[name] = {"per_seed": vals, "mean": m, "std": sd}
        if name != "cosine":
            d = [(runs[name][s]["final_val_loss"] - runs["cosine"][s]["final_val_loss"])
                 / runs["cosine"][s]["final_val_loss"] for s in args.seeds]
            final[name]["vs_cosine"] = dict(zip(("mean", "std"), mean_std(d)),
                                            per_seed=dict(zip(map(str, args.seeds), d)))
    for name in ("mpl", "mpl_r2"):
        d = [(runs[name][s]["final_val_loss"] - runs["wsd"][s]["final_val_loss"]) / runs["wsd"][s]["final_val_loss"]
             for s in args.seeds]
        final[name]["vs_wsd"] = dict(zip(("mean", "std"), mean_std(d)), per_seed=dict(zip(map(str, args.seeds), d)))

    res = {
        "settings": {"seeds": args.seeds, "steps": args.steps, "peak_lr": PEAK_LR, "warmup_steps": args.warmup,
                     "eval_every": args.eval_every, "eval_batches": 4 if args.quick else 8, "smooth": args.smooth,
                     "split_seed": SPLIT_SEED, "quick": args.quick, "threads": args.threads,
                     "optimize_iters": args.iters, "schedules": {n: ov for n, ov in SCHEDULES.items()},
                     "model_overrides": QUICK if args.quick else []},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "date": datetime.datetime.now().isoformat(timespec="seconds")},
        "runs": {n: {str(s): {"run_dir": os.path.relpath(r["run_dir"], args.out), "final_val_loss": r["final_val_loss"],
                              "seconds": r["seconds"], "reused": r["reused"]} for s, r in v.items()}
                 for n, v in runs.items()},
        "primary_variant": PRIMARY,
        "prediction": prediction,
        "pooled_fit": pooled,
        "pooled_fits": pooled_fits,
        "schedule": schedule,
        "schedule_round2": schedule2,
        "final_val_loss": final,
        "runtime_s": time.time() - t_start,
        "train_seconds": sum(r["seconds"] for v in runs.values() for r in v.values()),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
    print()
    print(tables(res))
    print()
    print(f"runtime {res['runtime_s']:.0f} s (training {res['train_seconds']:.0f} s, summed over runs incl. reused); "
          f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
