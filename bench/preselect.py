#!/usr/bin/env python
"""Schedule pre-selection evaluated like Opt-Laws (Xie et al., arXiv 2409.04777; this project's reading of it):
fit the two predictors of `pretrain.preselect` on small runs, rank held-out configurations never used in a fit.

Setup (fixed before any run; sized for a 2-core CPU shared with other jobs): tests/helpers.py's SMALL GPT
(d_model 64, 2 layers, vocab 512, seq 64, 8 sequences a step) on 1 MB of the embedded stdlib corpus, AdamW with
the recipe's clipping (norm 1.0), 100 steps, validation every 10 steps (4 batches, split seed 1234 for every run),
seeds 0, 1, 2 for every configuration. A configuration is (family, peak lr, warmup steps).

* FIT (the loss predictors' runs): constant, cosine, linear, wsd_1sqrt x peak {1e-3, 3e-3, 1e-2} x warmup 5,
  and the same four families at peak 3e-3 with warmup 20 (16 configurations).
* DIV_FIT (only the divergence rule sees them): constant, cosine x peak {0.1, 0.3, 1, 3} x warmup 5, and
  constant at peak 1 with warmup 20 (9 configurations); added after the first evaluation (whose rule had no runs
  between the stable 0.1 and the diverged 0.3, where it was asked about 0.15): constant, cosine x peak
  {0.2, 0.25} x warmup {5, 10} (8 configurations; none of them, and none of their lrs, is held out).
* HELD_OUT (never in any fit): all seven families (the four above, wsd_linear, power, mpl) x peak {2e-3, 6e-3}
  x warmup 10 (14 configurations); for the divergence F1 also wsd_1sqrt, linear, power x peak {0.05, 0.15, 0.5, 2}
  x warmup 10 (12 configurations, two of them on each side of the boundary the fit runs leave open). The mpl family's schedules are optimized under the Multi-Power Law fitted on FIT
  (`pretrain.preselect.mpl_candidate_lrs`, 2000 iterations), then trained.

Evaluation (fits: `pretrain.preselect.preselect`):
* top-2 hit: ranking tasks over the held-out configurations whose seeds all stayed stable: all of them, and each
  peak lr's slice (7 schedules each); also the hit rate over every 5-configuration subset. A hit: the true best
  (mean of the seeds) is within one seed spread (the sample std of the best's seeds) of the true mean of one of
  the predicted top two.
* out-of-family: for each FIT family, refit without any of its runs and rank its held-out configurations among
  all; reported: the predicted and true rank of the family's best configuration, the pick, and the top-2 hit.
* divergence F1 over the 26 held-out configurations, rule learned on FIT + DIV_FIT. A run diverged if its loss
  became non-finite, it stopped early, or its loss rose above its initial value (`pretrain.preselect.divergence`).
  Label of a configuration: diverged iff most of its seeds did (>= 2 of 3); flag: the rule's per-run probability
  p > 0.5, the matching threshold (independent seeds: P(>= 2 of 3) = 3p^2 - 2p^3 > 0.5 iff p > 0.5). Also
  reported: label "any seed diverged" with its matching flag 1 - (1 - p)^3 > 0.5, and the F1 per run.

    python bench/preselect.py --workers 2        # 177 runs of ~5 s alone (~50 s each on the shared CPU), then fits
    python bench/preselect.py --quick --out /tmp/ps   # smoke mode: 30 steps, seed 0, 14 runs

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
# the divergence rule's training lrs between the stable 0.1 and the diverged 0.3 (added after the first evaluation,
# whose rule had no data there; chosen off the held-out lrs 0.05, 0.15, 0.5, 2)
DIV_FIT_MID = (0.2, 0.25)


def grids(quick: bool) -> dict:
    """name of the set -> list of (family, peak, warmup)."""
    if quick:
        return {"fit": [(f, p, 2) for f in FIT_FAMILIES for p in (1e-3, 1e-2)],
                "div_fit": [("constant", 3.0, 2)],
                "held_out": [(f, 3e-3, 3) for f in ("constant", "cosine", "wsd_linear", "mpl")],
                "div_held_out": [("wsd_linear", 3.0, 3)]}
    return {
        "fit": [(f, p, 5) for f in FIT_FAMILIES for p in (1e-3, 3e-3, 1e-2)] + [(f, 3e-3, 20) for f in FIT_FAMILIES],
        "div_fit": [(f, p, 5) for f in ("constant", "cosine") for p in (0.3, 1.0, 3.0)] + [("constant", 1.0, 20)]
        + [(f, 0.1, 5) for f in ("constant", "cosine")]
        + [(f, p, w) for f in ("constant", "cosine") for p in DIV_FIT_MID for w in (5, 10)],
        "held_out": [(f, p, 10) for f in FAMILIES for p in (2e-3, 6e-3)],
        "div_held_out": [(f, p, 10) for f in ("wsd_1sqrt", "linear", "power") for p in (0.5, 2.0, 0.05, 0.15)],
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
    from pretrain import errors
    stops = tuple(x for x in (FloatingPointError, getattr(errors, "RunStopped", None)) if x is not None)
    try:
        train(load_config(ov), log=lambda *_: None)
    except stops as e:  # the loop stops a run whose loss is not finite (FloatingPointError, or RunStopped)
        error = f"{type(e).__name__}: {e}"
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
            for attempt in range(3):  # a shared checkout can be mid-edit for a moment: retry before failing
                try:
                    train_one(args, cfg, seed)
                    break
                except Exception as e:
                    if attempt == 2:
                        raise
                    print(f"  {config_name(*cfg)}_s{seed}: {type(e).__name__}: {e}; retrying in 30 s", flush=True)
                    time.sleep(30)
    return 0


# ------------------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------------------

def records(args, cfgs) -> dict:
    """config -> list of RunRecords (one per seed), group = the configuration's name."""
    from pretrain.preselect import load_run
    out = {}
    for cfg in cfgs:
        rs = []
        for seed in args.seeds:
            r = load_run(run_dir(args, cfg, seed))
            r.group = config_name(*cfg)
            rs.append(r)
        out[cfg] = rs
    return out


