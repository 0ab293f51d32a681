"""Instability diagnostics: is training at a higher lr unstable early (warmup would help), later (clipping would
help), or stable?

    python -m pretrain.tools.diagnose recipe=tiny train.steps=200 [overrides] [--out DIR] [--points 5] [--factor 2]
        [--lrs 1e-3,3e-3] [--multipliers 2,4] [--eval-every 10] [--spike-step N --spike-scale 1000]

1. A short lr sweep: the recipe at `--points` lrs spaced by `--factor` around its `optim.lr` (or `--lrs`); lr* is
   the lr with the lowest final loss (the median train loss of the last 10% of steps; a diverged run counts inf).
2. Probes: the recipe again at each `--multipliers` x lr* (default 2x and 4x), evaluated every `--eval-every`
   steps (`train.eval_every`), every step logged.
3. Each run's metrics rows go through `diagnose_run` (pure: rows in, verdict out), the verdicts of lr* and the
   probes through `combine`: `warmup` if one is unstable early, else `clipping` if one is unstable later, else
   `stable`. Plots in DIR: loss.png (train loss, and eval loss of the probes, per lr), grad_norm.png (the unclipped
   norm per step, the clip threshold), grad_norm_hist.png, clip_fraction.png; report.json holds everything.

Instability in a run's rows (thresholds in `Thresholds`): a loss spike (train loss above (1 + loss_rise) x the
median of the previous `window` losses, or eval loss above (1 + val_rise) x its lowest so far), a gradient-norm
spike (above grad_ratio x the median of the previous `window` norms), or divergence (a non-finite loss, or rows
that stop before train.steps: the loop stops at a non-finite loss). Its first event decides: at a step <=
`early_end(warmup_steps, steps)` = warmup + max(warmup, early_fraction x steps), i.e. before warmup ends or right
after, the run is unstable early ("warmup"); later it is "clipping" (the reason says whether the spikes were
isolated and the loss came back within `recovery_steps`).

`--spike-step N` plants a corrupted batch in every run: the loss, so the gradient, of optimizer step N (the row
with step N) is multiplied by `--spike-scale` (`planted_spike`, the mechanism of bench/clip_spike.py); it exists
to check the diagnosis on a case built to need clipping.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from ..errors import ConfigError, RunStopped, check_number, check_range

VERDICTS = ("stable", "warmup", "clipping")
ADVICE = {"stable": "no instability at these lrs: neither warmup nor clipping is what limits the lr",
          "warmup": "training is unstable early (before warmup ends or right after): a longer warmup would help",
          "clipping": "training is unstable later, in spikes: gradient clipping would help (clip.policy)"}


# -- the verdict: pure functions over metrics rows ----------------------------------------------------------------
@dataclass(frozen=True)
class Thresholds:
    window: int = 10  # previous steps in the reference median of the loss and of the gradient norm
    loss_rise: float = 0.10  # loss spike: loss > (1 + loss_rise) x that median
    val_rise: float = 0.05  # eval loss > (1 + val_rise) x the lowest eval loss so far
    grad_ratio: float = 10.0  # gradient-norm spike: norm > grad_ratio x that median
    early_fraction: float = 0.2  # early window: warmup + max(warmup, early_fraction x steps)
    recovery_steps: int = 20  # a late event recovered if the loss is back near its level before within this


def _finite(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def split_rows(rows: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) by step; a row without `kind` is a train row."""
    rows = sorted(rows, key=lambda r: r["step"])
    return [r for r in rows if r.get("kind", "train") == "train"], [r for r in rows if r.get("kind") == "eval"]


def early_end(warmup_steps: int, total_steps: int, th: Thresholds = Thresholds()) -> int:
    """The last step of the early window: warmup + max(warmup, ceil(early_fraction x steps))."""
    return warmup_steps + max(warmup_steps, math.ceil(th.early_fraction * total_steps))


