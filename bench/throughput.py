#!/usr/bin/env python
"""Training throughput: train.py's loop against a minimal raw PyTorch loop (the limit) and against the Hugging
Face Trainer (pretrain.hf), on the same model, data, batch, threads, optimizer and clipping; eager and compiled.

Model: this project's GPT, 6 layers x 384 wide (6 heads), vocabulary 4096 (the tiny recipe's tokenizer and
embedded stdlib corpus), batch 8 x 256 tokens, one process, fp32 on CPU. Per variant and mode:

  loop     `pretrain.loop.train` as `python train.py` runs it, every default on (clip.policy=norm at 1.0,
           non-finite check, per-step row with the clipping record, optimizer metrics), optim=adamw
           (torch AdamW, foreach; train.compile_optimizer=auto does not compile a run this short),
           log.log_every=1, no evaluation; compiled: train.compile=true;
  raw      the limit: the same model (pretrain.build.build_model, same seed) and the loop's data loader,
           `loss = model(input_ids=x, labels=x).loss; loss.backward(); clip_grad_norm_(1.0);
           opt.step(); opt.zero_grad(); loss.item()` with torch.optim.AdamW(foreach=True), what the
           registry's adamw builds; with --accum N, N micro-batches of loss / N backward before the step;
           compiled: torch.compile(model);
  trainer  pretrain.hf.Trainer, optim="pretrain:adamw", max_grad_norm=1.0, the same sequences as a dataset
           (no shuffling), no saving/evaluation, gradient_accumulation_steps = --accum; compiled:
           TrainingArguments(torch_compile=True).

--accum N (default 1) splits the batch into N micro-batches of batch / N: the loop then also measures the
gradient noise scale (train.noise_scale, on by default) from the first micro-batch's gradient, one more norm
pass per step.

Time per step = the wall time between the ends of consecutive steps (data, forward, backward, clip, step and
the loop's bookkeeping included): the loop's own `tokens_per_s` of each metrics.jsonl row (log_every=1), a
perf_counter per step in the raw loop, a TrainerCallback's on_step_end in the Trainer. The first --warmup steps
of every run are dropped (start-up, compilation); a run's throughput is the median of the others. --repeats
rounds run every variant once each, in an order rotated every round; a ratio is the median over rounds of the
ratio within a round, so the load of a shared machine, which changes from minute to minute, mostly cancels.

    python bench/throughput.py                      # eager + compiled, 3 rounds (~25 min on a shared 2-core CPU)
    python bench/throughput.py --modes eager --repeats 5
    python bench/throughput.py --model tiny         # the tiny recipe's model: loop overhead weighs more
    python bench/throughput.py --modes eager --accum 2   # gradient accumulation (the noise scale measured)
    python bench/throughput.py --quick              # a 2 x 64 model, 8 x 64 tokens, eager, 1 round (a test runs it)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
for _k, _v in (("WANDB_MODE", "offline"), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
               ("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
    os.environ.setdefault(_k, _v)

FULL = ["model.d_model=384", "model.n_layer=6", "model.n_head=6", "train.seq_len=256",
        "train.global_batch_size=8", "train.micro_batch_size=8"]
TINY = ["train.seq_len=128", "train.global_batch_size=16", "train.micro_batch_size=16"]  # the tiny recipe's 4 x 128
QUICK_CACHE = os.environ.get("PRETRAIN_TEST_CACHE", os.path.join(ROOT, ".cache", "test-data"))
QUICK = ["data.max_bytes=1000000", f"data.cache_dir={QUICK_CACHE}", "data.vocab_size=512", "model.d_model=64",
         "model.n_layer=2", "model.n_head=2", "train.seq_len=64", "train.global_batch_size=8",
         "train.micro_batch_size=8"]
COMMON = ["optim=adamw", "optim.lr=1e-3", "schedule=constant", "schedule.warmup_steps=0", "clip.policy=norm",
          "clip.max_norm=1.0", "train.eval_every=0", "log.log_every=1", "train.progress=false"]
VARIANTS = ("loop", "raw", "trainer")


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState, PartialState
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def config(base: list[str], steps: int, compiled: bool, run_dir: str):
    from pretrain.config import load_config
    return load_config(base + COMMON + [f"train.steps={steps}", f"train.compile={str(compiled).lower()}",
                                        f"run_dir={run_dir}"])


def median_tps(step_times: list[float], tokens: int, warmup: int) -> float:
    times = step_times[warmup:]
    if not times:
        raise SystemExit(f"no step left after --warmup {warmup}: raise --steps")
    return tokens / statistics.median(times)


def run_loop(cfg, warmup: int) -> float:
    from pretrain.loop import train
    from pretrain.tracking import read_metrics

    _reset_accelerate()
    train(cfg, log=lambda *_: None)
    tps = [r["tokens_per_s"] for r in read_metrics(cfg.run_dir) if r.get("kind", "train") == "train"]
    return statistics.median(tps[warmup:])


def data_and_model(cfg):
    """The loop's data loader and an identically initialized model (build_run's order: data, seed, model)."""
    from accelerate.utils import set_seed

    from pretrain.build import build_model
    from pretrain.data import build_data

    set_seed(cfg.seed)
    tokenizer, loader, _ = build_data(cfg, rank=0, world=1, log=lambda *_: None)
    set_seed(cfg.seed)
    return loader, build_model(cfg, len(tokenizer), tokenizer.eos_token_id)


def run_raw(cfg, warmup: int) -> float:
    import torch

    loader, model = data_and_model(cfg)
    model.train()
    fwd = torch.compile(model) if cfg.train.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim["lr"], foreach=True)  # the loop's adamw
    accum = cfg.train.global_batch_size // cfg.train.micro_batch_size
    times, t_last = [], time.perf_counter()
    for step in range(cfg.train.steps):
        for i in range(accum):
            x = loader.micro_batch(step, i)
            loss = fwd(input_ids=x, labels=x).loss / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip.max_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        now = time.perf_counter()
        times.append(now - t_last)
        t_last = now
    return median_tps(times, cfg.train.tokens_per_step, warmup)


def run_trainer(cfg, warmup: int) -> float:
    import torch
    from transformers import TrainerCallback

    from pretrain.hf import Trainer, TrainingArguments

    loader, model = data_and_model(cfg)
    steps, b, mb = cfg.train.steps, cfg.train.global_batch_size, cfg.train.micro_batch_size
    seqs = [torch.cat([loader.micro_batch(s, i) for i in range(b // mb)]) for s in range(steps)]

    class Sequences(torch.utils.data.Dataset):
        def __len__(self):
            return steps * b

        def __getitem__(self, i):
            x = seqs[i // b][i % b]
            return {"input_ids": x, "labels": x}

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self.t_last = [], None

        def on_step_begin(self, args, state, control, **kw):
            if self.t_last is None:
                self.t_last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.times.append(now - self.t_last)
            self.t_last = now

    clock = Clock()
    args = TrainingArguments(output_dir=os.path.join(cfg.run_dir, "trainer"), optim="pretrain:adamw",
                             learning_rate=cfg.optim["lr"], weight_decay=0.01, lr_scheduler_type="constant",
                             max_steps=steps, per_device_train_batch_size=mb, gradient_accumulation_steps=b // mb,
                             max_grad_norm=cfg.clip.max_norm,
                             logging_steps=steps + 1, save_strategy="no", report_to="none", disable_tqdm=True,
                             use_cpu=True, seed=cfg.seed, dataloader_num_workers=0, torch_compile=cfg.train.compile,
                             train_sampling_strategy="sequential")
    Trainer(model=model, args=args, train_dataset=Sequences(), callbacks=[clock]).train()
    return median_tps(clock.times, cfg.train.tokens_per_step, warmup)


RUNNERS = {"loop": run_loop, "raw": run_raw, "trainer": run_trainer}


def render(out: dict) -> str:
    """The table this benchmark prints, from its JSON (the README's table is this text)."""
    st, tps, rs = out["settings"], out["tokens_per_s"], out["ratios"]
    micro = st.get("micro_batch", st["batch"])
    accum = f", {st['batch'] // micro} micro-batches of {micro}" if micro != st["batch"] else ""
    lines = [f"### Throughput: GPT {st['model'].replace('x', ' x ')}, batch {st['batch']} x {st['seq_len']} "
             f"tokens{accum}, AdamW + clip 1.0, {st['threads']} torch thread(s), {st['repeats']} round(s) of "
             f"{st['steps']} steps ({st['warmup']} dropped)", "",
             "| mode | loop tokens/s | raw tokens/s | Trainer tokens/s | loop / raw | loop / Trainer | Trainer / raw |",
             "|---|---|---|---|---|---|---|"]
    for mode in tps:
        med = {v: statistics.median(tps[mode][v]) for v in VARIANTS}
        r = rs[mode]
        lines.append(f"| {mode} | {med['loop']:.0f} | {med['raw']:.0f} | {med['trainer']:.0f} | {r['loop/raw']:.3f} | "
                     f"{r['loop/trainer']:.3f} | {r['trainer/raw']:.3f} |")
    if "compiled/eager" in rs:
        what = rs["compiled/eager"]
        lines += ["", f"compiled / eager: loop {what['loop']:.3f}, raw {what['raw']:.3f}, Trainer "
                      f"{what['trainer']:.3f}; compiled loop / eager raw loop {rs['compiled loop/eager raw']:.3f}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", choices=["6x384", "tiny"], default="6x384",
                    help="6x384 (batch 8 x 256, default) or the tiny recipe's 4 x 128 (batch 16 x 128)")
    ap.add_argument("--modes", default=None, help="eager,compiled (default; eager with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default 14; 8 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="steps dropped per run (default 4; 3 with --quick)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared 2-core machine)")
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per step (default 1)")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    modes = (args.modes or ("eager" if args.quick else "eager,compiled")).split(",")
    if set(modes) - {"eager", "compiled"}:
        raise SystemExit("--modes: eager and/or compiled")
    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps or (8 if args.quick else 14)
    warmup = args.warmup if args.warmup is not None else (3 if args.quick else 4)
    base = QUICK if args.quick else (FULL if args.model == "6x384" else TINY)
    batch = int(next(o for o in base if o.startswith("train.global_batch_size=")).split("=")[1])
    if args.accum < 1 or batch % args.accum:
        raise SystemExit(f"--accum: a divisor of the batch ({batch}); got {args.accum}")
    base = [o for o in base if not o.startswith("train.micro_batch_size=")] + [
        f"train.micro_batch_size={batch // args.accum}"]
    tps = {m: {v: [] for v in VARIANTS} for m in modes}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for mode in modes:
                order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
                for v in order:
                    cfg = config(base, steps, mode == "compiled", os.path.join(tmp, f"{mode}_{v}_{r}"))
                    t = time.time()
                    tps[mode][v].append(RUNNERS[v](cfg, warmup))
                    print(f"round {r} {mode:>8} {v:>7}: {tps[mode][v][-1]:9.0f} tokens/s ({time.time() - t:.0f} s)",
                          flush=True)
    cfg = config(base, steps, False, "/tmp/unused")

    def ratio(a, b, ma, mb):
        return statistics.median(x / y for x, y in zip(tps[ma][a], tps[mb][b]))

    m = cfg.model
    out = {"settings": {"model": f"{m.n_layer}x{m.d_model}", "batch": cfg.train.global_batch_size,
                        "micro_batch": cfg.train.micro_batch_size, "seq_len": cfg.train.seq_len,
                        "threads": args.threads, "repeats": repeats, "steps": steps, "warmup": warmup,
                        "quick": args.quick},
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
           "tokens_per_s": tps, "ratios": {}}
    for mode in modes:
        out["ratios"][mode] = {"loop/raw": ratio("loop", "raw", mode, mode),
                               "loop/trainer": ratio("loop", "trainer", mode, mode),
                               "trainer/raw": ratio("trainer", "raw", mode, mode)}
    if {"eager", "compiled"} <= set(modes):
        out["ratios"]["compiled/eager"] = {v: ratio(v, v, "compiled", "eager") for v in VARIANTS}
        out["ratios"]["compiled loop/eager raw"] = ratio("loop", "raw", "compiled", "eager")
    print(render(out))
    out["runtime_s"] = time.time() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(f"({out['runtime_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
