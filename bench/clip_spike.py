"""Clipping policies against a planted gradient spike, on the tiny recipe (embedded corpus, CPU).

For each policy (none, norm, percentile, zscore, agc) and seed, two runs from the same initialization and data:
unspiked, and spiked — at step `--spike-step` one batch is corrupted so that its loss, and so its gradient, is
`--spike-scale` times larger (a corrupted batch as a single huge gradient). Prints, per policy, the final
validation loss of both runs and the worst relative gap over seeds (spiked / unspiked - 1), in one table.

    python bench/clip_spike.py                  # tiny recipe, 200 steps, spike x1000 at step 120, 3 seeds (~25 min)
    python bench/clip_spike.py --quick          # a smaller model, 40 steps, 1 seed, 2 policies (a test runs it)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

POLICIES = ["none", "norm", "percentile", "zscore", "agc"]
QUICK = [f"data.cache_dir={os.environ.get('PRETRAIN_TEST_CACHE', '~/.cache/pretrain')}", "data.max_bytes=1000000", "data.vocab_size=512", "model.d_model=64", "model.n_layer=2", "model.n_head=2",
         "train.seq_len=64", "train.global_batch_size=8", "train.micro_batch_size=4", "train.eval_batches=4",
         "clip.warmup_steps=10"]


def run(overrides: list[str], spike_step: int | None, scale: float) -> float:
    """Final validation loss of one run; the loss of global batch `spike_step` is multiplied by `scale`."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from pretrain.config import load_config
    from pretrain.loop import train
    from pretrain.tools.diagnose import planted_spike

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    with planted_spike(spike_step, scale):  # the one spike mechanism, shared with the instability diagnostics
        summary = train(load_config(overrides), log=lambda *_: None)
    return float(summary["val_loss"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--spike-step", type=int, default=120)
    ap.add_argument("--spike-scale", type=float, default=1000.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    policies = args.policies.split(",")
    steps, spike, seeds, extra = args.steps, args.spike_step, args.seeds, []
    if args.quick:
        steps, spike, seeds, extra = 40, 25, 1, QUICK
        policies = policies[:2] if args.policies == ",".join(POLICIES) else policies
    os.environ.setdefault("WANDB_MODE", "offline")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in policies:
            for seed in range(seeds):
                base = extra + [f"clip.policy={policy}", f"seed={seed}", f"train.steps={steps}",
                                "schedule.warmup_steps=30",  # the tiny recipe's warmup when the table was measured
                                f"train.eval_every={steps}", "train.progress=false"]
                clean = run(base + [f"run_dir={tmp}/{policy}_{seed}_clean"], None, args.spike_scale)
                spiked = run(base + [f"run_dir={tmp}/{policy}_{seed}_spiked"], spike, args.spike_scale)
                results.setdefault(policy, []).append({"seed": seed, "clean": clean, "spiked": spiked,
                                                       "gap": spiked / clean - 1})
                print(f"{policy:>10} seed {seed}: val loss {clean:.4f} unspiked, {spiked:.4f} spiked "
                      f"({spiked / clean - 1:+.2%})", flush=True)
    print(f"\nspike x{args.spike_scale:g} at step {spike} of {steps}; final validation loss (mean over {seeds} "
          f"seeds) and the worst gap to the unspiked run")
    print(f"{'policy':>10} {'unspiked':>9} {'spiked':>9} {'worst gap':>10}")
    for policy, rs in results.items():
        print(f"{policy:>10} {statistics.mean(r['clean'] for r in rs):9.4f} "
              f"{statistics.mean(r['spiked'] for r in rs):9.4f} {max(r['gap'] for r in rs):+10.2%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
