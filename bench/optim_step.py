#!/usr/bin/env python
"""Optimizer step time on a GPT's parameter set, as a ratio to torch's fused AdamW, eager and compiled.

For each registered optimizer (`pretrain.optim.OPTIMIZERS`, built by `build_optimizer` on the model so the
parameter groups are the real ones) this prints its step time divided by the step time of
`torch.optim.AdamW(fused=True)` measured in the same rounds (baseline, eager, compiled and the reference
packages' optimizers take turns, in a rotating order, every round; the ratio is the median over rounds of
time / baseline time of that round), and its optimizer state in bytes per parameter.

Only the parameters exist (no forward pass): every parameter gets one fixed random gradient, and every
optimizer steps on the same parameters (values drift; the timing does not depend on them).

Optimizers that need a closure (line searches: `requires_closure`) are timed with a trivial closure that runs
no forward or backward pass (sgd_armijo: a loss that drops by 1e30 at every call, so the first trial step is
accepted; vsgd: a constant loss, the gradients left as they are): their ratio is the optimizer's own work
only, without the 1-2 extra forward(-backward) passes per step they need in training.

Reference packages (bench/requirements.txt; skipped when not installed): torch-adopt (`adopt.ADOPT`),
lion-pytorch (`lion_pytorch.Lion`), pytorch-optimizer (`pytorch_optimizer.ADOPT/Lion/Lamb/LARS`), built with
foreach=True where they take it.

    python bench/optim_step.py                        # every optimizer, 124M-parameter GPT
    python bench/optim_step.py --small --optims adopt,lion --repeats 3
    python bench/optim_step.py --compile none --json out.json
    python bench/optim_step.py --device cuda --no-reference   # on a GPU: 20 steps per timing, synchronized

Compile time (the first compiled call(s)) is printed separately and not counted in the step time.

The fused CPU kernels of the opt-in speed layer (`pretrain.optim.fast.enable_kernels()`, as in training) are
enabled for every optimizer, eager and compiled; `PRETRAIN_CPU_KERNELS=0` measures the plain torch-op passes.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")

# name -> [(label, module, factory(param groups) -> optimizer)]; lr/betas/eps as this package's defaults
REFERENCES = {
    "adopt": [
        ("torch-adopt", "adopt",
         lambda m, gs: m.ADOPT(gs, lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, decouple=True, foreach=True)),
        ("pytorch-optimizer", "pytorch_optimizer",
         lambda m, gs: m.ADOPT(gs, lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, weight_decouple=True, foreach=True)),
    ],
    "lion": [
        ("lion-pytorch", "lion_pytorch", lambda m, gs: m.Lion(gs, lr=1e-4, betas=(0.9, 0.99))),
        ("pytorch-optimizer", "pytorch_optimizer", lambda m, gs: m.Lion(gs, lr=1e-4, betas=(0.9, 0.99), foreach=True)),
    ],
    "lamb": [
        ("pytorch-optimizer", "pytorch_optimizer",
         lambda m, gs: m.Lamb(gs, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, max_grad_norm=0.0, foreach=True)),
    ],
    "lars": [
        ("pytorch-optimizer", "pytorch_optimizer",
         lambda m, gs: m.LARS(gs, lr=1.0, momentum=0.9, trust_coefficient=1e-3, foreach=True)),
    ],
}

# Memory-traffic floor of a step, for the optimizers written here (registry defaults, fp32 state): bytes per
# parameter that the update rule must move at least, counting 4 for a tensor read, 8 for one read and written
# (and 8 for one only written: the CPU reads a cache line before writing it). On a step that is bound by memory
# bandwidth (fused AdamW's is, here), `MIN_BYTES[name] / MIN_BYTES["adamw"]` is the best ratio to fused AdamW a
# kernel can reach at AdamW's bandwidth: the `bound` column.
MIN_BYTES = {
    "adamw": 28,  # p, m, v read+written, g read
    "adopt": 28,  # same tensors as AdamW
    "lion": 20,  # p, m, g
    "sophia": 24,  # p, m, g; the Hessian EMA h only read (it is written every k-th step, by the estimate)
    # two passes (a reduction over all of a tensor must finish before its update):
    "lars": 28,  # 1: ||w||, ||g|| (w, g read); 2: g read, w and the momentum buffer read+written
    "lamb": 40,  # 1: m, v updated, r and ||w||, ||r|| on the fly (g, w read); 2: r recomputed (m, v, w read), w written
    "sgd_hd": 24,  # 1: h = g.u_prev, u_prev <- g (g read, u_prev read+written); 2: p read+written, u_prev read
    "adam_hd": 36,  # 1: h from m, v of t-1, then m, v updated (g read, m, v read+written); 2: m, v read, p written
    "rdbd": 52,  # one pass: g read; p, a, gbar, last_raise, m, v read+written (base=adam)
}

# compile pays when the compiled step takes less than this fraction of the eager one (median over rounds)
PAYS_BELOW = 0.9

# extra hyperparameters the benchmark has to give (no training loop fills them)
EXTRA_HPARAMS = {"sophia": {"bs": 480 * 1024}}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--optims", default="", help="comma-separated registered names (default: all)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per optimizer (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each optimizer first (default 2)")
    ap.add_argument("--small", action="store_true", help="a ~10M-parameter GPT instead of the 124M one")
    ap.add_argument("--compile", choices=("auto", "all", "none"), default="auto",
                    help="auto: compile the optimizers that compile cleanly (not closure-based, not known to "
                         "fail); all: try every one; none: eager only. PRETRAIN_SKIP_COMPILE=1 means none.")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference packages")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine several threads wait on each other and "
                         "the ratios become noise; 0 = torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the parameters live")
    ap.add_argument("--calls", type=int, default=None,
                    help="optimizer steps per timing (default 1 on CPU, 20 on CUDA, synchronized at the end)")
    ap.add_argument("--json", default=None, help="write the results here")
    return ap.parse_args(argv)


def model_config(small: bool):
    from pretrain.model.gpt import GPTConfig
    if small:
        return GPTConfig(vocab_size=16384, d_model=256, n_layer=8, n_head=4)
    return GPTConfig(vocab_size=50304, d_model=768, n_layer=12, n_head=12)


def state_bytes(opt) -> int:
    seen, total = set(), 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v) and id(v) not in seen:
                seen.add(id(v))
                total += v.numel() * v.element_size()
    return total


class TrivialClosure:
    """sgd_armijo: a loss that drops by 1e30 at each call (first trial accepted); vsgd: grads left as they are."""

    def __init__(self):
        self.calls = 0

    def __call__(self, backward: bool = False):
        self.calls += 1
        return -1e30 * self.calls


CALLS = 1  # steps per timing; main sets it from --calls / --device
SYNC = lambda: None  # noqa: E731 -- torch.cuda.synchronize on CUDA


def timed(fn) -> float:
    """Seconds per call of fn, over CALLS calls (the device synchronized before and after)."""
    SYNC()
    t = time.perf_counter()
    for _ in range(CALLS):
        fn()
    SYNC()
    return (time.perf_counter() - t) / CALLS


def compile_candidates(mode: str, names) -> set:
    from pretrain.optim import OPTIMIZERS
    from pretrain.optim.fast.compiled import not_compilable
    if mode == "none" or os.environ.get("PRETRAIN_SKIP_COMPILE") == "1":
        return set()
    if mode == "all":
        return set(names)
    return {n for n in names if n not in not_compilable() and OPTIMIZERS[n].source == "here"}


def build_references(name, model, spec, skip: bool):
    """[(label, optimizer or None, error)] for the reference packages of `name`."""
    import importlib

    from pretrain.optim import build_param_groups
    out = []
    if skip:
        return out
    for label, module, factory in REFERENCES.get(name, []):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            out.append((label, None, "not installed"))
            continue
        groups = build_param_groups(model, lr=spec.defaults["lr"], weight_decay=spec.defaults.get("weight_decay", 0.0))
        groups = [{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]} for g in groups]
        try:
            out.append((label, factory(mod, groups), None))
        except Exception as e:  # noqa: BLE001 -- report it in the table
            out.append((label, None, f"{type(e).__name__}: {e}"[:80]))
    return out


def bench_one(name, model, baseline, args, compile_names, log) -> dict:
    import torch._dynamo.utils as dyn_utils

    from pretrain.optim import OPTIMIZERS, build_optimizer, has_train_eval, requires_closure
    from pretrain.optim.fast.compiled import compile_step

    spec = OPTIMIZERS[name]
    row = {"name": name, "source": spec.source, "eager": None, "compiled": None, "compile_s": None,
           "bound": MIN_BYTES[name] / MIN_BYTES["adamw"] if name in MIN_BYTES else None,
           "references": {}, "state_bytes_per_param": None, "note": ""}
    n_params = sum(p.numel() for p in model.parameters())
    try:
        opt = build_optimizer(name, model, **EXTRA_HPARAMS.get(name, {}))
    except Exception as e:  # noqa: BLE001
        row["note"] = f"cannot build: {type(e).__name__}: {e}"[:120]
        return row
    if has_train_eval(opt):
        opt.train()
    closure = TrivialClosure() if requires_closure(opt) else None
    if closure is not None:
        row["note"] = "timed with a trivial closure (no forward/backward)"
    warmup = args.warmup + (int(opt.param_groups[0].get("n0", 0)) if name == "vsgd" else 0)  # past slow start
    try:
        for _ in range(max(1, warmup)):
            opt.step(closure) if closure is not None else opt.step()
    except Exception as e:  # noqa: BLE001
        row["note"] = f"step fails: {type(e).__name__}: {e}"[:120]
        return row
    row["state_bytes_per_param"] = state_bytes(opt) / n_params

    cands = {"eager": (lambda: opt.step(closure)) if closure is not None else opt.step}
    if name in compile_names and closure is None:
        try:
            compile_step(opt)
            t0 = time.perf_counter()
            opt.step()
            opt.step()
            row["compile_s"] = time.perf_counter() - t0
            graphs = dyn_utils.counters["stats"]["unique_graphs"]
            cands = {"eager": opt.step.eager, "compiled": opt.step}
        except Exception as e:  # noqa: BLE001
            row["note"] = (row["note"] + "; " if row["note"] else "") + f"compile fails: {type(e).__name__}"
            log(f"  {name}: compile fails: {type(e).__name__}: {str(e)[:200]}")
    refs = build_references(name, model, spec, args.no_reference)
    for label, ref, err in refs:
        if ref is None:
            row["references"][label] = err
            continue
        try:
            for _ in range(args.warmup):
                ref.step()
            cands[label] = ref.step
        except Exception as e:  # noqa: BLE001
            row["references"][label] = f"step fails: {type(e).__name__}"

    ratios = {k: [] for k in cands}
    times = {k: [] for k in ["baseline", *cands]}
    order = list(cands)
    for r in range(args.repeats):
        tb = timed(baseline.step)
        times["baseline"].append(tb)
        rot = order[r % len(order):] + order[:r % len(order)]
        for k in rot:
            t = timed(cands[k])
            times[k].append(t)
            ratios[k].append(t / tb)
    med = {k: statistics.median(v) for k, v in ratios.items()}
    row["eager"] = med.get("eager")
    row["compiled"] = med.get("compiled")
    row["step_ms"] = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    if "compiled" in cands:
        row["compiled_over_eager"] = statistics.median(c / e for c, e in zip(times["compiled"], times["eager"]))
        row["compile_pays"] = row["compiled_over_eager"] < PAYS_BELOW
        if dyn_utils.counters["stats"]["unique_graphs"] != graphs:
            row["note"] = (row["note"] + "; " if row["note"] else "") + "recompiled while timed"
    for label, _, err in refs:
        if label in med:
            row["references"][label] = med[label]
    del opt, cands, refs
    gc.collect()
    return row


def fmt(x, spec="{:.2f}"):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return spec.format(x)


def table(rows) -> str:
    head = ["optimizer", "source", "eager", "compiled", "bound", "compile s", "reference packages", "state B/param",
            "note"]
    body = []
    for r in rows:
        refs = ", ".join(f"{k} {fmt(v)}" if not isinstance(v, str) else f"{k} ({v})"
                         for k, v in r["references"].items()) or "-"
        body.append([r["name"], r["source"], fmt(r["eager"]), fmt(r["compiled"]), fmt(r.get("bound")),
                     fmt(r["compile_s"], "{:.0f}"),
                     refs, fmt(r["state_bytes_per_param"], "{:.2f}"), r["note"] or ""])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def main(argv=None) -> int:
    args = parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    from pretrain.model.gpt import GPT
    from pretrain.optim import OPTIMIZERS, build_param_groups, fast

    fast.enable_kernels()  # the fused CPU kernels, as the training loop uses them
    names = [n.strip() for n in args.optims.split(",") if n.strip()] or sorted(OPTIMIZERS)
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        print(f"unknown optimizers: {unknown}; registered: {sorted(OPTIMIZERS)}", file=sys.stderr)
        return 2
    compile_names = compile_candidates(args.compile, names)

    global CALLS, SYNC
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device", file=sys.stderr)
            return 2
        SYNC = torch.cuda.synchronize
    CALLS = args.calls or (20 if device.type == "cuda" else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = model_config(args.small)
    model = GPT(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.grad = torch.randn_like(p).mul_(1e-2)
    baseline = torch.optim.AdamW(build_param_groups(model, lr=1e-3, weight_decay=0.1), lr=1e-3, weight_decay=0.1,
                                 fused=True)
    for _ in range(max(1, args.warmup)):
        baseline.step()
    base_ms = [1e3 * timed(baseline.step) for _ in range(3)]

    meta = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
            "machine": (torch.cuda.get_device_name(device) if device.type == "cuda" else
                        f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"),
            "calls_per_timing": CALLS,
            "model": f"GPT d_model={cfg.d_model} n_layer={cfg.n_layer} vocab={cfg.vocab_size}",
            "n_params": n_params, "n_tensors": len(list(model.parameters())), "repeats": args.repeats,
            "baseline": "torch.optim.AdamW(fused=True)", "baseline_step_ms": statistics.median(base_ms)}
    log(f"{meta['model']}: {n_params / 1e6:.1f}M parameters in {meta['n_tensors']} tensors; {meta['machine']}; "
        f"fused AdamW step {meta['baseline_step_ms']:.3g} ms")

    rows = []
    for name in names:
        t0 = time.perf_counter()
        row = bench_one(name, model, baseline, args, compile_names, log)
        rows.append(row)
        log(f"  {name}: eager {fmt(row['eager'])}, compiled {fmt(row['compiled'])} "
            f"(compile {fmt(row['compile_s'], '{:.0f}')} s), {time.perf_counter() - t0:.0f} s")

    print(f"\nStep time / torch.optim.AdamW(fused=True) step time ({meta['baseline_step_ms']:.3g} ms), median of "
          f"{args.repeats} interleaved rounds; {meta['model']}, {n_params / 1e6:.1f}M parameters; "
          f"{meta['machine']}; torch {meta['torch']}; {meta['date']}")
    print(table(rows))
    compile_s = {r["name"]: round(r["compile_s"], 1) for r in rows if r["compile_s"] is not None}
    if compile_s:
        print(f"compile time (s, first two compiled calls, not in the ratios): {compile_s}")
    pays = {r["name"]: round(r["compiled_over_eager"], 2) for r in rows if "compiled_over_eager" in r}
    if pays:
        print(f"compiled / eager step time (compile pays below {PAYS_BELOW}): {pays}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
