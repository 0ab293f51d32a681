"""Batches for the loop. Every rank reads different sequences; the data position is part of the checkpoint.

`PackedLoader` (file-backed corpora): the train stream is cut into `seq_len` blocks, visited in a seeded
permutation per epoch. Global batch `step` covers sequences [step*G, (step+1)*G) of that infinite order;
rank r, micro-batch i reads G/world consecutive ones at offset r*G/world + i*micro. Under a batch-size ramp
(`batch_size.BatchSizes`) step s covers [consumed(s), consumed(s) + size(s)) the same way. The position is a pure
function of the step, so resuming at step s reads exactly what an uninterrupted run would, and a 2-process
run sees the same global batch as a 1-process run with twice the accumulation.

`StreamingLoader` (hub datasets): tokenizes and packs on the fly from a shuffled, node-split stream; its
position is the datasets `IterableDataset.state_dict()` plus the partial block, saved in checkpoints.
"""
from __future__ import annotations

import numpy as np
import torch


class PackedLoader:
    def __init__(self, tokens: np.ndarray, *, seq_len: int, global_batch: int, micro_batch: int, rank: int,
                 world: int, seed: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n_blocks = len(tokens) // seq_len
        if self.n_blocks < global_batch:
            raise ValueError(f"corpus has {self.n_blocks} sequences of {seq_len} tokens, fewer than one global batch "
                             f"({global_batch}); use more data (data.max_bytes) or a smaller train.global_batch_size")
        self.G, self.mb, self.rank, self.world, self.seed = global_batch, micro_batch, rank, world, seed
        self._perm_epoch, self._perm = -1, None
        self.batch_sizes = None  # a batch_size.BatchSizes when the batch size changes during the run

    def _perm_for(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
            self._perm_epoch = epoch
        return self._perm

    def sequence(self, k: int) -> np.ndarray:
        epoch, i = divmod(k, self.n_blocks)
        b = int(self._perm_for(epoch)[i])
        return self.tokens[b * self.seq_len:(b + 1) * self.seq_len]

    def micro_batch(self, step: int, micro: int) -> torch.Tensor:
        if self.batch_sizes is None:
            start = step * self.G + self.rank * (self.G // self.world) + micro * self.mb
        else:  # a batch-size ramp: global batch `step` has size(step) sequences, after consumed(step)
            size = self.batch_sizes.size(step)
            start = self.batch_sizes.consumed(step) + self.rank * (size // self.world) + micro * self.mb
        rows = [np.asarray(self.sequence(k), dtype=np.int64) for k in range(start, start + self.mb)]
        return torch.from_numpy(np.stack(rows))

    def _consumed(self, step: int) -> int:
        return step * self.G if self.batch_sizes is None else self.batch_sizes.consumed(step)

    def epoch_of(self, step: int) -> float:
        return self._consumed(step) / self.n_blocks

    def state_dict(self, step: int) -> dict:
        return {"kind": "packed", "sequences_consumed": self._consumed(step), "n_blocks": self.n_blocks,
                "seed": self.seed}

    def load_state_dict(self, state: dict, step: int) -> None:
        if state.get("n_blocks") != self.n_blocks or state.get("seed") != self.seed:
            raise ValueError(f"checkpoint data position does not match this corpus: {state} vs "
                             f"n_blocks={self.n_blocks}, seed={self.seed}")


def val_batches(tokens: np.ndarray, *, seq_len: int, micro_batch: int, n_batches: int, rank: int, world: int):
    """Fixed held-out sequences (the same every evaluation and for any number of processes: the first
    n_batches x micro_batch blocks of the validation stream), split across ranks."""
    n_blocks = len(tokens) // seq_len
    total = min(n_blocks, n_batches * micro_batch) // world * world
    per_rank = total // world
    blocks = np.asarray(tokens[: total * seq_len], dtype=np.int64).reshape(total, seq_len)
    mine = blocks[rank * per_rank:(rank + 1) * per_rank]
    return [torch.from_numpy(mine[i:i + micro_batch]) for i in range(0, len(mine), micro_batch)]


class StreamingLoader:
    def __init__(self, documents, tokenizer, *, seq_len: int, micro_batch: int, rank: int, world: int, seed: int,
                 shuffle_buffer: int = 10_000, skip_docs: int = 0):
        from datasets.distributed import split_dataset_by_node

        ds = documents.skip(skip_docs) if skip_docs else documents
        ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer else ds
        self.ds = split_dataset_by_node(ds, rank=rank, world_size=world)
        self.tokenizer, self.seq_len, self.mb = tokenizer, seq_len, micro_batch
        self.buffer: list[int] = []
        self._it = None

    def _next_sequence(self) -> list[int]:
        while len(self.buffer) < self.seq_len:
            if self._it is None:
                self._it = iter(self.ds)
            try:
                doc = next(self._it)
            except StopIteration:  # next epoch
                self._it = None
                self.ds.set_epoch(getattr(self.ds, "_epoch", 0) + 1)
                continue
            self.buffer += self.tokenizer(doc["text"], add_special_tokens=False)["input_ids"] + [
                self.tokenizer.eos_token_id]
        seq, self.buffer = self.buffer[:self.seq_len], self.buffer[self.seq_len:]
        return seq

    def micro_batch(self, step: int, micro: int) -> torch.Tensor:
        return torch.tensor([self._next_sequence() for _ in range(self.mb)], dtype=torch.int64)

    def epoch_of(self, step: int) -> float:
        return float("nan")

    def state_dict(self, step: int) -> dict:
        return {"kind": "streaming", "dataset": self.ds.state_dict(), "buffer": list(self.buffer)}

    def load_state_dict(self, state: dict, step: int) -> None:
        self.ds.load_state_dict(state["dataset"])
        self.buffer = list(state["buffer"])
        self._it = None
