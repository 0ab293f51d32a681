"""Accelerators: memory and dense bf16 peak FLOP/s, one table for the planner (`pretrain.plan`) and the loop's MFU
metric (`tracking.peak_flops`). Memory is what `torch.cuda.get_device_properties(...).total_memory` reports
(nvidia-smi's MiB), not the marketing GB.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

GiB = 2 ** 30


@dataclass(frozen=True)
class GPU:
    key: str
    memory: int  # bytes
    peak_flops: float  # dense bf16 FLOP/s
    match: str  # a substring of torch.cuda.get_device_name()


GPUS = {g.key: g for g in (
    GPU("h100-80gb", 81559 * 2 ** 20, 989e12, "H100"),
    GPU("h100-94gb", 95830 * 2 ** 20, 989e12, "H100 NVL"),
    GPU("h200-141gb", 143771 * 2 ** 20, 989e12, "H200"),
    GPU("h800-80gb", 81559 * 2 ** 20, 989e12, "H800"),
    GPU("b200-180gb", 183359 * 2 ** 20, 2250e12, "B200"),
    GPU("a100-80gb", 81251 * 2 ** 20, 312e12, "A100-SXM4-80GB"),
    GPU("a100-40gb", 40960 * 2 ** 20, 312e12, "A100"),
    GPU("a800-80gb", 81251 * 2 ** 20, 312e12, "A800"),
    GPU("l40s-48gb", 46068 * 2 ** 20, 362e12, "L40S"),
    GPU("a10g-24gb", 23028 * 2 ** 20, 70e12, "A10G"),
    GPU("l4-24gb", 23034 * 2 ** 20, 121e12, "L4"),
    GPU("v100-32gb", 32768 * 2 ** 20, 125e12, "V100"),
)}


def gpu_named(key: str, field: str = "gpu") -> GPU:
    if key not in GPUS:
        raise ConfigError(field, f"unknown GPU {key!r}", sorted(GPUS), got=key)
    return GPUS[key]


def gpu_of_device(device) -> GPU | None:
    """The table's entry for a CUDA device (the most specific name match; memory from the device), or None."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    found = [g for g in GPUS.values() if g.match in name]
    if not found:
        return None
    best = max(found, key=lambda g: len(g.match))
    return GPU(best.key, torch.cuda.get_device_properties(device).total_memory, best.peak_flops, best.match)
