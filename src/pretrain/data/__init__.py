"""Data: corpus sources (embedded stdlib, local files, hub), tokenizer, packing and per-rank loaders."""
from __future__ import annotations

from .corpus import files_for, fingerprint, load_documents
from .loader import PackedLoader, StreamingLoader, val_batches
from .packing import packed_streams
from .tokenizer import load_tokenizer


def build_data(cfg, *, rank: int, world: int, log=print):
    """(tokenizer, train loader, validation batches) for a validated config."""
    d, t = cfg.data, cfg.train
    if d.source == "hub":
        docs = load_documents(d)
        tokenizer = load_tokenizer(d)
        if not d.val_docs:
            log("data: no validation set (data.val_docs=0): evaluation is skipped")
        val_docs = docs.take(d.val_docs)
        val_tokens = []
        for doc in val_docs:
            val_tokens += tokenizer(doc["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        import numpy as np
        train = StreamingLoader(docs, tokenizer, seq_len=t.seq_len, micro_batch=t.micro_batch_size, rank=rank,
                                world=world, seed=cfg.seed, shuffle_buffer=d.shuffle_buffer, skip_docs=d.val_docs)
        val = val_batches(np.asarray(val_tokens), seq_len=t.seq_len, micro_batch=t.micro_batch_size,
                          n_batches=t.eval_batches, rank=rank, world=world)
        return tokenizer, train, val
    docs = load_documents(d)
    fp = fingerprint(files_for(d))
    tokenizer = load_tokenizer(d, docs, fp)
    streams = packed_streams(docs, tokenizer, fingerprint=fp, val_fraction=d.val_fraction, split_seed=d.split_seed,
                             cache_dir=d.cache_dir, log=log)
    check_sizes(cfg, streams, world, log)
    train = PackedLoader(streams["train"], seq_len=t.seq_len, global_batch=t.global_batch_size,
                         micro_batch=t.micro_batch_size, rank=rank, world=world, seed=cfg.seed)
    val = val_batches(streams["val"], seq_len=t.seq_len, micro_batch=t.micro_batch_size, n_batches=t.eval_batches,
                      rank=rank, world=world)
    return tokenizer, train, val


def check_sizes(cfg, streams: dict, world: int, log=print) -> None:
    """ConfigError naming the corpus unless its train split holds one global batch and its validation split (when
    there is one) a sequence per process; logs that evaluation is skipped without a validation split."""
    from ..errors import ConfigError

    d, t = cfg.data, cfg.train
    where = ("data.paths", ", ".join(map(str, d.paths))) if d.source == "text_files" else \
        ("data.max_bytes", f"the stdlib corpus (data.max_bytes={d.max_bytes})")
    n_train, n_val = len(streams["train"]), len(streams["val"])
    if n_train // t.seq_len < t.global_batch_size:
        raise ConfigError(where[0], f"{where[1]} has {n_train} training tokens = {n_train // t.seq_len} sequences of "
                          f"train.seq_len={t.seq_len}, fewer than one global batch (train.global_batch_size="
                          f"{t.global_batch_size}); add text, or lower train.global_batch_size or train.seq_len")
    if d.val_fraction == 0:
        log("data: no validation set (data.val_fraction=0): evaluation is skipped")
    elif t.eval_every and n_val // t.seq_len < world:
        raise ConfigError("data.val_fraction", f"the validation split of {where[1]} ({d.val_fraction} of the tokens: "
                          f"{n_val}) is shorter than one sequence of train.seq_len={t.seq_len} per process ({world}); "
                          "raise data.val_fraction, or set it to 0 (no validation set)")


__all__ = ["build_data", "load_documents", "load_tokenizer", "packed_streams", "PackedLoader", "StreamingLoader",
           "val_batches", "files_for", "fingerprint"]
