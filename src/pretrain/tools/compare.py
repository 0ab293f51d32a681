"""Compare runs without an account: one self-contained HTML report (interactive plotly plots, the JS inlined, no
network needed to view it) and static PNGs beside it.

    python -m pretrain.tools.compare runs/cos runs/wsd runs/lion [--out report.html] [--log-x]
    python -m pretrain.tools.compare 'runs/bench_sample_efficiency/runs/*_s0' --out se.html --mpl params.json

Panels: validation and training loss vs tokens (log-x toggle), lr, gradient norm (before clipping), clip fraction,
tokens/s and, where any run logged them, MFU, the gradient noise scale and the batch size, vs step. A table of
final metrics sorted by final validation loss (runs without one last), with the config keys that differ between
the runs as highlighted columns (the keys all runs share are listed below it). Multi-Power Law: with `--mpl
FILE` (a fit from `python -m pretrain.tools.mpl fit --out`, or a schedule file holding `params`) every run's
predicted validation loss is drawn beside its measured one; a run trained with `schedule=mpl` gets its schedule
file's law without `--mpl`. PNGs: `<out stem>_png/<panel>.png` (matplotlib).

Runs still being written (a partial last line, no config.yaml yet) and runs from older versions with missing
keys are loaded and shown: what is missing is a dash in the table and a note, never an error. A directory
without metrics.jsonl is listed as skipped. Arguments are run directories (or their metrics.jsonl); quoted
globs are expanded here.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import html
import json
import math
import os
import sys
from dataclasses import dataclass, field

# (id, title, y key, x key, row kind); panels nobody logged are left out (and named in the report)
PANELS = [
    ("val_loss", "Validation loss vs tokens", "val_loss", "tokens", "eval"),
    ("loss", "Training loss vs tokens", "loss", "tokens", "train"),
    ("lr", "Learning rate vs step", "lr", "step", "train"),
    ("grad_norm", "Gradient norm (before clipping) vs step", "grad_norm", "step", "train"),
    ("clip_fraction", "Clip fraction (last 100 steps) vs step", "clip_fraction", "step", "train"),
    ("tokens_per_s", "Throughput (tokens/s) vs step", "tokens_per_s", "step", "train"),
    ("mfu", "MFU vs step", "mfu", "step", "train"),
    ("b_noise", "Gradient noise scale B_simple (tokens) vs step", "b_noise", "step", "train"),
    ("batch_size", "Batch size (sequences) vs step", "batch_size", "step", "train"),
]
# the table's metric columns: (summary key, header, format)
COLUMNS = [("final_val_loss", "final val loss", "{:.4f}"), ("best_val_loss", "best val loss", "{:.4f}"),
           ("final_train_loss", "train loss (last 10 rows)", "{:.4f}"), ("steps", "steps", "{:d}"),
           ("tokens", "tokens", "{:,}"), ("tokens_per_s", "tokens/s (median)", "{:,.0f}"),
           ("mfu", "MFU", "{:.1%}"), ("clip_fraction", "clip fraction", "{:.2f}"),
           ("mpl_final", "MPL predicted final", "{:.4f}"), ("steps_to_target", "steps to target", "{:d}")]
IGNORED_KEYS = ("run_dir", "resume", "log.run_name", "notes")  # differ between any two runs; not a setting
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]


@dataclass
class RunData:
    path: str
    name: str
    rows: list = field(default_factory=list)
    config: dict = field(default_factory=dict)  # flattened: "optim.name" -> value
    notes: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    mpl: dict | None = None  # {"steps": [...], "tokens": [...], "loss": [...], "source": path}

    def series(self, key: str, x: str, kind: str):
        pts = [(r.get(x), r.get(key)) for r in self.rows if r.get("kind", "train") == kind]
        pts = [(a, b) for a, b in pts if _num(a) and _num(b)]
        return [a for a, _ in pts], [b for _, b in pts]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def flatten(d, prefix: str = "") -> dict:
    """{"optim": {"name": "adamw"}} -> {"optim.name": "adamw"}; lists become their JSON text."""
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def read_rows(path: str) -> tuple[list[dict], int]:
    """Rows of a metrics.jsonl, last write winning per (step, kind), by step; lines that do not parse (a run
    still writing its last line) are skipped and counted."""
    rows, bad = {}, 0
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(r, dict) and _num(r.get("step")):
                rows[(r["step"], r.get("kind", "train"))] = r
            else:
                bad += 1
    return sorted(rows.values(), key=lambda r: (r["step"], r.get("kind", "train"))), bad


def load_run(path: str) -> RunData | str:
    """A RunData, or the reason it cannot be shown (a string)."""
    run_dir = os.path.dirname(path) if os.path.basename(path) == "metrics.jsonl" else path
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(metrics):
        return f"{run_dir}: no metrics.jsonl (not a run directory, or not started)"
    name = os.path.basename(os.path.normpath(run_dir))
    rows, bad = read_rows(metrics)
    run = RunData(run_dir, name, rows)
    if bad:
        run.notes.append(f"{bad} unreadable line(s) skipped (still being written?)")
    cfg_path = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(cfg_path):
        try:
            import yaml
            with open(cfg_path) as f:
                run.config = flatten(yaml.safe_load(f) or {})
        except Exception as e:  # a half-written or foreign file: show the run anyway
            run.notes.append(f"config.yaml unreadable ({type(e).__name__})")
    else:
        run.notes.append("no config.yaml")
    missing = [k for k in ("tokens", "loss", "lr", "grad_norm", "tokens_per_s")
               if not any(_num(r.get(k)) for r in rows if r.get("kind", "train") == "train")]
    if missing:
        run.notes.append("not logged: " + ", ".join(missing))
    per_step = _tokens_per_step(run.config)
    for r in rows:  # older runs: tokens from the step and the config
        if not _num(r.get("tokens")) and per_step:
            r["tokens"] = r["step"] * per_step
    if not any(_num(r.get("val_loss")) for r in rows):
        run.notes.append("no validation loss yet")
    return run


def _tokens_per_step(config: dict) -> int | None:
    b, t = config.get("train.global_batch_size"), config.get("train.seq_len")
    return b * t if isinstance(b, int) and isinstance(t, int) else None


def expand(paths) -> list[str]:
    out = []
    for p in paths:
        hits = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
        out += hits or [p]
    return list(dict.fromkeys(out))


def mpl_prediction(run: RunData, params, source: str) -> dict | None:
    """The law's predicted validation loss over the run's logged steps (lrs as the MPL fit reads them)."""
    import numpy as np

    from pretrain.schedules.mpl import load_runs_from_metrics, predict
    try:
        r = load_runs_from_metrics([run.path], key="val_loss")[0]
    except (ValueError, FileNotFoundError) as e:
        run.notes.append(f"no MPL prediction: {e}")
        return None
    T = r.lrs.size
    if T <= max(r.warmup_steps, 1):
        return None
    at = np.unique(np.linspace(max(r.warmup_steps, 1), T - 1, min(200, T)).round().astype(int))
    loss = predict(params, r.lrs, r.warmup_steps, at_steps=at)
    per_step = _tokens_per_step(run.config)
    return {"steps": at.tolist(), "tokens": [int(s) * per_step for s in at] if per_step else None,
            "loss": [float(v) for v in loss], "source": source}


def attach_mpl(runs: list[RunData], files: list[str]) -> None:
    from pretrain.schedules.mpl import MPLParams
    given = [(MPLParams.from_json(f), f) for f in files]
    for run in runs:
        params = given[-1] if given else None
        if params is None and run.config.get("schedule.name") == "mpl":
            path = run.config.get("schedule.path")
            try:
                params = (MPLParams.from_json(path), path)
            except Exception:  # no file here, or a schedule file without params: nothing to draw
                run.notes.append(f"MPL schedule file {path!r} has no readable law")
        if params is not None:
            run.mpl = mpl_prediction(run, *params)
            if run.mpl:
                run.summary["mpl_final"] = run.mpl["loss"][-1]


def differing_keys(runs: list[RunData]) -> tuple[list[str], dict]:
    """(config keys whose values differ between runs, {key: value} of those all runs share)."""
    known = [r for r in runs if r.config]  # a run without config.yaml (yet) differs in nothing known
    keys = sorted({k for r in known for k in r.config} - set(IGNORED_KEYS))
    diff, same = [], {}
    for k in keys:
        values = {json.dumps(r.config.get(k, "<missing>"), sort_keys=True, default=str) for r in known}
        if len(values) > 1:
            diff.append(k)
        else:
            same[k] = known[0].config.get(k)
    return diff, same


def sort_runs(runs: list[RunData]) -> list[RunData]:
    """By final validation loss; runs without one last (by name)."""
    return sorted(runs, key=lambda r: (r.summary.get("final_val_loss") is None,
                                       r.summary.get("final_val_loss") or 0.0, r.name))


def _fmt(value, spec: str) -> str:
    if value is None:
        return "&ndash;"
    try:
        return html.escape(spec.format(value))
    except (ValueError, TypeError):
        return html.escape(str(value))


def _status(run: RunData) -> str:
    total = run.config.get("train.steps")
    last = run.summary.get("steps")
    if last is None:
        return "no steps yet"
    if isinstance(total, int):
        return "complete" if last >= total else f"partial: step {last} of {total}"
    return f"step {last}"


def figures(runs: list[RunData], log_x: bool) -> tuple[list[dict], list[str]]:
    """plotly figure dicts (scatter: SVG) for each panel someone logged, and the names of the empty panels."""
    figs, empty = [], []
    for pid, title, key, x, kind in PANELS:
        traces = []
        for i, run in enumerate(runs):
            xs, ys = run.series(key, x, kind)
            if xs:
                traces.append({"type": "scatter", "mode": "lines+markers" if kind == "eval" else "lines",
                               "name": run.name, "x": xs, "y": ys, "line": {"color": COLORS[i % len(COLORS)]},
                               "marker": {"size": 5}})
        if not traces:
            empty.append(key)
            continue
        figs.append(_figure(pid, title, x, key, traces, log_x and x == "tokens"))
    mpl = []
    for i, run in enumerate(runs):
        if run.mpl:
            color = COLORS[i % len(COLORS)]
            xs, ys = run.series("val_loss", "step", "eval")
            mpl.append({"type": "scatter", "mode": "markers", "name": f"{run.name} measured", "x": xs, "y": ys,
                        "marker": {"color": color, "size": 6}})
            mpl.append({"type": "scatter", "mode": "lines", "name": f"{run.name} MPL", "x": run.mpl["steps"],
                        "y": run.mpl["loss"], "line": {"color": color, "dash": "dash"}})
    if mpl:
        figs.append(_figure("mpl", "Multi-Power Law: predicted (dashed) and measured validation loss", "step",
                            "val_loss", mpl, False))
    return figs, empty


def _figure(pid, title, x, y, traces, log_x) -> dict:
    return {"id": pid, "data": traces, "layout": {
        "title": {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 14}}, "height": 420, "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "xaxis": {"title": {"text": x}, "type": "log" if log_x else "linear"},
        "yaxis": {"title": {"text": y}, "type": "log" if y == "b_noise" else "linear"},
        "legend": {"font": {"size": 10}}, "hovermode": "closest"}}


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td.name, th.name { text-align: left; }
.differs { background: #fff3bf; } th.differs { background: #ffe066; }
.notes { color: #a33; font-size: 12px; text-align: left; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 10px; }
.plot { border: 1px solid #eee; min-height: 420px; }
"""

