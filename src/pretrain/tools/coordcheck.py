"""Coordinate check (Tensor Programs V; microsoft/mup's coord_check): train GPTs of several widths (or depths) for a
few steps with the same hyperparameters and record, at each step's forward pass, the mean |activation| of every
layer. Under muP the size of every activation stays put as the width grows (log-log slope ~ 0); under SP it grows
with the width after the first update (slope ~ 1 for Adam). CompleteP does the same across depth for the residual
stream (the blocks' outputs), which grows with depth under muP alone.

    python -m pretrain.tools.coordcheck --parametrization mup --widths 64,128,256,512,1024 --out coord_mup.png
    python -m pretrain.tools.coordcheck --parametrization completep --depths 2,4,8,16 --width 128 --out coord_cp.png

Step t is the forward pass after t - 1 optimizer steps (t = 1: at initialization). Layers: `embed` (embedding output,
after its multiplier), `attn.i` / `mlp.i` (block i's branch outputs, before the residual multiplier), `block.i`
(the residual stream after block i), `logits` (after the readout multiplier). Across depths the blocks are named by
position from the end (`block.-1` the last) so that every depth has them. Prints the slope of log mean|activation|
against log width (or depth) per layer and step, and the verdict: the largest |slope| at steps >= 2.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, Iterable

import numpy as np
import torch


def gpt_config(width: int, depth: int, *, parametrization: str, base_width: int, base_depth: int, n_head: int,
               vocab_size: int, seq_len: int, **kw):
    from ..model import GPTConfig

    return GPTConfig(vocab_size=vocab_size, d_model=width, n_layer=depth, n_head=n_head, max_seq_len=seq_len,
                     parametrization=parametrization, base_width=base_width, base_depth=base_depth, **kw)


def record(model, batches: Iterable[torch.Tensor], *, steps: int, optim: str, lr: float,
           hparams: dict | None = None) -> dict[str, list[float]]:
    """{layer: [mean |activation| at step 1..steps]}: trains `model` `steps - 1` optimizer steps on `batches`
    (the model's own parametrization: muP groups from parametrization.optimizer_params)."""
    from ..model.parametrization import optimizer_params
    from ..optim import build_optimizer

    hp = {"lr": lr, **(hparams or {})}
    opt = build_optimizer(optim, optimizer_params(model, optim, hp), **hp)
    sizes: dict[str, list[float]] = {}

    def hook(name):
        def fn(module, inputs, output):
            out = output.logits if hasattr(output, "logits") else output
            sizes.setdefault(name, []).append(out.detach().abs().mean().item())
        return fn

    handles = [model.model.embed_tokens.register_forward_hook(hook("embed")), model.register_forward_hook(hook("logits"))]
    for i, block in enumerate(model.model.layers):
        handles += [block.self_attn.register_forward_hook(hook(f"attn.{i}")),
                    block.mlp.register_forward_hook(hook(f"mlp.{i}")), block.register_forward_hook(hook(f"block.{i}"))]
    if model.config.embed_multiplier != 1.0:  # the embedding's output as the blocks see it
        handles[0].remove()
        handles[0] = model.model.layers[0].register_forward_pre_hook(lambda m, a: sizes.setdefault(
            "embed", []).append(a[0].detach().abs().mean().item()))
    model.train()
    try:
        for step, batch in zip(range(steps), batches):
            loss = model(input_ids=batch, labels=batch).loss
            if step == steps - 1:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for h in handles:
            h.remove()
    return sizes


def slopes(xs: list[float], sizes: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """{layer: [least-squares slope of log mean|activation| vs log x, per step]} over the layers every run has
    (a step where some size is 0, e.g. a zero-initialized readout at step 1, gets slope 0 if all are 0, else nan)."""
    layers = [k for k in sizes[0] if all(k in s for s in sizes)]
    lx = np.log(np.asarray(xs, dtype=float))
    out = {}
    for k in layers:
        per_step = []
        for t in range(min(len(s[k]) for s in sizes)):
            v = np.asarray([s[k][t] for s in sizes])
            if (v <= 0).any():
                per_step.append(0.0 if (v == 0).all() else float("nan"))
            else:
                per_step.append(float(np.polyfit(lx, np.log(v), 1)[0]))
        out[k] = per_step
    return out


def by_position(sizes: dict[str, list[float]], depth: int) -> dict[str, list[float]]:
    """Rename block i to i - depth (`block.-1` the last) so that runs of different depths share names."""
    out = {}
    for k, v in sizes.items():
        kind, _, i = k.partition(".")
        out[f"{kind}.{int(i) - depth}" if i else k] = v
    return out


def pattern_batches(vocab_size: int, batch: int, seq_len: int, seed: int) -> Iterable[torch.Tensor]:
    """Arithmetic token sequences (start + stride * position mod vocab_size, stride 1..3): learnable at once, and
    with few distinct tokens the activations reach their large-width behaviour at small widths (in a batch of many
    unrelated tokens the first updates' coherent part only dominates once the width exceeds their number)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        start = torch.randint(0, vocab_size, (batch, 1), generator=g)
        stride = torch.randint(1, 4, (batch, 1), generator=g)
        yield (start + stride * torch.arange(seq_len)) % vocab_size


def coord_check(*, parametrization: str, widths: list[int] | None = None, depths: list[int] | None = None,
                width: int = 64, depth: int = 2, base_width: int | None = None, base_depth: int | None = None,
                steps: int = 4, lr: float = 1e-2, optim: str = "adamw", seeds: int = 1, n_head: int = 2,
                vocab_size: int = 256, seq_len: int = 32, batch: int = 8, hparams: dict | None = None,
                batches: Callable[[int], Iterable[torch.Tensor]] | None = None, model_kw: dict | None = None):
    """Mean |activation| per layer and step for each width (depth fixed) or each depth (width fixed), averaged over
    `seeds` initializations; returns (xs, [sizes per x], {layer: [slope per step]}). `batches(seed)` gives the
    token batches (default: `pattern_batches`); every model sees the same ones."""
    if (widths is None) == (depths is None):
        raise ValueError("give widths or depths")
    sweep_width = widths is not None
    xs = list(widths if sweep_width else depths)
    base_width = base_width or (min(xs) if sweep_width else width)
    base_depth = base_depth or (depth if sweep_width else min(xs))
    batches = batches or (lambda seed: pattern_batches(vocab_size, batch, seq_len, 1000 + seed))
    all_sizes = []
    for x in xs:
        w, d = (x, depth) if sweep_width else (width, x)
        runs = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            from ..model import GPT
            model = GPT(gpt_config(w, d, parametrization=parametrization, base_width=base_width,
                                   base_depth=base_depth, n_head=n_head, vocab_size=vocab_size, seq_len=seq_len,
                                   **(model_kw or {})))
            s = record(model, batches(seed), steps=steps, optim=optim, lr=lr, hparams=hparams)
            runs.append(s if sweep_width else by_position(s, d))
        all_sizes.append({k: list(np.mean([r[k] for r in runs], axis=0)) for k in runs[0]})
    return xs, all_sizes, slopes(xs, all_sizes)


def verdict(slope_table: dict[str, list[float]], from_step: int = 2) -> tuple[float, str]:
    """(largest |slope| at steps >= from_step, the layer and step it is at)."""
    worst, where = 0.0, ""
    for k, per_step in slope_table.items():
        for t, s in enumerate(per_step, start=1):
            if t >= from_step and math.isfinite(s) and abs(s) >= worst:
                worst, where = abs(s), f"{k} at step {t}"
    return worst, where


def plot(xs, all_sizes, out: str, xlabel: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(all_sizes[0])
    steps = len(all_sizes[0][layers[0]])
    fig, axes = plt.subplots(1, steps, figsize=(3.2 * steps, 3.2), sharey=True, squeeze=False)
    for t in range(steps):
        ax = axes[0][t]
        for k in layers:
            ax.plot(xs, [s[k][t] for s in all_sizes], marker=".", label=k)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"step {t + 1}")
        ax.set_xlabel(xlabel)
    axes[0][0].set_ylabel("mean |activation|")
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def corpus_batches(batch: int, seq_len: int, vocab_size: int, max_bytes: int = 2_000_000):
    """Batches of the embedded stdlib corpus (the tiny recipe's tokenizer and packing)."""
    from ..config import load_config
    from ..data import build_data

    cfg = load_config([f"train.seq_len={seq_len}", f"train.global_batch_size={batch}",
                       f"train.micro_batch_size={batch}", f"data.vocab_size={vocab_size}",
                       f"data.max_bytes={max_bytes}"])
    tokenizer, loader, _ = build_data(cfg, rank=0, world=1, log=lambda *_: None)

    def batches(seed):
        step = 0
        while True:
            yield loader.micro_batch(step, 0)
            step += 1
    return batches, len(tokenizer)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parametrization", default="mup", choices=["sp", "mup", "completep"])
    ap.add_argument("--widths", default=None, help="comma-separated d_model values (depth --depth)")
    ap.add_argument("--depths", default=None, help="comma-separated n_layer values (width --width)")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--base-width", type=int, default=None, help="default: the smallest width (or --width)")
    ap.add_argument("--base-depth", type=int, default=None, help="default: the smallest depth (or --depth)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--optim", default="adamw")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--data", default="stdlib", choices=["stdlib", "pattern"],
                    help="stdlib: the embedded corpus (the tiny recipe's tokenizer); pattern: arithmetic sequences")
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("--out", default=None, help="PNG of mean |activation| vs width (depth), one panel per step")
    a = ap.parse_args(argv)
    if (a.widths is None) == (a.depths is None):
        ap.error("give --widths or --depths")
    ints = lambda s: [int(v) for v in s.split(",")] if s else None  # noqa: E731
    batches, vocab = None, a.vocab_size
    if a.data == "stdlib":
        batches, vocab = corpus_batches(a.batch, a.seq_len, a.vocab_size)
    xs, all_sizes, table = coord_check(
        parametrization=a.parametrization, widths=ints(a.widths), depths=ints(a.depths), width=a.width,
        depth=a.depth, base_width=a.base_width, base_depth=a.base_depth, steps=a.steps, lr=a.lr, optim=a.optim,
        seeds=a.seeds, n_head=a.n_head, vocab_size=vocab, seq_len=a.seq_len, batch=a.batch, batches=batches)
    what = "width" if a.widths else "depth"
    print(f"slope of log mean|activation| vs log {what} ({a.parametrization}, {a.optim} lr={a.lr}, "
          f"{what}s {xs}):")
    print("layer      " + " ".join(f"step{t:<3d}" for t in range(1, a.steps + 1)))
    for k, per_step in table.items():
        print(f"{k:10s} " + " ".join(f"{s:+7.2f}" for s in per_step))
    worst, where = verdict(table)
    print(f"verdict: largest |slope| at steps >= 2: {worst:.2f} ({where}); "
          + ("stable (< 0.25)" if worst < 0.25 else "activations change with " + what))
    if a.out:
        plot(xs, all_sizes, a.out, what, f"{a.parametrization}: mean |activation| vs {what}")
        print(f"plot: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
