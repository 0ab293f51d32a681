"""Create a W&B report that compares the runs of a project by recipe, through the public W&B Reports API.

    pip install wandb-workspaces                # the W&B Report and Workspace API (not needed to train)
    wandb login                                 # an account
    python -m pretrain.tools.wandb_report PROJECT [--entity TEAM] [--title T] [--group-by group] [--dry-run]

Runs logged with `log.wandb=true` carry group = recipe, job_type (train / sweep / coordcheck / bench), flat config
keys (optimizer, schedule_name, width, depth, batch, batch_tokens, lr, parametrization) and summary metrics
(final_val_loss, best_val_loss, final_train_loss, tokens, tokens_per_s, mfu, clip_fraction, steps_to_target),
see `pretrain.tracking`. The report holds one panel grid over the project's runs, grouped by `--group-by`
(default the W&B group, i.e. the recipe; e.g. `config.optimizer`), ordered by final validation loss: validation
and training loss vs tokens, lr, gradient norm, clip fraction, tokens/s, MFU vs step, the final validation loss
per run, a parallel-coordinates plot (optimizer, lr, width, depth, batch -> final validation loss) and a run
comparer showing the config keys that differ. `--dry-run` prints the spec without an account.

Offline runs (`WANDB_MODE=offline`, the tests and benchmarks) are uploaded later with
`wandb sync <run_dir>/wandb/offline-run-*` and then appear in the report.
"""
from __future__ import annotations

import argparse
import json
import sys

LINES = [  # (title, x, y, log_x)
    ("Validation loss vs tokens", "tokens", "val_loss", True),
    ("Training loss vs tokens", "tokens", "loss", True),
    ("Learning rate", "Step", "lr", False),
    ("Gradient norm (before clipping)", "Step", "grad_norm", False),
    ("Clip fraction (last 100 steps)", "Step", "clip_fraction", False),
    ("Throughput (tokens/s)", "Step", "tokens_per_s", False),
    ("MFU", "Step", "mfu", False),
]
PARALLEL = ["optimizer", "lr", "width", "depth", "batch"]  # config keys (tracking.wandb_config) -> final val loss
SUMMARY = "final_val_loss"


def report_spec(project: str, entity: str | None = None, title: str | None = None, group_by: str = "group") -> dict:
    """What the report holds, as plain data (what `create_report` sends; `--dry-run` prints it)."""
    return {
        "project": project, "entity": entity, "title": title or f"{project}: runs by recipe",
        "description": "Created by python -m pretrain.tools.wandb_report",
        "runset": {"name": "all runs", "groupby": [group_by] if group_by else [],
                   "order": {"summary": SUMMARY, "ascending": True}},
        "panels": [{"type": "line", "title": t, "x": x, "y": [y], "log_x": lx} for t, x, y, lx in LINES]
        + [{"type": "bar", "title": "Final validation loss", "metrics": [SUMMARY]},
           {"type": "parallel", "title": "Settings -> final validation loss",
            "config": PARALLEL, "summary": [SUMMARY]},
           {"type": "comparer", "diff_only": "split"}],
    }


def create_report(spec: dict, wr, save: bool = True):
    """Build the report from `spec` with the Reports API module `wr` (wandb_workspaces.reports.v2) and save it."""
    panels = []
    for p in spec["panels"]:
        if p["type"] == "line":
            panels.append(wr.LinePlot(title=p["title"], x=p["x"], y=p["y"], log_x=p["log_x"]))
        elif p["type"] == "bar":
            panels.append(wr.BarPlot(title=p["title"], metrics=[wr.SummaryMetric(m) for m in p["metrics"]]))
        elif p["type"] == "parallel":
            cols = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(c)) for c in p["config"]]
            cols += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(s)) for s in p["summary"]]
            panels.append(wr.ParallelCoordinatesPlot(title=p["title"], columns=cols))
        elif p["type"] == "comparer":
            panels.append(wr.RunComparer(diff_only=p["diff_only"]))
        else:
            raise ValueError(f"unknown panel type {p['type']!r}")
    rs = spec["runset"]
    runset_kw = {"project": spec["project"], "name": rs["name"], "groupby": rs["groupby"],
                 "order": [wr.OrderBy(name=wr.SummaryMetric(rs["order"]["summary"]),
                                      ascending=rs["order"]["ascending"])]}
    report_kw = {"project": spec["project"], "title": spec["title"], "description": spec["description"]}
    if spec["entity"]:
        runset_kw["entity"] = report_kw["entity"] = spec["entity"]
    report = wr.Report(**report_kw, blocks=[
        wr.H1(text=spec["title"]),
        wr.P(text="Runs grouped by " + (", ".join(rs["groupby"]) or "run") + ", ordered by final validation loss."),
        wr.PanelGrid(runsets=[wr.Runset(**runset_kw)], panels=panels)])
    if save:
        report.save()
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain.tools.wandb_report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project")
    ap.add_argument("--entity", help="team or user (default: the API's default entity)")
    ap.add_argument("--title")
    ap.add_argument("--group-by", default="group", help="group (the recipe, default), config.optimizer, ...")
    ap.add_argument("--dry-run", action="store_true", help="print the report spec; needs no account")
    args = ap.parse_args(argv)
    spec = report_spec(args.project, args.entity, args.title, args.group_by)
    if args.dry_run:
        print(json.dumps(spec, indent=1))
        return 0
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        raise SystemExit("the W&B Reports API is not installed: pip install wandb-workspaces (and wandb login); "
                         "or compare locally without an account: python -m pretrain.tools.compare RUN_DIR ...")
    report = create_report(spec, wr)
    print(f"report created: {getattr(report, 'url', '') or spec['title']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
