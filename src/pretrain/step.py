"""The step protocol: everything inside one optimizer step that is not the update rule, written once for the
training loop (`loop.py`) and the Hugging Face Trainer (`hf.py`).

An *engine* says how to run one micro-batch (the loop's on accelerate: `LoopEngine` below; the Trainer's:
`hf.TrainerEngine`); `StepProtocol` does the rest, from what the optimizer's spec declares
(`pretrain.optim.Needs`, asked through `needs_of`), never from its name:

- tokens per step (`Needs.tokens_per_step`): param-group keys left None (Sophia's `bs`) get the tokens of the
  optimizer step before every step (a batch-size ramp changes them);
- the closure (`Needs.closure`): `closure()` is the loss on this step's batch (all its micro-batches, averaged
  over processes) at the current parameters, without a graph; `closure(backward=True)` also zeroes and
  recomputes the gradients (synchronized across processes on the last micro-batch only);
- the Hessian estimate (`Needs.hessian_loss`): after every k-th step (k = `optimizer.hessian_update_interval`),
  the backward of the declared loss of the step's logits averaged over its micro-batches, then
  `optimizer.update_hessian()`. The loss's sampled labels come from a generator seeded by (seed, rank, step):
  the same draws whatever ran before, on resume and in either engine;
- modes (`Needs.train_eval`): `evaluating()` puts the optimizer in eval mode (Schedule-Free: the model then holds
  the weights one evaluates) for evaluation and checkpoints, `eval_mode()` for the export, train mode after.

The closure and the Hessian estimate run from torch's optimizer step hooks, so they work whatever wraps the
optimizer (accelerate, DDP, FSDP, a compiled step) and whoever calls `step()` (our loop, transformers' loop).

An engine provides: `seed`, `rank`; `micro_batches()` (this step's micro-batches, or None outside a step);
`loss(batch)` (the micro-batch's share of the step loss: the shares sum to it; a graph when grad is enabled);
`logits(batch)` -> (logits, mask or None); `backward(share)`; `no_sync()` (a context deferring gradient
synchronization); `mean(value)` (over processes); `steps_done()` (optimizer steps before the current one);
`tokens_per_step()`.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from .errors import EXIT_DIVERGED, RunStopped
from .noise_scale import grad_sq
from .optim import hessian_interval, needs_of, unwrap


class StepProtocol:
    """Installs the optimizer's needs (see the module doc) as step hooks on `optimizer`, driven by `engine`."""

    def __init__(self, optimizer, engine):
        self.optimizer = unwrap(optimizer)
        self.needs = needs_of(optimizer)
        self.engine = engine
        self.hessian_every = hessian_interval(optimizer)
        self._filled = [(i, key) for i, g in enumerate(self.optimizer.param_groups)  # left None: ours to fill
                        for key in self.needs.tokens_per_step if key in g and g[key] is None]
        self._hooks = [self.optimizer.register_step_pre_hook(self._before_step),
                       self.optimizer.register_step_post_hook(self._after_step)]

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()

    # -- hooks ------------------------------------------------------------------------------------------------
    def _before_step(self, opt, args, kwargs):
        """Fill tokens-per-step keys; pass the closure to an optimizer that needs one (unless given)."""
        if self.engine.micro_batches() is None:
            return None
        for i, key in self._filled:
            opt.param_groups[i][key] = self.engine.tokens_per_step()
        given = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if not self.needs.closure or given is not None:
            return None
        if len(args) > 1:
            return (args[0], self.closure, *args[2:]), kwargs
        return args, {**kwargs, "closure": self.closure}

    def _after_step(self, opt, args, kwargs):
        """Every k-th step: the Hessian estimate on the step's batch."""
        if self.hessian_every and self.engine.micro_batches() is not None and \
                (self.engine.steps_done() + 1) % self.hessian_every == 0:
            self.hessian_estimate()

    # -- passes over the step's micro-batches -----------------------------------------------------------------
    def _over_micro_batches(self, share_of, backward: bool) -> torch.Tensor:
        """Sum of share_of(batch, n) over the step's n micro-batches, with backward of each share when asked
        (gradient synchronization deferred to the last micro-batch)."""
        batches = self.engine.micro_batches()
        total = 0.0
        for i, batch in enumerate(batches):
            defer = backward and i < len(batches) - 1
            with self.engine.no_sync() if defer else contextlib.nullcontext():
                share = share_of(batch, len(batches))
                if backward:
                    self.engine.backward(share)
            total = total + share.detach().float()
        return total

    def closure(self, backward: bool = False) -> torch.Tensor:
        """The loss on this step's batch at the current parameters, averaged over processes; with backward=True
        the gradients are zeroed and recomputed."""
        if backward:
            self.optimizer.zero_grad(set_to_none=False)
        with torch.set_grad_enabled(backward):
            total = self._over_micro_batches(lambda batch, n: self.engine.loss(batch), backward)
        return self.engine.mean(total)

    def hessian_estimate(self) -> None:
        """Backward of the spec's Hessian loss (mean over micro-batches), then optimizer.update_hessian()."""
        gen = {}

        def share(batch, n):
            logits, mask = self.engine.logits(batch)
            if not gen:
                seed = np.random.SeedSequence([self.engine.seed, self.engine.rank, self.engine.steps_done()])
                gen["g"] = torch.Generator(device=logits.device).manual_seed(int(seed.generate_state(1)[0]))
            return self.needs.hessian_loss(logits, mask=mask, generator=gen["g"]) / n

        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            self._over_micro_batches(share, backward=True)
        self.optimizer.update_hessian()
        self.optimizer.zero_grad(set_to_none=True)

    # -- modes ------------------------------------------------------------------------------------------------
    def eval_mode(self) -> None:
        if self.needs.train_eval:
            self.optimizer.eval()

    def train_mode(self) -> None:
        if self.needs.train_eval:
            self.optimizer.train()

    @contextlib.contextmanager
    def evaluating(self):
        """Eval mode inside (evaluation, checkpoints), train mode after."""
        self.eval_mode()
        try:
            yield
        finally:
            self.train_mode()


