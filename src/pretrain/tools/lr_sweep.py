"""muTransfer workflow: sweep widths (or depths) x learning rates x seeds on the embedded corpus, find the optimal lr
of each width, and report how it drifts.

    python -m pretrain.tools.lr_sweep --parametrization mup --widths 64,128,256,512 --log2-lrs=-12:-5 \\
        --seeds 0,1,2 --steps 100 --out runs/sweep_mup [hydra overrides ...]
    python -m pretrain.tools.lr_sweep --parametrization completep --depths 2,4,8,16 --width 64 ... --out runs/cp

Each run is `pretrain.loop.train` on the recipe (default the tiny one on the stdlib corpus) with `model.d_model`
(or `model.n_layer`), `optim.lr`, `seed` and the scaling block set (`scaling.base_width` = the smallest width,
`scaling.base_depth` = the smallest depth unless given); its final validation loss is appended to
`<out>/results.jsonl` as soon as it finishes (a rerun skips the runs already there; a diverged run counts as
infinite loss). The optimum per width: the parabola in log2 lr through the grid's best mean loss (over seeds) and
its two neighbours (its vertex, kept within those three points). The drift: least-squares slope of log2 lr* against
log2 width (or depth). Writes `<out>/table.md` and `<out>/lr_sweep.png` (loss vs log2 lr, one curve per width).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil

import numpy as np
import torch


_DATA: dict = {}


def _data_once(build_data):
    """build_data memoized on (data config, batch, seq_len, seed): a sweep's runs share one corpus build (the
    loaders are indexed by step, so sharing them is safe)."""
    def build(cfg, **kw):
        key = (json.dumps(cfg.to_dict()["data"], sort_keys=True), cfg.train.global_batch_size,
               cfg.train.micro_batch_size, cfg.train.seq_len, cfg.train.eval_batches, cfg.seed, kw.get("world"))
        if key not in _DATA:
            _DATA[key] = build_data(cfg, **kw)
        return _DATA[key]
    build.memoized = True
    return build


def run_one(overrides: list[str], run_dir: str) -> float:
    """Final validation loss of one training run (inf when the loss became non-finite); keeps only the run's
    metrics.jsonl and config.yaml."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from .. import data
    from ..config import load_config
    from ..errors import RunStopped
    from ..loop import train

    if not getattr(data.build_data, "memoized", False):
        data.build_data = _data_once(data.build_data)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(list(overrides) + [f"run_dir={run_dir}"])
    try:
        loss = train(cfg, log=lambda *_: None)["val_loss"]
    except RunStopped:  # train.max_bad_steps non-finite steps in a row: diverged
        loss = math.inf
    for sub in ("checkpoints", "final"):
        shutil.rmtree(os.path.join(run_dir, sub), ignore_errors=True)
    return float(loss) if loss is not None and math.isfinite(loss) else math.inf


def run_fast(overrides: list[str], run_dir: str) -> float:
    """The same run without the loop's machinery (one process, no accumulation, no checkpoints, no export): the
    recipe's model, parameter groups (build.py's: `parametrization.optimizer_params`), schedule and data, norm
    clipping at clip.max_norm; the mean loss over the validation batches at the end (inf if the loss became
    non-finite). For sweeps of many short runs, where the loop's setup would cost more than the training."""
    from accelerate.utils import set_seed

    from .. import data
    from ..build import build_model
    from ..config import build_run_schedule, load_config, optimizer_hparams
    from ..model.parametrization import optimizer_params
    from ..optim import build_optimizer
    from ..step import set_lr

    if not getattr(data.build_data, "memoized", False):
        data.build_data = _data_once(data.build_data)
    cfg = load_config(list(overrides) + [f"run_dir={run_dir}"])
    t, name = cfg.train, cfg.optim["name"]
    if t.global_batch_size != t.micro_batch_size:
        raise ValueError("run_fast: train.global_batch_size must equal train.micro_batch_size")
    set_seed(cfg.seed)
    tokenizer, loader, val = data.build_data(cfg, rank=0, world=1, log=lambda *_: None)
    loader.batch_sizes = None
    set_seed(cfg.seed)
    model = build_model(cfg, len(tokenizer), tokenizer.eos_token_id)
    hp = optimizer_hparams(cfg)
    opt = build_optimizer(name, optimizer_params(model, name, hp), **hp)
    schedule = build_run_schedule(cfg)
    model.train()
    for step in range(t.steps):
        set_lr(opt, schedule.factor(step))
        batch = loader.micro_batch(step, 0)
        loss = model(input_ids=batch, labels=batch).loss
        if not torch.isfinite(loss):
            return math.inf
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip.max_norm)
        opt.step()
    model.eval()
    with torch.no_grad():
        losses = [model(input_ids=b, labels=b).loss.item() for b in val]
    loss = float(np.mean(losses))
    return loss if math.isfinite(loss) else math.inf