def candidate(cfg, recs):
    from pretrain.preselect import Candidate
    family, peak, warmup = cfg
    return Candidate(config_name(*cfg), family, FAMILIES[family][0].split("=")[1], {}, peak, warmup, lrs=recs[0].lrs)


def make_mpl_schedules(args, fit_recs) -> dict:
    """Fit the law on FIT (seed-averaged curves), optimize the held-out mpl configurations' schedules (cached)."""
    from pretrain.preselect import MPLPredictor, mpl_candidate_lrs
    from pretrain.schedules.mpl import MPLParams, save_schedule
    path = os.path.join(args.out, "mpl_fit_params.json")
    if os.path.isfile(path):
        params = MPLParams.from_json(path)
    else:
        t0 = time.time()
        params = MPLPredictor().fit([r for rs in fit_recs.values() for r in rs]).params
        params.to_json(path, fit_seconds=time.time() - t0)
    for family, peak, warmup in [c for k in ("held_out", "div_held_out") for c in grids(args.quick)[k]]:
        out = mpl_schedule_path(args, peak, warmup)
        if family == "mpl" and not os.path.isfile(out):
            lrs = mpl_candidate_lrs(params, args.steps, peak, warmup, iters=2000)
            save_schedule(out, lrs, {"peak_lr": peak, "warmup_steps": warmup, "params": params})
    return {"params": params.to_dict(), "path": path}


def seeds_stats(recs) -> tuple[float, float, int]:
    import numpy as np
    vals = [r.final_loss for r in recs if not r.diverged]
    if not vals:
        return float("nan"), float("nan"), 0
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def ranking_tasks(held) -> dict:
    """task name -> list of configurations (held-out, all seeds stable)."""
    tasks = {"all held-out": list(held)}
    for p in sorted({c[1] for c in held}):
        tasks[f"peak {p:g}"] = [c for c in held if c[1] == p]
    return tasks