class LoopEngine:
    """The training loop's engine on accelerate, and its whole step (`train_step`): set the lr (schedule x batch-size
    rule), accumulate the step's micro-batches (their number follows the batch size, `batch_size.BatchSizes`),
    measure the gradient noise scale (`noise_scale.NoiseScale`, when given), clip (`clip`: a
    `clipping.ClipPolicy`), step the optimizer (its protocol hooks run inside), zero the gradients."""

    def __init__(self, accelerator, model, fwd_model, optimizer, loader, *, batches, seed: int, clip,
                 is_deepspeed: bool, lr_rule: str = "none", noise=None, stop=None, max_bad_steps: int = 10):
        self.accelerator, self.model, self.fwd_model, self.optimizer = accelerator, model, fwd_model, optimizer
        self.loader, self.batches, self.seed, self.rank = loader, batches, seed, accelerator.process_index
        self.clip, self.is_deepspeed, self.lr_rule, self.noise = clip, is_deepspeed, lr_rule, noise
        self.stop, self.stop_now, self.max_bad_steps = stop, False, max_bad_steps
        self.steps_skipped = self.bad_in_a_row = 0
        self.step, self._batches = None, None
        self.protocol = StepProtocol(optimizer, self)
        self._rank_sq = None
        if noise is not None and accelerator.num_processes > 1:
            from .noise_scale import RankGradSq
            self._rank_sq = RankGradSq(model)

    # -- the engine interface (see the module doc) ----------------------------------------------------------
    def micro_batches(self):
        if self.step is None:
            return None
        if self._batches is None:  # read once per step: a streaming loader yields new data on every call
            device = self.accelerator.device
            n = self.batches.accumulation(self.step)
            self._batches = [self.loader.micro_batch(self.step, i).to(device) for i in range(n)]
        return self._batches

    def loss(self, batch) -> torch.Tensor:
        return self.fwd_model(input_ids=batch, labels=batch).loss / len(self.micro_batches())

    def logits(self, batch):
        return self.fwd_model(input_ids=batch).logits, None

    def backward(self, share) -> None:
        share.backward()  # the share is already divided by the accumulation (no DeepSpeed here, no fp16 scaler)

    def no_sync(self):
        return self.accelerator.no_sync(self.model)

    def mean(self, value):
        return self.accelerator.reduce(value, "mean")

    def steps_done(self) -> int:
        return self.step

    def tokens_per_step(self) -> int:
        return self.batches.size(self.step) * self.batches.seq_len

    # -- the loop's step --------------------------------------------------------------------------------------
    def train_step(self, step: int, factor: float) -> tuple[float, dict]:
        """One optimizer step on global batch `step` with schedule factor `factor`: (mean loss, the step's record:
        the lr applied, batch_size (sequences), the clipping policy's record (grad_norm before clipping,
        clip_threshold, clipped, clip_fraction), skipped (a non-finite step), steps_skipped).

        A step whose loss or gradient norm is not finite is skipped: no update, parameters and optimizer state
        unchanged (under DeepSpeed, whose engine owns the step, it is only counted); `max_bad_steps` of them in a
        row make `check_bad_steps` raise `RunStopped`. A stop signal on any rank (`stop`:
        `preemption.StopSignals`) sets `stop_now` on every rank, through the loss's all-reduce."""
        self.step, self._batches = step, None
        if self._rank_sq is not None:
            self._rank_sq.take()  # drop what a closure or Hessian pass added after the last measurement
        set_lr(self.optimizer, factor * self.batches.lr_factor(step, self.lr_rule))
        batches = self.micro_batches()
        acc, n = self.accelerator, len(batches)
        if not self.is_deepspeed and acc.gradient_accumulation_steps != n:  # a batch-size ramp changed the size
            acc.gradient_accumulation_steps, acc.step = n, 0
        params = list(self.model.parameters())
        losses, small = [], None
        for i, batch in enumerate(batches):
            with acc.accumulate(self.model):
                loss = self.fwd_model(input_ids=batch, labels=batch).loss
                acc.backward(loss)  # divides by the accumulation (DeepSpeed: its engine does)
            if i == 0 and self.noise is not None and self._rank_sq is None and n > 1:
                small = grad_sq(params) * n * n  # the first micro-batch's gradient (the loss was divided by n)
            losses.append(loss.detach().float())
        stop = torch.tensor(float(self.stop is not None and self.stop.requested), device=losses[0].device)
        loss, stop = acc.reduce(torch.stack([torch.stack(losses).mean(), stop]), "sum").tolist()  # one collective
        loss, self.stop_now = loss / acc.num_processes, stop > 0
        record = {"lr": applied_lr(self.optimizer), "batch_size": self.batches.size(step)}
        if self.is_deepspeed:  # its engine clips inside the step, by the global norm (config validation)
            self.optimizer.step()
            norm = self.model.get_global_grad_norm()
            clip = self.clip(params, lambda max_norm: float("nan") if norm is None else norm)
            finite = math.isfinite(loss)
        else:
            clip = self.clip(params, lambda max_norm: acc.clip_grad_norm_(params, max_norm))
            finite = math.isfinite(loss) and math.isfinite(clip["grad_norm"])
            if finite:
                if self.noise is not None and (small is not None or self._rank_sq is not None):
                    self._measure_noise(small, n, big_sq=clip["grad_norm"] ** 2)  # the policy's unclipped norm
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_in_a_row = 0 if finite else self.bad_in_a_row + 1
        self.steps_skipped += not finite
        return loss, {**record, **clip, "skipped": int(not finite), "steps_skipped": self.steps_skipped}

    def check_bad_steps(self, loss: float, record: dict) -> None:
        """RunStopped after `max_bad_steps` non-finite steps in a row (called once the step's row is logged)."""
        if self.bad_in_a_row >= self.max_bad_steps:
            raise RunStopped(f"stopped at step {self.step + 1}: {self.bad_in_a_row} non-finite steps in a row (loss "
                             f"{loss}, gradient norm {record['grad_norm']}), each skipped; no checkpoint was written "
                             f"from them (train.max_bad_steps = {self.max_bad_steps})", EXIT_DIVERGED)

    def _measure_noise(self, small, n: int, big_sq: float) -> None:
        """|G_small|^2 (first micro-batch, or each rank's gradient before the all-reduce) vs |G_big|^2 (the step's
        gradient, before clipping); then an auto batch ramp may grow."""
        seq_len, size = self.batches.seq_len, self.batches.size(self.step)
        if self._rank_sq is not None:
            small = self.accelerator.reduce(self._rank_sq.take(), "mean")
            b_small = size // self.accelerator.num_processes
        else:
            b_small = size // n
        self.noise.observe(small, b_small * seq_len, torch.tensor(big_sq, dtype=torch.float64, device=small.device),
                           size * seq_len)
        if self.batches.auto:
            self.batches.observe(self.step, self.noise.value(), self.noise.n)

    def state_dict(self) -> dict:
        return {"steps_skipped": self.steps_skipped, "bad_in_a_row": self.bad_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.steps_skipped, self.bad_in_a_row = int(state.get("steps_skipped", 0)), int(state.get("bad_in_a_row", 0))


def applied_lr(optimizer) -> float:
    """The lr the optimizer applies at base multiplier 1 (a group's lr / its lr_mult), read from its groups."""
    g = unwrap(optimizer).param_groups[0]
    return g["lr"] / g.get("lr_mult", 1.0)


def set_lr(optimizer, factor: float) -> None:
    """Every parameter group at its own base lr times the schedule's factor (groups keep their ratios); a
    per-group schedule's factor (`schedules.registry.StepFactor`) gives each group its own."""
    groups = unwrap(optimizer).param_groups
    per_group = factor.per_group(groups) if hasattr(factor, "per_group") else None
    for g, f in zip(groups, [factor] * len(groups) if per_group is None else per_group):
        g["lr"] = g["initial_lr"] * f
