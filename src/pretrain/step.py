"""The step protocol: everything inside one optimizer step that is not the update rule, written once for the
training loop (`loop.py`) and the Hugging Face Trainer (`hf.py`).

An *engine* says how to run one micro-batch (the loop's on accelerate: `LoopEngine` below; the Trainer's:
`hf.TrainerEngine`); `StepProtocol` does the rest, from what the optimizer's spec declares
(`pretrain.optim.Needs`, asked through `needs_of`), never from its name:

- tokens per step (`Needs.tokens_per_step`): param-group keys left None (Sophia's `bs`) get the tokens per
  optimizer step before the first step;
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

import numpy as np
import torch

from .optim import hessian_interval, needs_of, unwrap


class StepProtocol:
    """Installs the optimizer's needs (see the module doc) as step hooks on `optimizer`, driven by `engine`."""

    def __init__(self, optimizer, engine):
        self.optimizer = unwrap(optimizer)
        self.needs = needs_of(optimizer)
        self.engine = engine
        self.hessian_every = hessian_interval(optimizer)
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
        for g in opt.param_groups:
            for key in self.needs.tokens_per_step:
                if key in g and g[key] is None:
                    g[key] = self.engine.tokens_per_step()
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
    """The training loop's engine on accelerate, and its whole step (`train_step`): set the lr, accumulate the
    micro-batches' gradients, clip (`clip`: a `clipping.ClipPolicy`), step the optimizer (its protocol hooks run
    inside), zero the gradients."""

    def __init__(self, accelerator, model, fwd_model, optimizer, loader, *, accum: int, seed: int,
                 tokens_per_step: int, clip, is_deepspeed: bool):
        self.accelerator, self.model, self.fwd_model, self.optimizer = accelerator, model, fwd_model, optimizer
        self.loader, self.accum, self.seed, self.rank = loader, accum, seed, accelerator.process_index
        self._tokens, self.clip, self.is_deepspeed = tokens_per_step, clip, is_deepspeed
        self.step, self._batches = None, None
        self.protocol = StepProtocol(optimizer, self)

    # -- the engine interface (see the module doc) ----------------------------------------------------------
    def micro_batches(self):
        if self.step is None:
            return None
        if self._batches is None:  # read once per step: a streaming loader yields new data on every call
            device = self.accelerator.device
            self._batches = [self.loader.micro_batch(self.step, i).to(device) for i in range(self.accum)]
        return self._batches

    def loss(self, batch) -> torch.Tensor:
        return self.fwd_model(input_ids=batch, labels=batch).loss / self.accum

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
        return self._tokens

    # -- the loop's step --------------------------------------------------------------------------------------
    def train_step(self, step: int, factor: float) -> tuple[float, dict]:
        """One optimizer step on global batch `step` with lr factor `factor`: (mean loss, the clipping policy's
        record: grad_norm before clipping, clip_threshold, clipped, clip_fraction)."""
        self.step, self._batches = step, None
        set_lr(self.optimizer, factor)
        losses = []
        for batch in self.micro_batches():
            with self.accelerator.accumulate(self.model):
                loss = self.fwd_model(input_ids=batch, labels=batch).loss
                self.accelerator.backward(loss)  # divides by the accumulation (DeepSpeed: its engine does)
            losses.append(loss.detach().float())
        params = list(self.model.parameters())
        clip = None if self.is_deepspeed else self.clip(
            params, lambda max_norm: self.accelerator.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.is_deepspeed:  # its engine clipped inside the step, by the global norm (config validation)
            norm = self.model.get_global_grad_norm()
            clip = self.clip(params, lambda max_norm: float("nan") if norm is None else norm)
        loss = self.accelerator.reduce(torch.stack(losses).mean(), "mean").item()
        return loss, clip


def set_lr(optimizer, factor: float) -> None:
    """Every parameter group at its own base lr times the schedule's factor (groups keep their ratios)."""
    for g in unwrap(optimizer).param_groups:
        g["lr"] = g["initial_lr"] * factor