def find_events(rows: Iterable[dict], total_steps: int | None = None, th: Thresholds = Thresholds()) -> list[dict]:
    """Instability events of one run, by step: {"step", "kind" (diverged | loss_spike | val_rise | grad_spike),
    "value", "reference", "detail"}. A non-finite gradient norm with a finite loss is no event (DeepSpeed logs
    none)."""
    train, evals = split_rows(rows)
    events, losses, norms = [], [], []
    for r in train:
        step, loss, norm = r["step"], _finite(r.get("loss")), _finite(r.get("grad_norm"))
        if loss is None:
            events.append({"step": step, "kind": "diverged", "value": None, "reference": None,
                           "detail": "non-finite loss"})
            break
        if len(losses) >= 2:
            ref = statistics.median(losses[-th.window:])
            if loss > (1 + th.loss_rise) * ref:
                events.append({"step": step, "kind": "loss_spike", "value": loss, "reference": ref,
                               "detail": f"loss {loss:.4g} = {loss / ref:.2f}x the median {ref:.4g} of the "
                                         f"previous {min(len(losses), th.window)} steps"})
        if norm is not None:
            if len(norms) >= 2:
                ref = statistics.median(norms[-th.window:])
                if norm > th.grad_ratio * ref:
                    events.append({"step": step, "kind": "grad_spike", "value": norm, "reference": ref,
                                   "detail": f"gradient norm {norm:.4g} = {norm / ref:.3g}x the median {ref:.4g} "
                                             f"of the previous {min(len(norms), th.window)} steps"})
            norms.append(norm)
        losses.append(loss)
    else:
        if total_steps is not None and train and train[-1]["step"] < total_steps:
            events.append({"step": train[-1]["step"] + 1, "kind": "diverged", "value": None, "reference": None,
                           "detail": f"the run stopped after step {train[-1]['step']} of {total_steps}"})
    lowest = None
    for r in evals:
        val = _finite(r.get("val_loss"))
        if val is None:
            events.append({"step": r["step"], "kind": "diverged", "value": None, "reference": None,
                           "detail": "non-finite eval loss"})
            continue
        if lowest is not None and val > (1 + th.val_rise) * lowest:
            events.append({"step": r["step"], "kind": "val_rise", "value": val, "reference": lowest,
                           "detail": f"eval loss {val:.4g} = {val / lowest:.2f}x its lowest so far {lowest:.4g}"})
        lowest = val if lowest is None else min(lowest, val)
    order = {"diverged": 0, "grad_spike": 1, "loss_spike": 2, "val_rise": 3}
    return sorted(events, key=lambda e: (e["step"], order[e["kind"]]))


