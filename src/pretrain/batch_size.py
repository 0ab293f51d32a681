"""The batch size of every optimizer step: fixed, a linear ramp, or a ramp that follows the gradient noise scale.

`train.batch_ramp` (sizes in sequences; G = train.global_batch_size, the size the ramp ends at):
  null                                   every step takes G sequences
  {start: S, increment: I, tokens: N}    a linear ramp (as GPT-3's): a step's size is S + I floor(T / (N / m)),
                                         capped at G, T = tokens read before it, m = (G - S) / I: S, S+I, ..., each
                                         for an equal share of the first N tokens, then G
  auto  or  {start: S, increment: I, tokens: auto}
                                         start at S (auto: micro batch x processes, x 2 on one process) and
                                         grow, never shrink, to the gradient noise scale B_noise
                                         (`noise_scale.py`, the critical batch of McCandlish et al. 2018)
                                         rounded up to a multiple of I, capped at G

A size is always a multiple of micro batch x processes (its gradient-accumulation steps change with it). The lr
follows the batch-size rule (`scaling.batch_lr_rule`) at every size: the run's lr is the lr at G, and a step of B
sequences multiplies it by B/G (linear), sqrt(B/G) (sqrt) or 1 (none). Steps stay the unit of the schedule.

The run's sizes are a list of stages (first step, size, sequences consumed before that step), so the data
position of any step is exact: consumed(step) = consumed at its stage's start + (step - first step) x size. A
linear ramp's stages are computed up front; an auto ramp appends a stage when it grows, and its stages are saved
in checkpoints (a resumed run reads the same sequences at the same sizes).
"""
from __future__ import annotations

import bisect
import math

from .errors import ConfigError

AUTO_MIN_OBSERVATIONS = 20  # noise-scale measurements before an auto ramp acts on them


class BatchSizes:
    def __init__(self, final: int, *, seq_len: int, quantum: int, start: int | None = None,
                 increment: int | None = None, tokens=None):
        """`quantum`: micro batch x processes; every size is a multiple of it."""
        self.final, self.seq_len, self.quantum = final, seq_len, quantum
        self.auto = tokens == "auto"
        self.start = final if start is None else start
        self.increment = increment or quantum
        self.stages = [(0, self.start, 0)]  # (first step, size, sequences consumed before it)
        if tokens is not None and not self.auto and self.start < final:
            m = (final - self.start) // self.increment
            per_size = tokens / m  # tokens each size below G is used for
            size, consumed = self.start, 0
            while size < final:  # the next stage starts at the first step whose tokens so far reach a new share
                k = math.floor(consumed * seq_len / per_size)
                n = max(1, math.ceil(((k + 1) * per_size - consumed * seq_len) / (size * seq_len)))
                while n > 1 and math.floor((consumed + (n - 1) * size) * seq_len / per_size) > k:
                    n -= 1  # (exact against float rounding of the division above)
                while math.floor((consumed + n * size) * seq_len / per_size) <= k:
                    n += 1
                consumed += n * size
                size = min(final, self.start + self.increment * math.floor(consumed * seq_len / per_size))
                self.stages.append((self.stages[-1][0] + n, size, consumed))

    @classmethod
    def from_config(cls, train, world: int) -> "BatchSizes":
        ramp = train.batch_ramp
        quantum = train.micro_batch_size * world
        if ramp is None:
            return cls(train.global_batch_size, seq_len=train.seq_len, quantum=quantum)
        if ramp == "auto":  # one process measures the noise scale across micro-batches: start at two
            ramp = {"start": quantum * (2 if world == 1 else 1), "increment": quantum, "tokens": "auto"}
        if ramp["tokens"] == "auto" and world == 1 and ramp["start"] < 2 * quantum:
            raise ConfigError("train.batch_ramp.start", f"auto on one process measures the noise scale between "
                              f"micro-batches: start must be at least 2 x train.micro_batch_size = {2 * quantum}")
        for key in ("start", "increment"):
            if ramp[key] % quantum:
                raise ConfigError(f"train.batch_ramp.{key}", f"{ramp[key]} must be a multiple of train.micro_batch_size"
                                  f" x processes = {train.micro_batch_size} x {world}")
        return cls(train.global_batch_size, seq_len=train.seq_len, quantum=quantum, start=ramp["start"],
                   increment=ramp["increment"], tokens=ramp["tokens"])

    # -- what step `step` (0-based: optimizer steps already taken) uses ----------------------------------------
    def _stage(self, step: int):
        return self.stages[bisect.bisect_right(self.stages, (step, math.inf, math.inf)) - 1]

    def size(self, step: int) -> int:
        return self._stage(step)[1]

    def consumed(self, step: int) -> int:
        """Sequences read by the steps before `step`."""
        first, size, consumed = self._stage(step)
        return consumed + (step - first) * size

    def tokens(self, step: int) -> int:
        return self.consumed(step) * self.seq_len

    def accumulation(self, step: int) -> int:
        return self.size(step) // self.quantum

    def lr_factor(self, step: int, rule: str) -> float:
        """The batch-size rule's lr multiplier at this step's size, relative to G."""
        k = self.size(step) / self.final
        return {"none": 1.0, "linear": k, "sqrt": math.sqrt(k)}[rule]

    def ramp_end(self) -> int | None:
        """The first step at G (None for an auto ramp, which has no fixed end)."""
        return None if self.auto else self.stages[-1][0]

    # -- auto ---------------------------------------------------------------------------------------------------
    def observe(self, step: int, b_noise_tokens: float, observations: int) -> None:
        """After step `step` (0-based): an auto ramp grows to the noise scale for the steps from step + 1."""
        if not self.auto or observations < AUTO_MIN_OBSERVATIONS or not b_noise_tokens > 0:
            return
        current = self.size(step + 1)
        target = math.ceil(min(b_noise_tokens / self.seq_len, self.final) / self.increment) * self.increment
        new = min(self.final, max(current, target))
        if new > current:
            self.stages.append((step + 1, new, self.consumed(step + 1)))

    def state_dict(self) -> dict:
        return {"stages": [list(s) for s in self.stages]}

    def load_state_dict(self, state: dict) -> None:
        if self.auto and state.get("stages"):
            self.stages = [tuple(s) for s in state["stages"]]
        elif state.get("stages") and [tuple(s) for s in state["stages"]] != self.stages:
            raise ConfigError("train.batch_ramp", f"the checkpoint's batch sizes {state['stages']} differ from this "
                              f"run's {self.stages} (stages: first step, sequences, consumed before)")