SCRIPT = """
const REPORT = JSON.parse(document.getElementById('report-data').textContent);
for (const fig of REPORT.figures) {
  Plotly.newPlot('plot-' + fig.id, fig.data, fig.layout, {responsive: true, displaylogo: false});
}
document.getElementById('log-x').addEventListener('change', (e) => {
  for (const fig of REPORT.figures) {
    if (fig.layout.xaxis.title.text === 'tokens')
      Plotly.relayout('plot-' + fig.id, {'xaxis.type': e.target.checked ? 'log' : 'linear'});
  }
});
"""


def render_html(runs: list[RunData], skipped: list[str], title: str, log_x: bool) -> str:
    from plotly.offline import get_plotlyjs

    diff, same = differing_keys(runs)
    figs, empty = figures(runs, log_x)
    head = ["<th class='name'>run</th>", "<th>status</th>"]
    head += [f"<th>{html.escape(h)}</th>" for k, h, _ in COLUMNS if any(r.summary.get(k) is not None for r in runs)]
    shown = [(k, f) for k, _, f in COLUMNS if any(r.summary.get(k) is not None for r in runs)]
    head += [f"<th class='differs'>{html.escape(k)}</th>" for k in diff]
    body = []
    for run in runs:
        cells = [f"<td class='name' title='{html.escape(run.path)}'>{html.escape(run.name)}</td>",
                 f"<td>{html.escape(_status(run))}</td>"]
        cells += [f"<td>{_fmt(run.summary.get(k), f)}</td>" for k, f in shown]
        cells += [f"<td class='differs'>{_fmt(run.config.get(k), '{}')}</td>" for k in diff]
        cells.append(f"<td class='notes'>{html.escape('; '.join(run.notes))}</td>")
        body.append(f"<tr data-run='{html.escape(run.name)}'>{''.join(cells)}</tr>")
    shared = "".join(f"<tr><td class='name'>{html.escape(k)}</td><td class='name'>{_fmt(v, '{}')}</td></tr>"
                     for k, v in same.items())
    data = {"title": title, "generated": datetime.datetime.now().isoformat(timespec="seconds"),
            "order": [r.name for r in runs], "differing_keys": diff, "figures": figs,
            "runs": [{"name": r.name, "path": r.path, "summary": r.summary, "notes": r.notes,
                      "config": {k: r.config.get(k) for k in diff}} for r in runs], "skipped": skipped}
    blob = json.dumps(data, default=str).replace("</", "<\\/")
    notes = []
    if skipped:
        notes.append("Skipped: " + "; ".join(html.escape(s) for s in skipped))
    if empty:
        notes.append("Not logged by any run: " + ", ".join(empty))
    plots = "".join(f"<div class='plot' id='plot-{f['id']}'></div>" for f in figs)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style>
