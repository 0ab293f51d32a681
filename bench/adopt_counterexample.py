#!/usr/bin/env python
"""Adam's counterexample (Reddi et al. 2018, the problem ADOPT's introduction opens with): does the optimizer
find the minimum of a convex function on [-1, 1] whose gradients are mostly -1 with a rare large positive one?

    online:      f_t(x) = C x if t mod 3 == 1 else -x    (t = 1, 2, ...; C = 3): the average gradient (C - 2)/3 > 0
    stochastic:  g_t = k with probability 1/k, else -1    (k = 10, 50): E[g] = 1/k > 0

The minimum is x = -1 in both. Adam divides the rare large gradient by a second moment that contains it, so that
step is small, while the many -1 steps are divided by a second moment that has forgotten it (small beta2): it
drifts to the worst point x = +1. ADOPT normalizes by the second moment of the previous steps only, so the large
gradient keeps its weight (in expectation the update points the right way for any beta2; Taniguchi et al. 2024).

Every optimizer runs from the registry (adam = torch.optim.Adam; adopt = this project's ADOPT, with its clip
t**0.25 and with the clip off, `clip_exponent=None`) plus torch's AMSGrad as the known fix, with beta1 = 0
(the online problem, as in Reddi et al.'s Theorem 1, and 0.9) or 0.9 (the stochastic ones),
eps = 1e-8 (Adam, AMSGrad) / 1e-6 (ADOPT's default), the lr alpha/sqrt(t) of Reddi et al.'s analysis (alpha =
0.1), x projected onto [-1, 1] after every step (x_0 = 0), for each beta2 in 0.1, 0.5, 0.9, 0.99, 0.999 (one
parameter group each). The stochastic problems run --runs independent chains at once (one element of the
parameter each: every update here is elementwise), gradients from a seeded generator.

Printed per problem, optimizer and beta2: the mean of x over the last 10% of steps (averaged over chains) and,
for the stochastic ones, the fraction of chains whose mean is below 0 (on the minimum's side).

    python bench/adopt_counterexample.py            # 50k steps, 256 chains (~6 min on 2 CPU cores)
    python bench/adopt_counterexample.py --quick    # 3k steps, 32 chains (a test runs it)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sample_efficiency import provenance  # noqa: E402

BETA2 = [0.1, 0.5, 0.9, 0.99, 0.999]
OPTIMIZERS = ["adam", "amsgrad", "adopt", "adopt_noclip"]
# name -> (kind, C or k, beta1): Reddi et al.'s Theorem 1 takes beta1 = 0; the stochastic ones the usual 0.9
PROBLEMS = {"online C=3, beta1=0": ("online", 3.0, 0.0), "online C=3, beta1=0.9": ("online", 3.0, 0.9),
            "stochastic k=10": ("stochastic", 10.0, 0.9), "stochastic k=50": ("stochastic", 50.0, 0.9)}


def make_optimizer(name: str, params: list[torch.Tensor], beta1: float) -> torch.optim.Optimizer:
    from pretrain.optim import build_optimizer
    groups = [{"params": [p], "betas": (beta1, b2)} for p, b2 in zip(params, BETA2)]
    if name == "amsgrad":  # torch's own; not a registry name
        return torch.optim.Adam(groups, lr=1.0, eps=1e-8, amsgrad=True, foreach=False)
    if name == "adam":
        opt = build_optimizer("adam", groups, lr=1.0)
    else:
        opt = build_optimizer("adopt", groups, lr=1.0,
                              **({"clip_exponent": None} if name == "adopt_noclip" else {}))
    for g, b2 in zip(opt.param_groups, BETA2):
        assert g["betas"] == (beta1, b2), g["betas"]
    return opt


def run(problem: str, name: str, steps: int, runs: int, alpha: float, seed: int) -> dict[float, dict]:
    """Per beta2: mean of x over the last 10% of steps (over chains), and the fraction of chains below 0."""
    kind, c, beta1 = PROBLEMS[problem]
    n = 1 if kind == "online" else runs
    xs = [torch.zeros(n, dtype=torch.float64, requires_grad=True) for _ in BETA2]
    opt = make_optimizer(name, xs, beta1)
    gen = torch.Generator().manual_seed(seed)
    tail = steps - steps // 10
    sums = [torch.zeros(n, dtype=torch.float64) for _ in BETA2]
    for t in range(1, steps + 1):
        for x in xs:
            if kind == "online":
                x.grad = torch.full_like(x, c if t % 3 == 1 else -1.0)
            else:
                x.grad = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < 1.0 / c,
                                     torch.full_like(x, c), torch.full_like(x, -1.0))
        for g in opt.param_groups:
            g["lr"] = alpha / t ** 0.5
        opt.step()
        with torch.no_grad():
            for x, s in zip(xs, sums):
                x.clamp_(-1.0, 1.0)
                if t > tail:
                    s += x
    out = {}
    for b2, s in zip(BETA2, sums):
        mean = s / (steps - tail)
        out[b2] = {"x": float(mean.mean()), "below_zero": float((mean < 0).double().mean())}
    return out


def render(res: dict) -> str:
    """The table this benchmark prints, from its JSON (the README's table is this text)."""
    betas = list(next(iter(next(iter(res["results"].values())).values())))
    lines = [f"mean x over the last 10% of {res['steps']} steps (minimum at -1, worst point +1); stochastic: "
             f"{res['runs']} chains, [fraction of chains below 0]", "",
             "| problem | optimizer | " + " | ".join(f"beta2={b}" for b in betas) + " |",
             "|---|---|" + "---|" * len(betas)]
    for p, per in res["results"].items():
        for o, r in per.items():
            cells = [f"{r[b]['x']:+.3f}" + ("" if p.startswith("online") else f" [{r[b]['below_zero']:.2f}]")
                     for b in betas]
            lines.append(f"| {p} | {o} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="default 50000 (3000 with --quick)")
    ap.add_argument("--runs", type=int, default=None, help="independent chains per stochastic problem "
                                                           "(default 256; 32 with --quick)")
    ap.add_argument("--alpha", type=float, default=0.1, help="lr at step t: alpha / sqrt(t)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    steps = a.steps or (3000 if a.quick else 50_000)
    runs = a.runs or (32 if a.quick else 256)
    torch.set_num_threads(1)
    meta = provenance()
    results = {p: {o: {str(b): v for b, v in run(p, o, steps, runs, a.alpha, a.seed).items()} for o in OPTIMIZERS}
               for p in PROBLEMS}
    res = {**meta, "steps": steps, "runs": runs, "alpha": a.alpha, "seed": a.seed, "results": results}
    print(render(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return results


if __name__ == "__main__":
    main()
