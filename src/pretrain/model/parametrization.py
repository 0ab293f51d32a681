"""Every initialization and every forward multiplier of the GPT, in one place.

Standard parametrization (SP, GPT-2 / Llama style): weights ~ N(0, init_std^2), residual output projections
(o_proj, down_proj) scaled by 1/sqrt(2 * n_layer), attention scale 1/sqrt(d_head), no multipliers.
muP (a later stage) plugs in here: it changes `init_std_for`, `attn_scale`, the multipliers and the
per-kind learning-rate multipliers, and nothing else in the model needs to change.
"""
from __future__ import annotations

import math

from torch import nn


def attn_scale(config) -> float:
    return config.attn_scale if config.attn_scale is not None else 1.0 / math.sqrt(config.head_dim)


def init_std_for(config, name: str, module: nn.Module) -> float:
    std = config.init_std
    if name.endswith(("o_proj", "down_proj")):
        std = std / math.sqrt(2 * config.n_layer)
    return std


def init_weights(model) -> None:
    """Initialize all weights of a GPT (called once after construction)."""
    config = model.config
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=init_std_for(config, name, module))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=config.init_std)
        elif hasattr(module, "weight") and module.__class__.__name__ == "RMSNorm":
            nn.init.ones_(module.weight)