def check_ramp(train) -> None:
    """Config validation of train.batch_ramp (before anything is built)."""
    ramp = train.batch_ramp
    if ramp is None or ramp == "auto":
        return
    field = "train.batch_ramp"
    if not isinstance(ramp, dict):
        raise ConfigError(field, f"must be null, 'auto' or a mapping with start, increment, tokens; got {ramp!r}")
    keys = {"start", "increment", "tokens"}
    for k in ramp:
        if k not in keys:
            raise ConfigError(f"{field}.{k}", "unknown key", sorted(keys), got=k)
    for k in keys:
        if k not in ramp:
            raise ConfigError(f"{field}.{k}", "missing (a ramp needs start, increment and tokens)")
    G, mb = train.global_batch_size, train.micro_batch_size
    for k in ("start", "increment"):
        v = ramp[k]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{field}.{k}", f"must be a positive integer (sequences), got {v!r}")
        if v % mb:
            raise ConfigError(f"{field}.{k}", f"{v} must be a multiple of train.micro_batch_size ({mb})")
    if ramp["start"] >= G:
        raise ConfigError(f"{field}.start", f"{ramp['start']} must be below train.global_batch_size ({G}), where "
                          "the ramp ends")
    if (G - ramp["start"]) % ramp["increment"]:
        raise ConfigError(f"{field}.increment", f"{ramp['increment']} must divide train.global_batch_size - start "
                          f"= {G - ramp['start']}")
    tokens = ramp["tokens"]
    if tokens == "auto":
        return
    if not isinstance(tokens, (int, float)) or isinstance(tokens, bool) or not math.isfinite(tokens) or tokens <= 0:
        raise ConfigError(f"{field}.tokens", f"must be a positive number of tokens or 'auto', got {tokens!r}")
    end = BatchSizes(G, seq_len=train.seq_len, quantum=mb, start=ramp["start"], increment=ramp["increment"],
                     tokens=tokens).ramp_end()
    if end > train.steps:
        raise ConfigError(f"{field}.tokens", f"the ramp over {tokens:g} tokens ends at step {end}, after the run "
                          f"(train.steps = {train.steps}); ramp over fewer tokens or train longer")
