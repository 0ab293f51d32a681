"""Multi-Power Law command line: fit the law to runs, predict a schedule's loss curve, optimize a schedule.

    python -m pretrain.tools.mpl fit --runs runs/const runs/cos [--heldout runs/wsd] --out params.json [--plot fit.png]
    python -m pretrain.tools.mpl predict --params params.json --schedule cosine --peak-lr 3e-4 --steps 24000 \\
        --kw warmup_steps=2160 [--kw min_lr_ratio=0.1] [--plot curve.png]
    python -m pretrain.tools.mpl optimize --params params.json --steps 24000 --peak-lr 3e-4 --warmup 2160 \\
        --out schedule.json [--plot schedule.png]

The optimized schedule is then trained with `schedule=mpl schedule.path=schedule.json`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pretrain.schedules.mpl.fit import fit, format_report, load_runs_from_metrics
from pretrain.schedules.mpl.law import MPLParams, predict
from pretrain.schedules.mpl.optimize import (compare_final, load_schedule, optimize_schedule, reference_schedules,
                                             save_schedule)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def parse_kw(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--kw expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def schedule_lrs(name: str, peak_lr: float, steps: int, kw: dict) -> tuple[np.ndarray, int | None]:
    """Per-step lrs of a registered schedule and its warmup_steps attribute (None if it has none).

    pretrain.schedules is imported lazily: only this command needs it."""
    from pretrain.schedules import build_schedule

    sched = build_schedule(name, peak_lr=peak_lr, total_steps=steps, **kw)
    warmup = getattr(sched, "warmup_steps", None)
    return np.array([sched(s) for s in range(steps)], dtype=np.float64), (int(warmup) if warmup is not None else None)


def read_lrs_file(path) -> tuple[np.ndarray, int | None]:
    """lrs from a schedule JSON file (save_schedule format), a .npy file, or a text file of numbers."""
    p = Path(path)
    if p.suffix == ".json":
        doc = load_schedule(p)
        return doc["lrs"], doc["warmup_steps"]
    if p.suffix == ".npy":
        return np.load(p).astype(np.float64).reshape(-1), None
    return np.loadtxt(p, dtype=np.float64).reshape(-1), None


def _plot(path, curves, title, ylabel, xlabel="step"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for c in curves:
        ax.plot(c["x"], c["y"], c.get("style", "-"), label=c["label"], **c.get("kw", {}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def cmd_fit(args) -> int:
    runs = load_runs_from_metrics(args.runs, key=args.key, smooth=args.smooth, warmup_steps=args.warmup)
    heldout = (load_runs_from_metrics(args.heldout, key=args.key, smooth=args.smooth, warmup_steps=args.warmup)
               if args.heldout else [])
    init = MPLParams.from_json(args.init) if args.init else None
    params, report = fit(runs, init=init, steps=args.steps, heldout=heldout or None, skip_fraction=args.skip_fraction,
                         max_points=args.max_points, restarts=args.restarts, verbose=args.verbose)
    print("fitted:", json.dumps(params.to_dict()))
    print(format_report(report["train"], f"train runs (skip_fraction={args.skip_fraction}):"))
    if heldout:
        print(format_report(report["heldout"], "held-out runs:"))
    if args.out:
        meta = {"fit": {"runs": [str(r) for r in args.runs], "heldout_runs": [str(r) for r in args.heldout or []],
                        "key": args.key, "smooth": args.smooth, "skip_fraction": args.skip_fraction,
                        "objective": report["objective"], "train": report["train"].get("all"),
                        "heldout": report.get("heldout", {}).get("all")}}
        params.to_json(args.out, **meta)
        print(f"wrote {args.out}")
    if args.plot:
        curves = []
        for tag, group in (("", runs), (" (held out)", heldout)):
            for r in group:
                t = np.arange(max(r.warmup_steps, 1), r.lrs.size)
                seen = r.steps >= max(r.warmup_steps, 1)  # the law does not model the warmup itself
                curves.append({"x": r.steps[seen], "y": r.losses[seen], "style": ".",
                               "label": f"{r.name}{tag} observed", "kw": {"markersize": 3, "alpha": 0.6}})
                curves.append({"x": t, "y": predict(params, r.lrs, r.warmup_steps, at_steps=t), "style": "-",
                               "label": f"{r.name}{tag} MPL"})
        _plot(args.plot, curves, "Multi-Power Law fit", args.key)
    return 0


def cmd_predict(args) -> int:
    params = MPLParams.from_json(args.params)
    kw = parse_kw(args.kw)
    if args.lrs_file:
        lrs, file_warmup = read_lrs_file(args.lrs_file)
        if args.peak_lr is not None and lrs.max() > 0:
            lrs = lrs * (args.peak_lr / lrs.max())
        label = str(args.lrs_file)
    else:
        if args.schedule is None or args.peak_lr is None or args.steps is None:
            raise SystemExit("predict needs --schedule NAME --peak-lr X --steps N (or --lrs-file FILE)")
        lrs, file_warmup = schedule_lrs(args.schedule, args.peak_lr, args.steps, kw)
        label = args.schedule
    if args.steps is not None and lrs.size != args.steps:
        raise SystemExit(f"the schedule has {lrs.size} steps but --steps is {args.steps}")
    if args.warmup is not None:
        warmup = args.warmup
    elif file_warmup is not None:  # the schedule's own warmup (its defaults included) or the file's
        warmup = file_warmup
    else:
        warmup = int(kw.get("warmup_steps", 0))
    T = lrs.size
    at = np.unique(np.linspace(max(warmup, 1), T - 1, min(args.points, T)).round().astype(int))
    pred = predict(params, lrs, warmup, at_steps=at)
    print(f"{label}: {T} steps, warmup {warmup}, peak lr {lrs.max():.4g}")
    show = np.unique(np.linspace(0, at.size - 1, min(11, at.size)).round().astype(int))
    for i in show:
        print(f"  step {at[i]:>8d}  lr {lrs[at[i]]:.4e}  predicted loss {pred[i]:.5f}")
    print(f"predicted final loss: {pred[-1]:.5f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"steps": at.tolist(), "loss": pred.tolist(),
                                              "lr": lrs[at].tolist(), "warmup_steps": warmup}) + "\n")
        print(f"wrote {args.out}")
    if args.plot:
        _plot(args.plot, [{"x": at, "y": pred, "label": f"{label} (MPL prediction)"}], "Multi-Power Law prediction",
              "predicted loss")
    return 0


def cmd_optimize(args) -> int:
    params = MPLParams.from_json(args.params)
    lrs = optimize_schedule(params, args.steps, args.peak_lr, args.warmup, min_lr=args.min_lr, iters=args.iters,
                            lr=args.lr, verbose=args.verbose)
    refs = reference_schedules(args.steps, args.peak_lr, args.warmup)
    finals = compare_final(params, {"optimized": lrs, **refs}, args.warmup)
    for name, v in finals.items():
        print(f"predicted final loss  {name:<10} {v:.5f}")
    below = np.flatnonzero(lrs[args.warmup:] < 0.999 * args.peak_lr)
    if below.size:
        print(f"optimized schedule holds the peak for {below[0] / (args.steps - args.warmup):.1%} of the post-warmup "
              f"steps, ends at {lrs[-1] / args.peak_lr:.3g} x peak")
    if args.out:
        save_schedule(args.out, lrs, {"peak_lr": args.peak_lr, "warmup_steps": args.warmup, "params": params,
                                      "min_lr": args.min_lr, "predicted_final_loss": finals})
        print(f"wrote {args.out}; train it with schedule=mpl schedule.path={args.out}")
    if args.plot:
        x = np.arange(args.steps)
        _plot(args.plot, [{"x": x, "y": lrs, "label": "MPL-optimized"},
                          {"x": x, "y": refs["cosine"], "style": "--", "label": "cosine (to 0.1 peak)"},
                          {"x": x, "y": refs["constant"], "style": ":", "label": "constant"}],
              "Schedule optimized under the Multi-Power Law", "learning rate")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pretrain.tools.mpl", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fit", help="fit the law to run directories (metrics.jsonl + config.yaml)")
    f.add_argument("--runs", nargs="+", required=True, help="run directories or metrics.jsonl files to fit")
    f.add_argument("--heldout", nargs="*", default=[], help="runs only evaluated, not fitted")
    f.add_argument("--out", help="write the fitted parameters (JSON)")
    f.add_argument("--key", default="val_loss", help="observed value: val_loss (default) or loss")
    f.add_argument("--smooth", type=int, default=None, help="centered moving average window (observations)")
    f.add_argument("--warmup", type=int, default=None, help="warmup steps (default: config.yaml schedule.warmup_steps)")
    f.add_argument("--skip-fraction", type=float, default=0.1, help="leave out this fraction of post-warmup steps")
    f.add_argument("--max-points", type=int, default=200, help="at most this many observations a run")
    f.add_argument("--steps", type=int, default=400, help="AdamW steps per restart")
    f.add_argument("--restarts", type=int, default=3)
    f.add_argument("--init", help="a params JSON to start from (instead of data-driven restarts)")
    f.add_argument("--plot", help="draw observed vs fitted curves to this PNG")
    f.add_argument("--verbose", action="store_true")
    f.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="predict the loss curve of a schedule")
    p.add_argument("--params", required=True)
    p.add_argument("--schedule", help="a registered schedule name (pretrain.schedules)")
    p.add_argument("--lrs-file", help="instead of --schedule: a schedule JSON, .npy or text file of per-step lrs")
    p.add_argument("--peak-lr", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--kw", action="append", default=[], metavar="KEY=VALUE", help="schedule keyword (repeatable)")
    p.add_argument("--warmup", type=int, default=None,
                   help="warmup steps (default: the schedule's warmup_steps, else the file's, else 0)")
    p.add_argument("--points", type=int, default=200, help="evaluate at this many steps")
    p.add_argument("--out", help="write the predicted curve (JSON)")
    p.add_argument("--plot", help="draw the predicted curve to this PNG")
    p.set_defaults(func=cmd_predict)

    o = sub.add_parser("optimize", help="optimize a schedule under fitted parameters")
    o.add_argument("--params", required=True)
    o.add_argument("--steps", type=int, required=True, help="total steps (warmup included), = train.steps")
    o.add_argument("--peak-lr", type=float, required=True)
    o.add_argument("--warmup", type=int, default=0)
    o.add_argument("--min-lr", type=float, default=1e-10)
    o.add_argument("--iters", type=int, default=5000, help="Adam iterations (the official code uses 10000)")
    o.add_argument("--lr", type=float, default=None, help="Adam lr on the decrements (default 0.5*peak/(steps-warmup))")
    o.add_argument("--out", help="write the schedule file (JSON) for schedule=mpl")
    o.add_argument("--plot", help="draw the schedule to this PNG")
    o.add_argument("--verbose", action="store_true")
    o.set_defaults(func=cmd_optimize)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