<script>{get_plotlyjs()}</script></head>
<body><h1>{html.escape(title)}</h1>
<p>{len(runs)} runs, sorted by final validation loss; generated {data['generated']} by
<code>python -m pretrain.tools.compare</code>. Highlighted columns: config keys that differ between the runs.</p>
<table id="runs-table"><thead><tr>{''.join(head)}<th class='name'>notes</th></tr></thead>
<tbody>{''.join(body)}</tbody></table>
<details><summary>{len(same)} config keys shared by all runs</summary><table id="shared-config">{shared}</table>
</details>
<p class="notes">{'<br>'.join(notes)}</p>
<p><label><input type="checkbox" id="log-x"{' checked' if log_x else ''}> log-scale tokens axis</label></p>
<div class="plots">{plots}</div>
<script type="application/json" id="report-data">{blob}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def write_pngs(runs: list[RunData], out_dir: str, log_x: bool) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    written = []
    for pid, title, key, x, kind in PANELS + [("mpl", "Multi-Power Law: predicted (dashed) and measured "
                                                      "validation loss", "val_loss", "step", "eval")]:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        drawn = False
        for i, run in enumerate(runs):
            if pid == "mpl" and not run.mpl:
                continue
            xs, ys = run.series(key, x, kind)
            if not xs:
                continue
            color = COLORS[i % len(COLORS)]
            ax.plot(xs, ys, "o-" if kind == "eval" and pid != "mpl" else ("o" if pid == "mpl" else "-"),
                    color=color, label=run.name, markersize=3, linewidth=1.2)
            if pid == "mpl":
                ax.plot(run.mpl["steps"], run.mpl["loss"], "--", color=color, label=f"{run.name} MPL")
            drawn = True
        if drawn:
            ax.set(title=title, xlabel=x, ylabel=key)
            if log_x and x == "tokens":
                ax.set_xscale("log")
            if key == "b_noise":
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = os.path.join(out_dir, f"{pid}.png")
            fig.savefig(path, dpi=130)
            written.append(path)
        plt.close(fig)
    return written


