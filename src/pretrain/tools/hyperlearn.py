"""Learn per-layer hyperparameters on a proxy by reversible hypergradients (Maclaurin et al. 2015), plot the
learned schedules and export them as a `learned` schedule a recipe trains with.

    python -m pretrain.tools.hyperlearn --steps 150 --meta-steps 8 --out runs/hyper
    python train.py optim=momentum train.steps=150 schedule=learned schedule.path=runs/hyper/learned_schedule.json

The proxy is a GPT built from the recipe with the overrides after `--` (default `PROXY`: a 32-wide, 4-layer GPT,
512-token vocabulary, 8 x 64-token batches, on 1 MB of the embedded corpus) trained by exactly reversible
momentum SGD for --steps steps (the target run's train.steps) starting from the recipe's cosine schedule
(--lr, --momentum, --warmup), clipped like the recipe (clip.policy norm / none). Hyperparameters are per unit
(`--granularity groups`: the optimizer's parameter groups by kind, embedding / hidden / vector / head, the
exportable choice; `layers`: embedding, block.i, final, the paper's per-layer figure) and, for lr and momentum,
per block of --block-len steps; --learn picks among lr, momentum, init (log init scale), wd (L2 weight decay).

Writes to --out: learned_schedule.json (`pretrain.schedules.learned`'s file: torch-SGD lr eta = alpha (1-gamma)
per group per step; the recipe's momentum stays optim.momentum, so export with --learn lr[,init,wd] when the
schedule is to be replayed exactly), history.json (proxy val loss per meta step, seconds, inner steps run),
learned_lrs.png (lr per unit vs step, learned and start) and prints the start and learned proxy val loss.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

PROXY = ["data.max_bytes=1000000", "data.vocab_size=512", "model.d_model=32", "model.n_layer=4",
         "model.n_head=2", "train.seq_len=64", "train.global_batch_size=8", "train.micro_batch_size=8"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150, help="inner steps T (= the target run's train.steps)")
    ap.add_argument("--block-len", type=int, default=15, help="steps per lr/momentum block")
    ap.add_argument("--meta-steps", type=int, default=8, help="meta-optimization (Adam) steps")
    ap.add_argument("--granularity", choices=("groups", "layers"), default="groups")
    ap.add_argument("--learn", default="lr,momentum,init,wd", help="comma-separated: lr, momentum, init, wd")
    ap.add_argument("--lr", type=float, default=0.3, help="starting peak lr (torch SGD form)")
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--warmup", type=int, default=None, help="starting cosine's warmup (default 10%% of --steps)")
    ap.add_argument("--meta-lr", type=float, default=None, help="Adam step on log lr (default 0.1)")
    ap.add_argument("--val-batches", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/hyper")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the proxy recipe (replace PROXY)")
    return ap.parse_args(argv)


def check_args(a) -> list[str]:
    from ..errors import ConfigError
    from ..hyper.meta import LEARN_NAMES

    learn = [k.strip() for k in a.learn.split(",") if k.strip()]
    for k in learn:
        if k not in LEARN_NAMES:
            raise ConfigError("--learn", f"unknown hyperparameter {k!r}", sorted(LEARN_NAMES), got=k)
    if not learn:
        raise ConfigError("--learn", "name at least one hyperparameter", sorted(LEARN_NAMES))
    for name, v in (("--steps", a.steps), ("--block-len", a.block_len)):
        if v < 1:
            raise ConfigError(name, f"must be >= 1, got {v}")
    if a.meta_steps < 0:
        raise ConfigError("--meta-steps", f"must be >= 0, got {a.meta_steps}")
    if not 0 < a.momentum < 1:
        raise ConfigError("--momentum", f"must be in (0, 1), got {a.momentum}")
    if not a.lr > 0:
        raise ConfigError("--lr", f"must be > 0, got {a.lr}")
    return learn


def plot_lrs(start: dict, learned: dict, path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = [f"C{i}" for i in range(10)]
    for i, (unit, lrs) in enumerate(learned.items()):
        ax.plot(range(len(lrs)), lrs, color=colors[i % 10], label=unit, linewidth=1.5)
    first = next(iter(start.values()))
    ax.plot(range(len(first)), first, color="k", linestyle="--", linewidth=1, label="start (cosine)")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate (torch SGD form)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path))


def main(argv=None) -> dict:
    a = parse_args(argv)
    learn = check_args(a)
    import torch

    from ..hyper.meta import cosine_start, meta_optimize, torch_lrs
    from ..hyper.proxy import gpt_problem
    from ..schedules.learned import save_learned

    torch.set_num_threads(a.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(a.overrides) or PROXY
    problem, cfg, _ = gpt_problem(overrides + [f"train.steps={a.steps}", f"run_dir={out / 'proxy'}"],
                                  a.granularity, val_batches=a.val_batches)
    warmup = a.warmup if a.warmup is not None else max(1, a.steps // 10)
    start = cosine_start(problem, a.steps, a.block_len, peak_lr=a.lr, momentum=a.momentum, warmup_steps=warmup)
    meta_lrs = {"log_lr": a.meta_lr} if a.meta_lr else None
    print(f"proxy: {problem.numel} parameters in units {dict(zip(problem.units, problem.sizes))}; "
          f"T={a.steps}, blocks of {a.block_len}; learning {learn}")
    t0 = time.time()
    best, history = meta_optimize(problem, start, a.steps, a.meta_steps, learn=learn, meta_lrs=meta_lrs)
    seconds = time.time() - t0
    lrs, lrs0 = torch_lrs(problem, best, a.steps), torch_lrs(problem, start, a.steps)
    learned = {"units": problem.units, "granularity": a.granularity, "block_len": a.block_len, "learn": learn,
               "momentum": {u: best.gamma()[i].tolist() for i, u in enumerate(problem.units)},
               "init_scale": dict(zip(problem.units, best.log_init_scale.exp().tolist())),
               "weight_decay": dict(zip(problem.units, best.weight_decay.tolist())),
               "proxy_overrides": overrides, "start": {"lr": a.lr, "momentum": a.momentum, "warmup": warmup},
               "val_loss_start": history[0]["val_loss"],
               "val_loss_learned": min(h["val_loss"] for h in history if h["accepted"]),
               "inner_steps": history[-1]["inner_steps"], "seconds": round(seconds, 1),
               "buffer_bits_per_param_step": max(h["buffer_bits_per_param_step"] for h in history)}
    group_key = "kind" if a.granularity == "groups" else "layer"
    save_learned(out / "learned_schedule.json", lrs, group_key=group_key, learned=learned)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    plot_lrs(lrs0, lrs, out / "learned_lrs.png",
             f"reversibly learned lr per {'group' if a.granularity == 'groups' else 'layer'} "
             f"(proxy val {learned['val_loss_start']:.3f} -> {learned['val_loss_learned']:.3f})")
    print(f"proxy val loss: start {learned['val_loss_start']:.4f} -> learned {learned['val_loss_learned']:.4f} "
          f"({learned['inner_steps']} inner steps, {seconds:.0f} s; information buffer "
          f"{learned['buffer_bits_per_param_step']:.2f} bits/parameter/step); wrote {out / 'learned_schedule.json'}, "
          f"{out / 'learned_lrs.png'}")
    return learned


if __name__ == "__main__":
    main()
