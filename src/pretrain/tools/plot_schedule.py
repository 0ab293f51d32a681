"""Plot learning-rate schedules (lr against step) to a PNG.

    python -m pretrain.tools.plot_schedule --name wsd --peak-lr 3e-4 --steps 1000 \
        --kw decay_fraction=0.2 --kw decay_shape=cosine --out wsd.png

`plot_schedules({label: schedule, ...}, path)` is the reusable part: it draws every schedule's lr for
steps 0..total_steps (step = updates already taken; see `pretrain.schedules.classic`) on one axis.
Drawing uses matplotlib's Agg canvas directly, so no global backend is switched.
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from ..schedules import Schedule, build_schedule


def plot_schedules(schedules: Mapping[str, Schedule], path, *, steps: int | None = None, title: str | None = None,
                   log_y: bool = False) -> Path:
    """Draw each schedule's lr for steps 0..steps (default: the longest total_steps) and save a PNG at `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not schedules:
        raise ValueError("plot_schedules needs at least one schedule")
    n = steps if steps is not None else max(s.total_steps for s in schedules.values())
    xs = list(range(n + 1))
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, sched in schedules.items():
        ax.plot(xs, [sched(x) for x in xs], label=label, linewidth=1.5)
    ax.set_xlabel("step (updates taken)")
    ax.set_ylabel("learning rate")
    if log_y:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def parse_value(text: str) -> Any:
    """A command-line value: int, float, null/none, true/false, a Python/YAML-style list, else the string."""
    low = text.strip().lower()
    if low in ("null", "none", "~"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.strip().startswith(("[", "(")):
        try:
            return list(ast.literal_eval(text))
        except (ValueError, SyntaxError) as e:
            raise ConfigError("--kw", f"cannot parse list {text!r}: {e}") from None
    return text


def parse_kw(items: Sequence[str]) -> dict[str, Any]:
    kw = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("--kw", f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        kw[key.strip()] = parse_value(value)
    return kw


def main(argv: Sequence[str] | None = None) -> Path:
    """Either a recipe with Hydra overrides (`recipe=1b_wsd schedule=wsd --out wsd.png`) or an explicit schedule
    (`--name wsd --peak-lr 3e-4 --steps 24000 --kw warmup_steps=2000 --out wsd.png`)."""
    ap = argparse.ArgumentParser(prog="python -m pretrain.tools.plot_schedule", description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="recipe=NAME and Hydra overrides (instead of --name ...)")
    ap.add_argument("--name", help="a registered schedule (pretrain.schedules.SCHEDULES)")
    ap.add_argument("--peak-lr", type=float)
    ap.add_argument("--steps", type=int, help="total_steps of the run")
    ap.add_argument("--kw", action="append", default=[], metavar="KEY=VALUE", help="schedule keyword, repeatable")
    ap.add_argument("--out", required=True, help="PNG file to write")
    ap.add_argument("--log-y", action="store_true")
    args = ap.parse_intermixed_args(argv)
    overrides = args.overrides
    if overrides or args.name is None:
        from pretrain.config import load_config, schedule_kwargs
        cfg = load_config(overrides)
        name, peak, steps = cfg.schedule["name"], float(cfg.optim.get("lr", 1.0)), cfg.train.steps
        sched = build_schedule(name, peak_lr=peak, total_steps=steps, **schedule_kwargs(cfg))
        title = f"{cfg.recipe}: {name} (peak {peak:g}, {steps} steps)"
    else:
        if args.peak_lr is None or args.steps is None:
            ap.error("--name needs --peak-lr and --steps")
        name, peak = args.name, args.peak_lr
        sched = build_schedule(name, peak_lr=peak, total_steps=args.steps, **parse_kw(args.kw))
        title = f"{name} (peak {peak:g})"
    out = plot_schedules({name: sched}, args.out, title=title, log_y=args.log_y)
    print(out)
    return out


if __name__ == "__main__":
    main()