def build_report(paths, out: str = "report.html", *, log_x: bool = False, mpl=(), png_dir: str | None = None,
                 title: str | None = None, target: float | None = None, pngs: bool = True) -> dict:
    """Load the runs, write the HTML (and PNGs); returns {"runs": [names in table order], "skipped", "html",
    "pngs"}. Raises SystemExit when no argument is a run."""
    from pretrain.tracking import run_summary

    runs, skipped = [], []
    for p in expand(paths):
        loaded = load_run(p)
        (skipped.append(loaded) if isinstance(loaded, str) else runs.append(loaded))
    if not runs:
        raise SystemExit("no run to compare: " + ("; ".join(skipped) or "no paths given"))
    names = [r.name for r in runs]
    for r in runs:  # two runs/<x>/seed0 directories: name them by their parent too
        if names.count(r.name) > 1:
            r.name = os.path.join(os.path.basename(os.path.dirname(os.path.normpath(r.path))), r.name)
    for r in runs:
        r.summary = run_summary(r.rows, target=target)
    attach_mpl(runs, list(mpl))
    runs = sort_runs(runs)
    title = title or f"Run comparison: {len(runs)} runs"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(render_html(runs, skipped, title, log_x))
    written = []
    if pngs:
        png_dir = png_dir or os.path.splitext(out)[0] + "_png"
        written = write_pngs(runs, png_dir, log_x)
    return {"runs": [r.name for r in runs], "skipped": skipped, "html": out, "pngs": written}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pretrain.tools.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (or metrics.jsonl files); quoted globs are expanded")
    ap.add_argument("--out", default="report.html", help="the HTML file (default report.html)")
    ap.add_argument("--png-dir", help="where the PNGs go (default: <out stem>_png)")
    ap.add_argument("--no-png", action="store_true", help="HTML only")
    ap.add_argument("--log-x", action="store_true", help="start with a log-scale tokens axis (a checkbox toggles it)")
    ap.add_argument("--mpl", action="append", default=[], metavar="PARAMS_JSON",
                    help="Multi-Power-Law parameters (mpl fit --out, or a schedule file): predicted curves")
    ap.add_argument("--target", type=float, help="a validation loss: the table adds steps to reach it")
    ap.add_argument("--title")
    args = ap.parse_args(argv)
    res = build_report(args.runs, args.out, log_x=args.log_x, mpl=args.mpl, png_dir=args.png_dir,
                       title=args.title, target=args.target, pngs=not args.no_png)
    for s in res["skipped"]:
        print(f"skipped {s}", file=sys.stderr)
    print(f"wrote {res['html']} ({len(res['runs'])} runs: {', '.join(res['runs'])})")
    if res["pngs"]:
        print(f"wrote {len(res['pngs'])} PNGs in {os.path.dirname(res['pngs'][0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
