"""Pick the schedule before the big run: rank a candidate grid from a handful of small runs.

    python -m pretrain.tools.preselect --runs runs/small/* --candidates recipes/preselect/grid_tiny.yaml \\
        [--div-runs runs/hot/*] [--out runs/preselect] [--select features|mpl] [--bootstrap-mpl 8]

--runs: run directories (config.yaml + metrics.jsonl, validation every few steps) of one model, optimizer and
token budget; folders of run directories are expanded. Both predictors of `pretrain.preselect` are fitted on the
runs that did not diverge: the Multi-Power Law and the feature regression (this project's reading of Opt-Laws).
--div-runs: runs only the divergence rule sees (e.g. at lrs far above the useful range). The runs that diverged
(either list) teach the divergence flag.
Writes to --out: table.md (both predictors side by side: predicted final loss, bootstrap std, 5-95% interval,
P(best), rank; divergence probability), results.json, curves.png (predicted curves of the top candidates), the
winner's recipe winner.yaml (chosen by --select among the candidates not flagged), and the mpl family's
schedule files.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pretrain.errors import ConfigError
from pretrain.preselect import expand_run_dirs, load_runs, parse_grid, preselect


def table(res: dict, predictors) -> str:
    cands = res["candidates"]
    head = "| rank | candidate | family | peak lr | warmup |"
    sep = "|---:|---|---|---:|---:|"
    for p in predictors:
        head += f" {p}: predicted loss +- std [5%, 95%] | {p}: P(best) | {p}: rank |"
        sep += "---|---:|---:|"
    head += " P(diverge) |"
    sep += "---:|"
    sel = res["select"]
    order = np.argsort(res["predictions"][sel]["rank"])
    lines = [head, sep]
    for i in order:
        c = cands[i]
        row = f"| {res['predictions'][sel]['rank'][i]} | {c.name} | {c.family} | {c.peak:g} | {c.warmup} |"
        for p in predictors:
            d = res["predictions"][p]
            row += (f" {d['mean'][i]:.4f} +- {d['std'][i]:.4f} [{d['lo'][i]:.4f}, {d['hi'][i]:.4f}] |"
                    f" {d['p_best'][i]:.2f} | {d['rank'][i]} |")
        row += f" {res['flag_prob'][i]:.2f}{' FLAGGED' if res['flagged'][i] else ''} |"
        lines.append(row)
    return "\n".join(lines)


def winner_recipe(res: dict, out: Path, schedule_files: dict) -> str:
    sel = res["select"]
    i = int(np.argmin(res["predictions"][sel]["rank"]))
    c = res["candidates"][i]
    if res["flagged"][i]:
        raise SystemExit("every candidate is flagged to diverge; no recipe written (lower the peak lrs)")
    sched = {"name": c.schedule, "warmup_steps": c.warmup, **c.kw}
    if c.schedule == "mpl":
        sched["path"] = str(schedule_files[c.name])
    ov = [f"schedule={c.schedule}", f"optim.lr={c.peak:g}"] + [f"schedule.{k}={v}" for k, v in sched.items() if k != "name"]
    d = res["predictions"][sel]
    lines = [
        "# @package _global_",
        (f"# Winner of `python -m pretrain.tools.preselect` (selected by the {sel} predictor among "
         f"{len(res['candidates'])} candidates): {c.name}"),
        (f"# predicted final loss {d['mean'][i]:.4f} +- {d['std'][i]:.4f} (bootstrap, {d['n_boot']} refits), "
         f"P(best) {d['p_best'][i]:.2f}; P(diverge) {res['flag_prob'][i]:.2f}"),
        (f"# small runs: {res['n_runs']} ({res['n_fit_runs']} fitted), {res['steps']} steps. The peak lr is the small "
         "runs'; transfer it (muP) before a larger model."),
        "# Use: copy to recipes/recipe/<name>.yaml and train with recipe=<name>, or pass the overrides:",
        "#   python train.py " + " ".join(ov),
        "defaults:",
        f"  - override /schedule: {c.schedule}",
        "optim:",
        f"  lr: {c.peak!r}",
        "schedule:",
    ]
    for k, v in sched.items():
        if k != "name":
            lines.append(f"  {k}: {json.dumps(v) if isinstance(v, str) else v}")
    lines += ["train:", f"  steps: {res['steps']}"]
    text = "\n".join(lines) + "\n"
    (out / "winner.yaml").write_text(text)
    return text


def plot(res: dict, out: Path, predictors, top: int = 6) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = res["select"]
    order = np.argsort(res["predictions"][sel]["rank"])[:top]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    T = res["steps"]
    for j, i in enumerate(order):
        c, col = res["candidates"][i], colors[j % len(colors)]
        if "mpl" in res["fits"]:
            t, y = res["fits"]["mpl"].curve(res["lrs"][c.name], c.warmup)
            keep = t >= max(c.warmup, int(0.1 * T))
            ax.plot(t[keep], y[keep], "-", color=col, label=f"{c.name} (MPL curve)")
            boot = res["predictions"]["mpl"]
            if boot["n_boot"] > 1:
                ax.errorbar([T + 1], [boot["mean"][i]], yerr=[[boot["mean"][i] - boot["lo"][i]],
                            [boot["hi"][i] - boot["mean"][i]]], fmt="o", color=col, ms=3, capsize=2)
        if "features" in predictors:
            d = res["predictions"]["features"]
            ax.errorbar([T + 3 + j * 0.5], [d["mean"][i]], yerr=[[d["mean"][i] - d["lo"][i]], [d["hi"][i] - d["mean"][i]]],
                        fmt="s", color=col, ms=4, capsize=2, label=f"{c.name} (features, final)")
    ax.set_xlabel("step")
    ax.set_ylabel("predicted validation loss")
    ax.set_title(f"Predicted curves of the top {len(order)} candidates (by {sel}); bars: bootstrap 5-95%")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args) -> dict:
    candidates, opts = parse_grid(args.candidates)  # the grid is checked before any run is read or fitted
    predictors = [p.strip() for p in args.predictors.split(",") if p.strip()]
    for p in predictors:
        if p not in ("mpl", "features"):
            raise ConfigError("predictors", f"unknown predictor {p!r}", ["mpl", "features"], got=p)
    if args.select not in predictors:
        raise ConfigError("select", f"{args.select!r} is not among --predictors", predictors, got=args.select)
    runs = load_runs(expand_run_dirs(args.runs))
    div_runs = load_runs(expand_run_dirs(args.div_runs)) if args.div_runs else []
    res = preselect(runs, candidates, div_runs, predictors=predictors, mpl_opts=opts["mpl"], steps=opts["steps"],
                    bootstrap={"mpl": args.bootstrap_mpl, "features": args.bootstrap_features}, seed=args.seed,
                    mpl_fit={"restarts": args.mpl_restarts, "steps": args.mpl_steps})
    res["select"] = args.select
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for c in candidates:
        if c.schedule == "mpl":
            from pretrain.schedules.mpl import save_schedule
            files[c.name] = save_schedule(out / "mpl_schedules" / f"{c.name}.json", res["lrs"][c.name],
                                          {"peak_lr": c.peak, "warmup_steps": c.warmup, "params": res["mpl_params"]})
    for r in runs + div_runs:
        if r.diverged:
            print(f"diverged: {r.name}: {r.reason}")
    print(f"{len(runs)} runs ({res['n_fit_runs']} fitted), {len(div_runs)} divergence-only runs, {len(candidates)} "
          f"candidates, {res['steps']} steps")
    for name, model in res["fits"].items():
        print(f"{name}: {model.describe()}")
    print(f"divergence rule: {res['rule'].describe()}")
    text = table(res, predictors)
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(winner_recipe(res, out, files))
    print(f"wrote {plot(res, out, predictors)}")
    doc = {"select": args.select, "steps": res["steps"], "runs": [r.name for r in runs],
           "div_runs": [r.name for r in div_runs], "rule": res["rule"].describe(),
           "fits": {n: m.describe() for n, m in res["fits"].items()},
           "candidates": [{"name": c.name, "family": c.family, "schedule": c.schedule, "kw": c.kw, "peak_lr": c.peak,
                           "warmup_steps": c.warmup, "p_diverge": float(res["flag_prob"][i]),
                           "flagged": bool(res["flagged"][i]),
                           **{p: {k: float(res["predictions"][p][k][i]) for k in ("mean", "std", "lo", "hi", "p_best", "rank")}
                              for p in predictors}} for i, c in enumerate(candidates)]}
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'winner.yaml'}")
    return res


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pretrain.tools.preselect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, help="run directories (or folders of them) to fit")
    ap.add_argument("--candidates", required=True, help="candidate grid YAML (see recipes/preselect/)")
    ap.add_argument("--div-runs", nargs="*", default=[], help="runs only the divergence rule sees")
    ap.add_argument("--out", default="runs/preselect", help="output folder (default runs/preselect)")
    ap.add_argument("--predictors", default="mpl,features", help="comma-separated: mpl, features")
    ap.add_argument("--select", default="features", help="the predictor that picks the winner (default features)")
    ap.add_argument("--bootstrap-mpl", type=int, default=8, help="MPL bootstrap refits (default 8)")
    ap.add_argument("--bootstrap-features", type=int, default=200, help="feature-regression refits (default 200)")
    ap.add_argument("--mpl-restarts", type=int, default=3, help="MPL fit restarts (pretrain.schedules.mpl.fit)")
    ap.add_argument("--mpl-steps", type=int, default=400, help="MPL fit AdamW steps per restart")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