def evaluate_predictions(pred: dict, truth: dict, tasks: dict, per_seed: dict) -> dict:
    """Top-2 hits of one predictor's predictions (config -> value) on the tasks and on every 5-subset of the held-out
    configurations, by three criteria: `issue` (the true best within one seed spread, the sample std of its seeds,
    of a predicted top-2 candidate), `centered` (the same with the spread of its seed-centered losses: each seed's
    mean over the task's configurations subtracted, since a seed's init and data order move every schedule alike),
    `strict` (the true best is one of the predicted top two)."""
    import itertools

    import numpy as np

    from pretrain.preselect import top2_hit

    def judge(cfgs):
        mean = {c: truth[c][0] for c in cfgs}
        offs = np.mean([per_seed[c] for c in cfgs], axis=0)  # each seed's mean over the task
        centered = {c: float(np.std(np.asarray(per_seed[c]) - offs, ddof=1)) if len(offs) > 1 else 0.0 for c in cfgs}
        p = {c: pred[c] for c in cfgs}
        hit, info = top2_hit(p, mean, {c: truth[c][1] for c in cfgs})
        return {"issue": hit, "centered": top2_hit(p, mean, centered)[0], "strict": top2_hit(p, mean, dict.fromkeys(cfgs, 0.0))[0],
                "best": config_name(*info["best"]), "top2": [config_name(*c) for c in info["top2"]],
                "gap": info["gap"], "spread": info["spread"], "centered_spread": centered[info["best"]]}

    out = {name: judge(cfgs) for name, cfgs in tasks.items()}
    allc = tasks["all held-out"]
    subs = [judge(sub) for sub in itertools.combinations(allc, 5)]
    rates = {k: (float(np.mean([x[k] for x in subs])) if subs else float("nan")) for k in ("issue", "centered", "strict")}
    p, t = np.array([pred[c] for c in allc]), np.array([truth[c][0] for c in allc])
    rho = float(np.corrcoef(np.argsort(np.argsort(p)), np.argsort(np.argsort(t)))[0, 1])
    return {"tasks": out, "subsets5": {"n": len(subs), **rates}, "spearman": rho, "mae": float(np.mean(np.abs(p - t)))}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.train_only:
        return worker(args)
    import torch
    torch.set_num_threads(1)
    from pretrain.errors import ConfigError
    from pretrain.preselect import config_diverged, f1_score, flag_threshold, preselect

    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)
    g = grids(args.quick)
    print(f"preselect benchmark: {sum(len(v) for v in g.values())} configurations x seeds {args.seeds}, "
          f"{args.steps} steps; out {args.out}", flush=True)
    train_stage(args, "1")
    fit_recs = records(args, g["fit"])
    mpl_fit = make_mpl_schedules(args, fit_recs)
    train_stage(args, "2")
    t_train = time.time() - t_start
    div_recs = records(args, g["div_fit"])
    held_recs = records(args, g["held_out"])
    dheld_recs = records(args, g["div_held_out"])

    truth = {c: seeds_stats(rs) for c, rs in held_recs.items()}
    per_seed = {c: [r.final_loss for r in rs] for c, rs in held_recs.items()}
    stable = [c for c, rs in held_recs.items() if not any(r.diverged for r in rs)]
    tasks = ranking_tasks(stable)
    fit_runs = [r for rs in fit_recs.values() for r in rs]
    div_runs = [r for rs in div_recs.values() for r in rs]
    all_held = {**held_recs, **dheld_recs}
    cands = [candidate(c, rs) for c, rs in all_held.items()]
    from pretrain.schedules.mpl import MPLParams
    init = MPLParams.from_dict(mpl_fit["params"])
    print("fitting both predictors on FIT, ranking the held-out configurations ...", flush=True)
    t0 = time.time()
    res = preselect(fit_runs, cands, div_runs, bootstrap={"mpl": args.mpl_bootstrap, "features": args.bootstrap},
                    mpl_fit={"init": init, "restarts": 1})
    t_fit = time.time() - t0
    names = list(all_held)
    results = {"predictors": {}, "out_of_family": {}}
    for pname, d in res["predictions"].items():
        pred = {c: float(d["mean"][i]) for i, c in enumerate(names)}
        ev = evaluate_predictions(pred, truth, tasks, per_seed)
        ev["per_config"] = {config_name(*c): {"pred": pred[c], "std": float(d["std"][i]), "p_best": float(d["p_best"][i]),
                                              "true_mean": truth[c][0] if c in truth else None,
                                              "true_std": truth[c][1] if c in truth else None}
                            for i, c in enumerate(names) if c in held_recs}
        ev["describe"] = res["fits"][pname].describe()
        results["predictors"][pname] = ev
    # divergence F1 on every held-out configuration (and per run)
    # the rule's P is a per-run probability p; with independent seeds the label "most of n seeds diverged" is likelier
    # than not iff p > flag_threshold(n) (0.5 for odd n: the tool's flag), "at least one of n" iff 1 - (1 - p)^n > 0.5
    labels = [config_diverged(all_held[c]) for c in names]
    flags = [bool(x > flag_threshold(len(args.seeds))) for x in res["flag_prob"]]
    p_any = flag_threshold(len(args.seeds), 1)
    any_labels = [config_diverged(all_held[c], 1) for c in names]
    any_flags = [bool(x > p_any) for x in res["flag_prob"]]
    results["divergence"] = {"rule": res["rule"].describe(), "per_config": f1_score(flags, labels),
                             "per_config_any": {**f1_score(any_flags, any_labels), "threshold": p_any},
                             "per_run": f1_score([f for f, c in zip(flags, names) for _ in all_held[c]],
                                                 [r.diverged for c in names for r in all_held[c]]),
                             "configs": {config_name(*c): {"label": lab, "flag": f, "p": float(p),
                                                           "runs_diverged": sum(r.diverged for r in all_held[c]),
                                                           "reasons": [r.reason for r in all_held[c] if r.diverged]}
                                         for c, lab, f, p in zip(names, labels, flags, res["flag_prob"])}}
    # out-of-family: refit without each FIT family, rank its held-out configurations among all
    fams = sorted({c[0] for c in g["fit"]})
    stable_idx = [names.index(c) for c in stable]
    for fam in fams:
        sub = [r for c, rs in fit_recs.items() if c[0] != fam for r in rs]
        try:
            r2 = preselect(sub, [cands[i] for i in stable_idx], div_runs, bootstrap={"mpl": 0, "features": 0},
                           mpl_fit={"init": init, "restarts": 1})
        except (ConfigError, ValueError) as e:  # e.g. no decaying run left for the MPL fit
            results["out_of_family"][fam] = {"error": str(e)}
            continue
        entry = {}
        for pname, d in r2["predictions"].items():
            pred = {c: float(d["mean"][k]) for k, c in enumerate(stable)}
            fam_cfgs = [c for c in stable if c[0] == fam]
            best_fam = min(fam_cfgs, key=lambda c: truth[c][0])
            true_rank = sorted(stable, key=lambda c: truth[c][0]).index(best_fam) + 1
            pred_rank = sorted(stable, key=lambda c: pred[c]).index(min(fam_cfgs, key=lambda c: pred[c])) + 1
            ev = evaluate_predictions(pred, truth, tasks, per_seed)
            entry[pname] = {"family_best_true_rank": true_rank, "family_best_pred_rank": pred_rank,
                            "hit_all": ev["tasks"]["all held-out"]["issue"],
                            "hit_all_centered": ev["tasks"]["all held-out"]["centered"],
                            "hit_all_strict": ev["tasks"]["all held-out"]["strict"], "pick": ev["tasks"]["all held-out"]["top2"][0],
                            "spearman": ev["spearman"]}
        results["out_of_family"][fam] = entry
    res_doc = {
        "settings": {"seeds": args.seeds, "steps": args.steps, "eval_every": args.eval_every, "quick": args.quick,
                     "model_overrides": MODEL, "families": FAMILIES, "grids": {k: [config_name(*c) for c in v]
                                                                             for k, v in g.items()},
                     "bootstrap": {"features": args.bootstrap, "mpl": args.mpl_bootstrap}, "split_seed": SPLIT_SEED},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "date": datetime.datetime.now().isoformat(timespec="seconds")},
        "mpl_fit_for_schedules": mpl_fit,
        "truth": {config_name(*c): {"mean": m, "std": s, "n": n} for c, (m, s, n) in truth.items()},
        "diverged_runs": {r.name: r.reason for rs in list(fit_recs.values()) + list(div_recs.values())
                          + list(all_held.values()) for r in rs if r.diverged},
        **results,
        "runtime_s": {"total": time.time() - t_start, "training_stage": t_train, "main_fit": t_fit},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res_doc, f, indent=1, default=str)
    print()
    print(tables(res_doc))
    print(f"\nruntime {res_doc['runtime_s']['total']:.0f} s; wrote {args.json}")
    return 0


