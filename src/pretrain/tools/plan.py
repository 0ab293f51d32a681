"""Plan a cluster run before launching it (pretrain.plan): memory per GPU by strategy, the largest micro batch that
fits, tokens/s, wall time and cost.

    python -m pretrain.tools.plan recipe=1b_wsd                       # the recipe's stated hardware, every strategy
    python -m pretrain.tools.plan recipe=7b_wsd --gpus 256 --gpu h100-80gb --strategy fsdp --mfu 0.35 \\
        --price-per-gpu-hour 2.5 [--checkpointing] [--json]

Recipe overrides (Hydra syntax) go before or after the flags; --gpus / --gpu / --strategy default to the recipe's
`hardware` block. Bad input is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import ConfigError
from ..hardware import GPUS, GiB
from ..plan import STRATEGIES, plan_run


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m pretrain.tools.plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, help="number of GPUs (default: the recipe's hardware.gpus)")
    ap.add_argument("--gpu", help=f"GPU type, one of {', '.join(sorted(GPUS))} (default: hardware.gpu)")
    ap.add_argument("--strategy", help=f"one of {', '.join(STRATEGIES)} (default: all)")
    ap.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization for the time estimate (0, 1]")
    ap.add_argument("--price-per-gpu-hour", type=float, help="price of one GPU-hour, for the cost")
    ap.add_argument("--checkpointing", action="store_true", help="plan with activation checkpointing")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return ap.parse_known_args(argv)


def plans(argv) -> list:
    from ..config import load_config

    args, overrides = parse(argv)
    cfg = load_config(overrides)
    hw = cfg.hardware
    gpus, gpu = args.gpus or hw.gpus, args.gpu or hw.gpu
    if gpus is None or gpu is None:
        raise ConfigError("gpus", f"recipe {cfg.recipe!r} states no hardware: pass --gpus N --gpu NAME", sorted(GPUS))
    strategies = [args.strategy] if args.strategy else list(STRATEGIES)
    return [plan_run(cfg, gpus=gpus, gpu=gpu, strategy=s, mfu=args.mfu, price_per_gpu_hour=args.price_per_gpu_hour,
                     checkpointing=True if args.checkpointing else None) for s in strategies], args


def table(plans_: list) -> str:
    p0 = plans_[0]
    head = (f"{p0.recipe} on {p0.gpus} x {p0.gpu} ({p0.available / GiB:.1f} GiB each), micro batch {p0.micro_batch}"
            f"{', activation checkpointing' if p0.checkpointing else ''}; GiB per GPU:")
    cols = ["strategy", "params", "grads", "optim", "activ.", "temp", "total", "fits", "max micro"]
    lines = [head, " ".join(f"{c:>9}" for c in cols)]
    for p in plans_:
        m = p.memory
        vals = [p.strategy] + [f"{m[k] / GiB:.1f}" for k in ("parameters", "gradients", "optimizer", "activations",
                                                           "temporaries", "total")]
        vals += ["yes" if p.fits else "NO", str(p.max_micro_batch)]
        lines.append(" ".join(f"{v:>9}" for v in vals))
    cost = f", cost {p0.cost:,.0f}" if p0.cost is not None else ""
    lines.append(f"throughput {p0.tokens_per_s:,.0f} tokens/s; wall time {p0.hours:.1f} h{cost}")
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        result, args = plans(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(f"plan error: {e}", file=sys.stderr)
        return 2
    print(json.dumps([p.as_dict() for p in result], indent=1) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
