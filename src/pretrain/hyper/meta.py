"""Meta-optimization with reversible hypergradients (Maclaurin et al. 2015, section 3): repeat
{train the proxy T steps forward, reverse them for d val_loss / d hyperparameters, one Adam step on the
hyperparameters}, then export the learned lr schedule per unit.

The starting point (`cosine_start`) is the recipe's cosine schedule in torch's SGD form (lr eta, momentum mu:
buf = mu buf + g, x -= eta buf), the same trajectory as the paper's form v = gamma v - (1 - gamma) g,
x += alpha v with gamma = mu, alpha = eta / (1 - mu) while gamma is constant; the export maps back:
eta_t = alpha_t (1 - gamma_t) per unit.
"""
from __future__ import annotations

import copy
import math
import time

import torch

from .reversible import Hypers, Problem, forward, hypergradient

# Adam step sizes on each raw meta-parameter (log lr, logit momentum, log init scale: relative changes;
# weight decay: absolute)
META_LRS = {"log_lr": 0.1, "logit_momentum": 0.1, "log_init_scale": 0.05, "weight_decay": 1e-4}
LEARN_NAMES = {"lr": "log_lr", "momentum": "logit_momentum", "init": "log_init_scale", "wd": "weight_decay"}


def cosine_start(problem: Problem, steps: int, block_len: int, *, peak_lr: float, momentum: float,
                 warmup_steps: int, min_lr_ratio: float = 0.1) -> Hypers:
    """Hypers for the registry's cosine schedule (torch-SGD lr eta_t, momentum mu), one value per block (the
    block's mean lr), every unit alike."""
    from ..schedules import build_schedule

    sched = build_schedule("cosine", peak_lr=peak_lr, total_steps=steps, warmup_steps=warmup_steps,
                           min_lr_ratio=min_lr_ratio)
    hp = Hypers.constant(len(problem.units), steps, block_len, lr=1.0, momentum=momentum)
    gamma = hp.gamma()
    for b in range(hp.log_lr.shape[1]):
        lrs = [sched(t) for t in range(b * block_len, min(steps, (b + 1) * block_len))]
        hp.log_lr[:, b] = torch.log(torch.tensor(sum(lrs) / len(lrs), dtype=torch.float64) / (1 - gamma[:, b]))
    return hp


def torch_lrs(problem: Problem, hp: Hypers, steps: int) -> dict[str, list[float]]:
    """The learned schedule in torch's SGD form: eta_t = alpha_t (1 - gamma_t), per unit, per step."""
    eta = hp.alpha() * (1 - hp.gamma())
    return {u: [float(eta[i, t // hp.block_len]) for t in range(steps)] for i, u in enumerate(problem.units)}


def meta_optimize(problem: Problem, hp: Hypers, steps: int, meta_steps: int, *, learn=("lr", "momentum", "init", "wd"),
                  meta_lrs: dict | None = None, log=print) -> tuple[Hypers, list[dict]]:
    """Up to `meta_steps` Adam steps on the hyperparameters named in `learn` (lr, momentum, init, wd) against the
    proxy's validation loss after `steps` inner steps, with backtracking: a step whose inner run ends worse
    (or non-finite) is undone without its reverse pass and retaken from the last point's hypergradient with
    half the step sizes (Adam restarted). Returns the best hyperparameters (the last accepted point) and the
    history (one row per forward pass: val_loss, accepted, seconds, inner steps run so far, forward and reverse,
    the information buffer's bits per parameter per step)."""
    lrs = {**META_LRS, **(meta_lrs or {})}
    names = [LEARN_NAMES[k] for k in learn]
    raw = {k: v.clone() for k, v in hp.tensors().items()}

    def adam():
        return torch.optim.Adam([{"params": [raw[k]], "lr": lrs[k]} for k in names])

    def take_step(opt, grads):
        with torch.no_grad():
            for k in names:
                raw[k].grad = grads[k].clone()
            opt.step()
            raw["weight_decay"].clamp_(min=0.0)

    opt = adam()
    history, inner, t0 = [], 0, time.time()
    best, prev = None, None  # prev: (raw, grads, val loss) of the last accepted point
    for i in range(meta_steps + 1):
        cur = Hypers(**{k: v.detach().clone() for k, v in raw.items()}, block_len=hp.block_len)
        traj = forward(problem, cur, steps)
        inner += steps
        with torch.no_grad():
            f = float(problem.val_loss(traj.x()))
        accepted = math.isfinite(f) and (prev is None or f <= prev[2])
        history.append({"meta_step": i, "val_loss": f, "accepted": accepted, "seconds": round(time.time() - t0, 2),
                        "inner_steps": inner, "buffer_bits_per_param_step":  # the stack's peak + an int64 each
                        (traj.stats["buffer_peak_bytes"] + 8 * problem.numel) * 8 / (problem.numel * steps)})
        log(f"meta step {i}: proxy val loss {f:.4f}{'' if accepted else ' (worse: step halved)'} "
            f"({inner} inner steps, {time.time() - t0:.0f} s)")
        if not accepted:
            if prev is None:
                raise FloatingPointError(f"the starting hyperparameters diverge on the proxy (val loss {f})")
            raw = {k: v.clone() for k, v in prev[0].items()}
            lrs = {k: v * 0.5 for k, v in lrs.items()}
            opt = adam()
            take_step(opt, prev[1])
            continue
        best = (f, cur)
        if i == meta_steps:
            break
        grads, _ = hypergradient(problem, cur, traj)
        inner += steps
        prev = ({k: v.clone() for k, v in raw.items()}, grads, f)
        take_step(opt, grads)
    return copy.deepcopy(best[1]), history
