"""Linear regression with known gradient noise through the loop's step engine (`step.LoopEngine`): the online
gradient noise scale after many steps at fixed weights (lr 0), written as JSON. Run by test_noise_scale.py with one
process (micro-batch vs accumulated gradient) and under torchrun with two (per-rank vs all-reduced).

    python noise_scale_regression.py OUT.json STEPS GLOBAL_BATCH MICRO_BATCH
"""
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

D, N, SIGMA = 64, 100_000, 0.5


def problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D))
    w_star = rng.standard_normal(D)
    y = x @ w_star + SIGMA * rng.standard_normal(N)
    w0 = w_star + 0.3 * rng.standard_normal(D)  # the fixed point at which the noise scale is measured
    return x, y, w0


class Regression(nn.Module):
    """input_ids: example indices (micro x 1); loss = mean over the batch of (x.w - y)^2 / 2."""

    def __init__(self, x, y, w0):
        super().__init__()
        self.register_buffer("x", torch.tensor(x))
        self.register_buffer("y", torch.tensor(y))
        self.w = nn.Parameter(torch.tensor(w0).unsqueeze(0))  # 1 x D: a matrix, like every model weight

    def forward(self, input_ids, labels=None):
        i = input_ids[:, 0]
        r = self.x[i] @ self.w[0] - self.y[i]
        return SimpleNamespace(loss=0.5 * (r * r).mean())


def main(out, steps, global_batch, micro):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    from pretrain.batch_size import BatchSizes
    from pretrain.clipping import build_clip_policy
    from pretrain.config import ClipConfig
    from pretrain.data import PackedLoader
    from pretrain.noise_scale import NoiseScale
    from pretrain.step import LoopEngine

    world = int(os.environ.get("WORLD_SIZE", "1"))
    accum = global_batch // (micro * world)
    acc = Accelerator(cpu=True, gradient_accumulation_steps=accum,
                      kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if world > 1 else [])
    x, y, w0 = problem()
    model = Regression(x, y, w0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for g in opt.param_groups:
        g["initial_lr"] = 0.0
    model, opt = acc.prepare(model, opt)
    loader = PackedLoader(np.arange(N), seq_len=1, global_batch=global_batch, micro_batch=micro,
                          rank=acc.process_index, world=world, seed=0)
    batches = BatchSizes(global_batch, seq_len=1, quantum=micro * world)
    loader.batch_sizes = batches
    noise = NoiseScale(0.99)
    engine = LoopEngine(acc, model, model, opt, loader, batches=batches, seed=0,
                        clip=build_clip_policy(ClipConfig(policy="none"), acc.unwrap_model(model)),
                        is_deepspeed=False, noise=noise)
    for step in range(steps):
        engine.train_step(step, 1.0)
    if acc.is_main_process:
        with open(out, "w") as f:
            json.dump({"b_noise": noise.value(), "n": noise.n, "world": world, "accum": accum}, f)


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:5]))