def final_loss(rows: Iterable[dict], total_steps: int | None = None) -> float:
    """The median train loss of the last 10% of the train rows (at least one); inf if the run diverged."""
    train, _ = split_rows(rows)
    losses = [_finite(r.get("loss")) for r in train]
    if not losses or None in losses or (total_steps is not None and train[-1]["step"] < total_steps):
        return math.inf
    return statistics.median(losses[-max(1, len(losses) // 10):])


def diagnose_run(rows: Iterable[dict], *, warmup_steps: int, total_steps: int,
                 th: Thresholds = Thresholds()) -> dict:
    """The verdict of one run from its metrics rows: {"verdict" (stable | warmup | clipping), "reason", "events",
    "early_end", "recovered" (late events only: the loss came back, else None), "final_loss"}."""
    rows = list(rows)
    events = find_events(rows, total_steps, th)
    end = early_end(warmup_steps, total_steps, th)
    out = {"events": events, "early_end": end, "recovered": None, "final_loss": final_loss(rows, total_steps)}
    if not events:
        return {**out, "verdict": "stable", "reason": "no loss spike, gradient-norm spike or divergence"}
    first = events[0]
    if first["step"] <= end:
        return {**out, "verdict": "warmup", "reason": f"step {first['step']}: {first['detail']}, within the early "
                f"window (steps <= {end}: warmup {warmup_steps} and right after)"}
    steps = sorted({e["step"] for e in events})
    recovered = _recovered(rows, steps[0], steps[-1], th)
    isolated = len(steps) <= max(3, total_steps // 20)
    clipped = sum(1 for r in split_rows(rows)[0] if r["step"] in steps and r.get("clipped"))
    shown = "; ".join(f"step {s}: " + ", ".join(e["detail"] for e in events if e["step"] == s) for s in steps[:2]) \
        + ("; ..." if len(steps) > 2 else "")
    return {**out, "verdict": "clipping", "recovered": recovered,
            "reason": f"{'isolated ' if isolated else ''}instability after the early window (steps <= {end}) at "
                      f"{len(steps)} step{'s' if len(steps) > 1 else ''} ({shown}); {clipped} of them clipped; the "
                      "loss " + (f"came back within {th.recovery_steps} steps" if recovered else
                                 f"did not come back within {th.recovery_steps} steps (a lower lr may be needed)")}


def _recovered(rows: list[dict], first: int, last: int, th: Thresholds) -> bool:
    """After the last event, some train loss within recovery_steps is back under (1 + loss_rise) x the median of
    the `window` losses before the first event."""
    train, _ = split_rows(rows)
    before = [_finite(r.get("loss")) for r in train if r["step"] < first][-th.window:]
    after = [_finite(r.get("loss")) for r in train if last < r["step"] <= last + th.recovery_steps]
    if not before or not after or None in before or None in after:
        return False
    return min(after) <= (1 + th.loss_rise) * statistics.median(before)


def combine(verdicts: Iterable[str]) -> str:
    """One verdict for several runs: warmup if any run is unstable early, else clipping if any later, else
    stable (early instability comes first: a run that breaks early never shows what happens later)."""
    verdicts = list(verdicts)
    for v in ("warmup", "clipping"):
        if v in verdicts:
            return v
    return "stable"


# -- running the recipe ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def planted_spike(step: int | None, scale: float):
    """While open, the loss of the loop's step `step` (0-based: `LoopEngine.train_step(step, ...)`, the metrics row
    `step + 1`) is multiplied by `scale`, and so is its gradient: a corrupted batch. None: nothing is planted."""
    from pretrain import step as step_module

    plain = step_module.LoopEngine.train_step

    def spiking_train_step(self, at, factor):
        if at != step:
            return plain(self, at, factor)
        model = self.fwd_model

        def corrupted(*args, **kwargs):
            out = model(*args, **kwargs)
            out.loss = out.loss * scale
            return out
        self.fwd_model = corrupted
        try:
            return plain(self, at, factor)
        finally:
            self.fwd_model = model

    if step is not None:
        step_module.LoopEngine.train_step = spiking_train_step
    try:
        yield
    finally:
        step_module.LoopEngine.train_step = plain


def _train(cfg, spike_step: int | None, spike_scale: float) -> list[dict]:
    """One run in this process; its metrics rows (also when it stopped at a non-finite loss)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from pretrain.loop import train
    from pretrain.tracking import read_metrics

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    with planted_spike(None if spike_step is None else spike_step - 1, spike_scale):
        try:
            train(cfg, log=lambda *_: None)
        except RunStopped:
            pass  # train.max_bad_steps non-finite steps: the rows end before train.steps (divergence)
    path = os.path.join(cfg.run_dir, "metrics.jsonl")
    return read_metrics(path) if os.path.exists(path) else []


def sweep_lrs(base_lr: float, points: int, factor: float) -> list[float]:
    """`points` lrs spaced by `factor`, centered on base_lr (one more below for an even count)."""
    return [base_lr * factor ** k for k in range(-(points // 2), points - points // 2)]


def _run_overrides(overrides: Sequence[str], out: str, name: str, lr: float, eval_every: int) -> list[str]:
    return [*overrides, f"optim.lr={lr!r}", f"run_dir={os.path.join(out, name)}", f"train.eval_every={eval_every}",
            "log.log_every=1", "train.progress=false", "resume=none"]


def run_diagnosis(overrides: Sequence[str], out: str, *, lrs: Sequence[float] | None = None, points: int = 5,
                  factor: float = 2.0, multipliers: Sequence[float] = (2.0, 4.0), eval_every: int = 10,
                  spike_step: int | None = None, spike_scale: float = 1000.0, th: Thresholds = Thresholds(),
                  log=print) -> dict:
    """The sweep, lr*, the probes, the verdicts, the plots; returns the report (also written to out/report.json).
    Every input is checked (ConfigError) before the first run."""
    from pretrain.config import load_config

    cfg = load_config(list(overrides))
    if "lr" not in cfg.optim or _finite(cfg.optim["lr"]) is None:
        raise ConfigError("optim.lr", f"the diagnosis sweeps the lr; optimizer {cfg.optim['name']!r} has none set")
    steps, warmup = cfg.train.steps, int(cfg.schedule.get("warmup_steps") or 0)
    if lrs is None:
        if points < 1:
            raise ConfigError("--points", f"the sweep is empty ({points} points); give at least 1")
        check_number("--factor", factor, lo=1, lo_open=True)
        lrs = sweep_lrs(float(cfg.optim["lr"]), points, factor)
    if not lrs:
        raise ConfigError("--lrs", "the sweep is empty; give at least one lr, e.g. --lrs 1e-3,3e-3")
    for lr in lrs:
        check_number("--lrs", lr, lo=0, lo_open=True, hi=math.inf, hi_open=True)
    if not multipliers:
        raise ConfigError("--multipliers", "no probe lrs; give at least one multiple of lr*, e.g. --multipliers 2,4")
    for m in multipliers:
        check_number("--multipliers", m, lo=0, lo_open=True, hi=math.inf, hi_open=True)
    check_range("--eval-every", eval_every, lo=1)
    if spike_step is not None:
        check_range("--spike-step", spike_step, lo=1, hi=steps)
        check_number("--spike-scale", spike_scale, lo=0, lo_open=True, hi=math.inf, hi_open=True)
    sweep = [(f"sweep_lr{lr:.4g}", lr) for lr in lrs]
    probes = [(f"probe_{m:g}x", m) for m in multipliers]
    for field, names in (("--lrs", sweep), ("--multipliers", probes)):
        if len({n for n, _ in names}) < len(names):
            raise ConfigError(field, f"values repeat (to 4 digits): {', '.join(n for n, _ in names)}")
    for name, _ in sweep + probes:
        if os.path.exists(os.path.join(out, name)):
            raise ConfigError("--out", f"{os.path.join(out, name)} already exists; choose an empty --out")
    for name, lr in sweep:  # every run's config is valid before the first one starts
        load_config(_run_overrides(overrides, out, name, lr, 0))
    for name, m in probes:
        load_config(_run_overrides(overrides, out, name, m * lrs[0], eval_every))

    runs = []

    def run(name, lr, every, kind):
        rcfg = load_config(_run_overrides(overrides, out, name, lr, every))
        rows = _train(rcfg, spike_step, spike_scale)
        d = diagnose_run(rows, warmup_steps=warmup, total_steps=steps, th=th)
        runs.append({"name": name, "kind": kind, "lr": lr, "rows": rows, **d})
        log(f"{name:>18}  lr {lr:<10.4g} final loss {d['final_loss']:<8.4f} {d['verdict']}: {d['reason']}")
        return runs[-1]

    log(f"diagnose {cfg.recipe}: {steps} steps, warmup {warmup}, optim {cfg.optim['name']} (optim.lr "
        f"{cfg.optim['lr']:g}), clip.policy {cfg.clip.policy}"
        + (f"; planted spike x{spike_scale:g} at step {spike_step}" if spike_step is not None else ""))
    swept = [run(name, lr, 0, "sweep") for name, lr in sweep]
    best = min(swept, key=lambda r: r["final_loss"])
    if not math.isfinite(best["final_loss"]):
        raise ConfigError("optim.lr", f"every lr of the sweep diverged ({', '.join(f'{lr:g}' for lr in lrs)}); "
                          "sweep lower lrs (--lrs)")
    lr_star = best["lr"]
    log(f"lr* = {lr_star:.4g} (final loss {best['final_loss']:.4f})")
    probed = [run(name, m * lr_star, eval_every, "probe") for name, m in probes]
    judged = [best] + probed
    verdict = combine(r["verdict"] for r in judged)
    report = {"recipe": cfg.recipe, "overrides": list(overrides), "steps": steps, "warmup_steps": warmup,
              "early_end": early_end(warmup, steps, th), "thresholds": asdict(th), "lr_star": lr_star,
              "spike": {"step": spike_step, "scale": spike_scale} if spike_step is not None else None,
              "verdict": verdict, "advice": ADVICE[verdict],
              "runs": [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()
                        if k != "rows"} for r in runs],
              "judged": [r["name"] for r in judged]}
    report["plots"] = plot_runs(runs, out, report["early_end"])
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    log(f"verdict: {verdict}: {ADVICE[verdict]}")
    for r in judged:
        log(f"  {r['name']} (lr {r['lr']:.4g}): {r['verdict']}: {r['reason']}")
    log(f"plots and report.json in {out}")
    return report


# -- plots ---------------------------------------------------------------------------------------------------------
def plot_runs(runs: list[dict], out: str, early: int) -> list[str]:
    """loss.png, grad_norm.png, grad_norm_hist.png, clip_fraction.png in `out` (matplotlib's Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def figure(title, ylabel, xlabel="step"):
        fig = Figure(figsize=(8, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        return fig, ax

    def save(fig, ax, name):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out, name)
        fig.savefig(path, format="png")
        return path

    def series(rows, key):
        pts = [(r["step"], _finite(r.get(key))) for r in rows]
        return [s for s, v in pts if v is not None], [v for s, v in pts if v is not None]

    def label(r):
        return f"{r['name']} lr {r['lr']:.3g} ({r['verdict']})"

    paths = []
    fig, ax = figure("train loss per lr (points: eval loss; dashed: end of the early window)", "loss")
    low, high = math.inf, -math.inf
    for r in runs:
        train, evals = split_rows(r["rows"])
        xs, ys = series(train, "loss")
        line = ax.plot(xs, ys, linewidth=1.6 if r["kind"] == "probe" else 0.8, label=label(r))[0]
        if ys:
            low, high = min(low, min(ys)), max(high, ys[0])
        ex, ey = series(evals, "val_loss")
        ax.plot(ex, ey, "o", markersize=3, color=line.get_color())
    if math.isfinite(low):  # a planted spike's loss would flatten every curve
        ax.set_ylim(low - 0.05 * (high - low), high + 0.5 * (high - low) + 1e-3)
    ax.axvline(early, color="gray", linestyle="--", linewidth=1)
    paths.append(save(fig, ax, "loss.png"))

    fig, ax = figure("gradient norm before clipping (dotted: clip threshold)", "grad norm")
    for r in runs:
        train, _ = split_rows(r["rows"])
        line = ax.plot(*series(train, "grad_norm"), linewidth=1.6 if r["kind"] == "probe" else 0.8, label=label(r))[0]
        ax.plot(*series(train, "clip_threshold"), ":", linewidth=1, color=line.get_color())
    ax.set_yscale("log")
    ax.axvline(early, color="gray", linestyle="--", linewidth=1)
    paths.append(save(fig, ax, "grad_norm.png"))

    fig, ax = figure("histogram of gradient norms (log10)", "steps", xlabel="log10 grad norm")
    for r in runs:
        train, _ = split_rows(r["rows"])
        _, norms = series(train, "grad_norm")
        if norms:
            ax.hist([math.log10(max(n, 1e-12)) for n in norms], bins=40, histtype="step", label=label(r))
    paths.append(save(fig, ax, "grad_norm_hist.png"))

    fig, ax = figure("fraction of the recent steps clipped", "clip fraction")
    for r in runs:
        train, _ = split_rows(r["rows"])
        ax.plot(*series(train, "clip_fraction"), linewidth=1.6 if r["kind"] == "probe" else 0.8, label=label(r))
    ax.set_ylim(-0.02, 1.02)
    paths.append(save(fig, ax, "clip_fraction.png"))
    return paths


# -- command line ----------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other bad input
        raise ConfigError("arguments", f"{message} (python -m pretrain.tools.diagnose --help)")


def _floats(field: str, text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(field, f"expected comma-separated numbers, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    ap = _Parser(prog="python -m pretrain.tools.diagnose", description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="recipe=NAME and Hydra overrides, as for train.py")
    ap.add_argument("--out", help="folder for the runs, plots and report.json (default runs/diagnose_<recipe>)")
    ap.add_argument("--points", type=int, default=5, help="lrs in the sweep (default 5)")
    ap.add_argument("--factor", type=float, default=2.0, help="ratio between neighbouring sweep lrs (default 2)")
    ap.add_argument("--lrs", help="the sweep's lrs, comma-separated (instead of --points/--factor)")
    ap.add_argument("--multipliers", default="2,4", help="probe lrs as multiples of lr* (default 2,4)")
    ap.add_argument("--eval-every", type=int, default=10, help="train.eval_every of the probes (default 10)")
    ap.add_argument("--spike-step", type=int, help="plant a corrupted batch at this step in every run")
    ap.add_argument("--spike-scale", type=float, default=1000.0, help="its loss multiplier (default 1000)")
    try:
        args = ap.parse_intermixed_args(argv)
        flags = [o for o in args.overrides if o.startswith("-")]
        if flags:
            raise ConfigError("arguments", f"unrecognized arguments: {' '.join(flags)}")
        recipe = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("recipe=")), "tiny")
        os.environ.setdefault("WANDB_MODE", "offline")
        run_diagnosis(args.overrides, args.out or os.path.join("runs", f"diagnose_{recipe}"),
                      lrs=_floats("--lrs", args.lrs) if args.lrs is not None else None, points=args.points,
                      factor=args.factor, multipliers=_floats("--multipliers", args.multipliers),
                      eval_every=args.eval_every, spike_step=args.spike_step, spike_scale=args.spike_scale)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
