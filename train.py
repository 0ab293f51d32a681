#!/usr/bin/env python
"""Pretrain a GPT from a recipe.

    python train.py                                   # the tiny recipe on the embedded corpus (CPU, minutes)
    python train.py recipe=125m_cosine optim=lion optim.lr=3e-4 train.steps=200 run_dir=/tmp/run
    accelerate launch --config_file launch/ddp.yaml train.py recipe=1b_wsd
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from pretrain.errors import ConfigError  # noqa: E402


def main(argv) -> int:
    from pretrain.config import load_config
    try:
        cfg = load_config(argv)
        from pretrain.loop import train
        train(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