def tables(res: dict) -> str:
    preds = list(res["predictors"])
    lines = ["### Held-out configurations: true final validation loss (mean +- std of the seeds) and predictions", "",
             "| configuration | true | " + " | ".join(f"{p} predicted +- bootstrap std (P(best))" for p in preds) + " |",
             "|---|---:|" + "---:|" * len(preds)]
    some = res["predictors"][preds[0]]["per_config"]
    for name in sorted(some, key=lambda n: some[n]["true_mean"] if some[n]["true_mean"] is not None else 1e9):
        t = some[name]
        row = f"| {name} | {t['true_mean']:.4f} +- {t['true_std']:.4f} |"
        for p in preds:
            d = res["predictors"][p]["per_config"][name]
            row += f" {d['pred']:.4f} +- {d['std']:.4f} ({d['p_best']:.2f}) |"
        lines.append(row)
    lines += ["", "### Top-2 hit: issue criterion (one seed spread) / seed-centered spread / strict (best in the top 2)", "",
              "| task | " + " | ".join(preds) + " |", "|---|" + "---|" * len(preds)]

    def yn(x):
        return "hit" if x else "miss"

    for task in res["predictors"][preds[0]]["tasks"]:
        row = f"| {task} |"
        for p in preds:
            d = res["predictors"][p]["tasks"][task]
            row += (f" {yn(d['issue'])} / {yn(d['centered'])} / {yn(d['strict'])} (top2 {', '.join(d['top2'])}; best "
                    f"{d['best']}; gap {d['gap']:.4f}, spread {d['spread']:.4f}, centered {d['centered_spread']:.4f}) |")
        lines.append(row)
    row = "| every 5-configuration subset of the held-out set: hit rate |"
    for p in preds:
        v = res["predictors"][p]["subsets5"]
        row += f" {v['issue']:.1%} / {v['centered']:.1%} / {v['strict']:.1%} of {v['n']} |"
    lines.append(row)
    for key, label in (("spearman", "Spearman rank correlation, all held-out"), ("mae", "mean abs error of the final loss")):
        lines.append(f"| {label} |" + "".join(f" {res['predictors'][p][key]:.3f} |" for p in preds))
    lines += ["", "### Out-of-family: fit without one family, rank its held-out configurations among all", "",
              "| family left out | " + " | ".join(f"{p}: its best's predicted / true rank, pick, hit (issue / centered / strict)" for p in preds) + " |",
              "|---|" + "---|" * len(preds)]
    for fam, e in res["out_of_family"].items():
        if "error" in e:
            lines.append(f"| {fam} | {e['error']} |")
            continue
        lines.append(f"| {fam} |" + "".join(
            f" {e[p]['family_best_pred_rank']} / {e[p]['family_best_true_rank']}, {e[p]['pick']}, "
            f"{yn(e[p]['hit_all'])} / {yn(e[p]['hit_all_centered'])} / {yn(e[p]['hit_all_strict'])} |" for p in preds))
    d = res["divergence"]
    lines += ["", "### Divergence flag on the held-out configurations", "", f"rule: {d['rule']}", "",
              "| | F1 | precision | recall | tp / fp / fn / tn |", "|---|---:|---:|---:|---|"]
    names = {"per_config": "per configuration (label: most seeds diverged, >= 2 of 3; flag: P > 0.5)",
             "per_config_any": f"per configuration (label: any seed diverged; flag: P > {d.get('per_config_any', {}).get('threshold', 0):.3f})",
             "per_run": "per run (flag: P > 0.5)"}
    for k in [k for k in names if k in d]:
        v = d[k]
        lines.append(f"| {names[k]} | {v['f1']:.2f} | {v['precision']:.2f} | {v['recall']:.2f} | "
                     f"{v['tp']} / {v['fp']} / {v['fn']} / {v['tn']} |")
    wrong = [f"{n} (label {'div' if c['label'] else 'ok'}, p {c['p']:.2f}, {c['runs_diverged']} runs diverged)"
             for n, c in d["configs"].items() if c["label"] != c["flag"]]
    lines += ["", "misclassified: " + (", ".join(wrong) if wrong else "none")]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