RUNNERS = {"loop": run_one, "fast": run_fast}


def read_results(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def sweep(*, parametrization: str, xs: list[int], axis: str, lrs: list[float], seeds: list[int], steps: int,
          out: str, overrides: list[str] = (), base: int | None = None, base_width: int | None = None,
          runner: str = "loop", log=print) -> list[dict]:
    """Train every (x, lr, seed) not yet in <out>/results.jsonl; returns all rows for this parametrization.
    `base`: the base width (depth) of the swept axis (default the smallest); across depths `base_width` is the
    fixed width (muP's base)."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "results.jsonl")
    key = lambda r: (r["parametrization"], r[axis], r["lr"], r["seed"])  # noqa: E731
    done = {key(r) for r in read_results(path) if axis in r}
    base = base or min(xs)
    field = {"width": "model.d_model", "depth": "model.n_layer"}[axis]
    scaling = [f"scaling.parametrization={parametrization}"]
    if parametrization != "sp":
        scaling += [f"scaling.base_{axis}={base}"] + ([f"scaling.base_width={base_width}"] if axis == "depth" else [])
    for seed in seeds:  # seed-major: a partial sweep already holds whole tables
        for x in xs:
            for lr in lrs:
                row = {"parametrization": parametrization, axis: x, "lr": lr, "seed": seed, "steps": steps}
                if key(row) in done:
                    continue
                ov = list(overrides) + [f"{field}={x}", f"optim.lr={lr}", f"seed={seed}", f"train.steps={steps}",
                                          f"train.eval_every={steps}"] \
                    + scaling
                run_dir = os.path.join(out, "runs", f"{parametrization}_{axis}{x}_lr{lr:.3g}_s{seed}")
                row["loss"] = RUNNERS[runner](ov, run_dir)
                with open(path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                log(f"{parametrization} {axis}={x} lr={lr:.3g} seed={seed}: loss {row['loss']:.4f}")
    return [r for r in read_results(path) if r["parametrization"] == parametrization and axis in r]


def mean_losses(rows: list[dict], axis: str) -> dict[int, dict[float, float]]:
    """{x: {lr: mean loss over seeds}} (inf if a seed diverged)."""
    acc: dict = {}
    for r in rows:
        acc.setdefault(r[axis], {}).setdefault(r["lr"], []).append(r["loss"])
    return {x: {lr: float(np.mean(v)) for lr, v in sorted(d.items())} for x, d in sorted(acc.items())}


def optimum(lr_loss: dict[float, float]) -> tuple[float, bool]:
    """(log2 of the optimal lr, whether the grid's best is at its edge): vertex of the parabola in log2 lr through
    the best finite mean loss and its neighbours, kept within them."""
    lrs = sorted(lr_loss)
    x = np.log2(lrs)
    y = np.asarray([lr_loss[lr] for lr in lrs])
    finite = np.isfinite(y)
    if not finite.any():
        return math.nan, True
    i = int(np.argmin(np.where(finite, y, np.inf)))
    edge = i == 0 or i == len(lrs) - 1 or not (finite[i - 1] and finite[i + 1])
    if edge:
        return float(x[i]), True
    a, b, _ = np.polyfit(x[i - 1:i + 2], y[i - 1:i + 2], 2)
    if a <= 0:
        return float(x[i]), False
    return float(np.clip(-b / (2 * a), x[i - 1], x[i + 1])), False


def drift(optima: dict[int, float]) -> float:
    """Least-squares slope of log2 lr* against log2 x."""
    xs = [x for x, v in optima.items() if math.isfinite(v)]
    if len(xs) < 2:
        return math.nan
    return float(np.polyfit(np.log2(xs), [optima[x] for x in xs], 1)[0])


def summarize(rows: list[dict], axis: str) -> tuple[dict, dict, float]:
    """(mean losses {x: {lr: loss}}, optima {x: (log2 lr*, at edge)}, drift slope)."""
    means = mean_losses(rows, axis)
    optima = {x: optimum(d) for x, d in means.items()}
    return means, optima, drift({x: o[0] for x, o in optima.items()})


def table(means: dict, optima: dict, slope: float, axis: str, title: str) -> str:
    lrs = sorted({lr for d in means.values() for lr in d})
    lines = [f"{title}", "", f"| {axis} | " + " | ".join(f"2^{math.log2(lr):.1f}" for lr in lrs) + " | log2 lr* |",
             "|---" * (len(lrs) + 2) + "|"]
    for x, d in means.items():
        best = min(d.values())
        cells = [("**%.3f**" if d.get(lr) == best else "%.3f") % d[lr] if lr in d else "" for lr in lrs]
        o, edge = optima[x]
        lines.append(f"| {x} | " + " | ".join(c.replace("inf", "div") for c in cells) +
                     f" | {o:.2f}{' (edge)' if edge else ''} |")
    lines += ["", f"drift: {slope:+.3f} log2(lr*) per log2({axis})"]
    return "\n".join(lines)


def plot(results: dict[str, tuple], axis: str, out: str) -> None:
    """One panel per parametrization: mean loss vs log2 lr, one curve per width (depth), optima marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    for ax, (name, (means, optima, slope)) in zip(axes[0], results.items()):
        for x, d in means.items():
            lrs = sorted(d)
            ys = [d[lr] for lr in lrs]
            line, = ax.plot(np.log2(lrs), ys, marker=".", label=f"{axis} {x}")
            o = optima[x][0]
            if math.isfinite(o):
                ax.axvline(o, color=line.get_color(), lw=0.6, ls=":")
        finite = [v for d in means.values() for v in d.values() if math.isfinite(v)]
        if finite:
            lo = min(finite)
            ax.set_ylim(lo - 0.05, lo + 1.5)
        ax.set_title(f"{name}: drift {slope:+.2f}")
        ax.set_xlabel("log2 lr")
        ax.set_ylabel("final val loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def parse_lrs(a) -> list[float]:
    if a.lrs:
        return [float(v) for v in a.lrs.split(",")]
    lo, hi, *step = [float(v) for v in a.log2_lrs.split(":")]
    step = step[0] if step else 1.0
    return [2.0 ** e for e in np.arange(lo, hi + step / 2, step)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parametrization", default="mup", help="one or several, comma-separated: sp, mup, completep")
    ap.add_argument("--widths", default=None)
    ap.add_argument("--depths", default=None)
    ap.add_argument("--width", type=int, default=None, help="with --depths: model.d_model")
    ap.add_argument("--depth", type=int, default=None, help="with --widths: model.n_layer")
    ap.add_argument("--base", type=int, default=None, help="base width (depth); default the smallest")
    ap.add_argument("--lrs", default=None, help="comma-separated learning rates")
    ap.add_argument("--log2-lrs", default="-12:-5", help="lo:hi[:step] in log2 (default -12:-5)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runner", default="loop", choices=sorted(RUNNERS),
                    help="loop: pretrain.loop.train (default); fast: run_fast (no checkpoints, export or loop setup)")
    ap.add_argument("overrides", nargs="*", help="hydra overrides for every run (recipe=..., train.seq_len=...)")
    a = ap.parse_args(argv)
    if (a.widths is None) == (a.depths is None):
        ap.error("give --widths or --depths")
    axis = "width" if a.widths else "depth"
    xs = [int(v) for v in (a.widths or a.depths).split(",")]
    overrides = ["train.progress=false", "log.log_every=10"] + list(a.overrides)
    if axis == "depth" and not a.width:
        ap.error("--depths needs --width (the fixed d_model, muP's base width)")
    if a.width:
        overrides.append(f"model.d_model={a.width}")
    if a.depth:
        overrides.append(f"model.n_layer={a.depth}")
    lrs, seeds = parse_lrs(a), [int(s) for s in a.seeds.split(",")]
    results, text = {}, []
    for name in a.parametrization.split(","):
        rows = sweep(parametrization=name, xs=xs, axis=axis, lrs=lrs, seeds=seeds, steps=a.steps, out=a.out,
                     overrides=overrides, base=a.base, base_width=a.width, runner=a.runner)
        results[name] = summarize(rows, axis)
        text.append(table(*results[name], axis, f"### {name}"))
    report = "\n\n".join(text)
    print(report)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(report + "\n")
    plot(results, axis, os.path.join(a.out, "lr_sweep.png"))
    print(f"plot: {os.path.join(a.out, 'lr_sweep.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
