"""muTransfer on CPU: does the optimal learning rate stay put as the model grows?

Width: SP vs muP, widths 64..512 at depth 2. Depth: muP vs CompleteP, depths 2..16 at width 64. Each point is the
final validation loss of a short AdamW run on the embedded stdlib corpus (constant lr after a short warmup), averaged
over seeds; `pretrain.tools.lr_sweep` finds the optimum per width (depth) and the drift slope of log2 lr* per
log2 width (depth). What it must show: |drift| under muP < 0.15 and clearly larger under SP; the same across depth
for CompleteP vs muP.

    python bench/mutransfer.py                       # both sweeps, 3 seeds (~2.5 h on a shared 2-core CPU)
    python bench/mutransfer.py --only width          # or depth
    python bench/mutransfer.py --quick               # smoke run: 2 widths x 3 lrs x 1 seed, 10 steps (~1 min)

Runs append to <out>/results.jsonl as they finish; rerunning continues where it stopped. Prints the tables and the
drift slopes and writes <out>/width.png, <out>/depth.png.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

COMMON = ["model.n_head=4", "train.seq_len=32", "train.global_batch_size=8", "train.micro_batch_size=8",
          "train.eval_batches=8", "data.vocab_size=512", "data.max_bytes=2000000", "optim=adamw",
          "optim.weight_decay=0.0", "schedule=constant", "schedule.warmup_steps=10", "clip.policy=norm",
          "train.progress=false", "log.log_every=10", "train.compile_optimizer=never",
          f"data.cache_dir={os.path.expanduser(os.environ.get('PRETRAIN_TEST_CACHE', '~/.cache/pretrain'))}"]


def main(argv=None) -> int:
    import torch

    from pretrain.tools import lr_sweep

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["width", "depth"], default=None)
    ap.add_argument("--widths", default="64,128,256,512")
    ap.add_argument("--depths", default="2,4,8,16")
    ap.add_argument("--log2-lrs", default="-10:-5")
    ap.add_argument("--sp-log2-lrs", default="-12:-5", help="SP's grid (its optimum moves down with the width)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default="runs/bench_mutransfer")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.quick:
        a.widths, a.depths, a.log2_lrs, a.seeds, a.steps = "32,64", "1,2", "-8:-4:2", "0", 10
    grid = lambda text: lr_sweep.parse_lrs(argparse.Namespace(lrs=None, log2_lrs=text))  # noqa: E731
    lrs, sp_lrs = grid(a.log2_lrs), grid(a.sp_log2_lrs if not a.quick else a.log2_lrs)
    seeds = [int(s) for s in a.seeds.split(",")]
    width = 64 if not a.quick else 32
    sweeps = {"width": (("sp", "mup"), [int(v) for v in a.widths.split(",")], ["model.n_layer=2"]),
              "depth": (("mup", "completep"), [int(v) for v in a.depths.split(",")], [f"model.d_model={width}"])}
    slopes = {}
    for axis, (names, xs, fixed) in sweeps.items():
        if a.only and axis != a.only:
            continue
        out = os.path.join(a.out, axis)
        results = {}
        for i in range(len(seeds)):  # seed by seed, both parametrizations: a partial run already compares them
            for name in names:
                lr_sweep.sweep(parametrization=name, xs=xs, axis=axis, lrs=sp_lrs if name == "sp" else lrs,
                               seeds=seeds[:i + 1], steps=a.steps, out=out, overrides=COMMON + fixed,
                               base_width=width, runner="fast", log=lambda m: print(m, flush=True))
        for name in names:
            rows = [r for r in lr_sweep.read_results(os.path.join(out, "results.jsonl"))
                    if r["parametrization"] == name and r["seed"] in seeds and r[axis] in xs
                    and r["lr"] in (sp_lrs if name == "sp" else lrs)]
            results[name] = lr_sweep.summarize(rows, axis)
            print(lr_sweep.table(*results[name], axis, f"### {name} ({axis}, {len(seeds)} seeds, {a.steps} steps)"))
            slopes[(axis, name)] = results[name][2]
        lr_sweep.plot(results, axis, os.path.join(a.out, f"{axis}.png"))
        print(f"plot: {os.path.join(a.out, f'{axis}.png')}", flush=True)
    print("drift of log2 lr* per log2 width (depth):")
    for (axis, name), s in slopes.items():
        print(f"  {axis:5s} {name:9s} {s:+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
