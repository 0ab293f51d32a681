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
    train = PackedLoader(streams["train"], seq_len=t.seq_len, global_batch=t.global_batch_size,
                         micro_batch=t.micro_batch_size, rank=rank, world=world, seed=cfg.seed)
    val = val_batches(streams["val"], seq_len=t.seq_len, micro_batch=t.micro_batch_size, n_batches=t.eval_batches,
                      rank=rank, world=world)
    return tokenizer, train, val


__all__ = ["build_data", "load_documents", "load_tokenizer", "packed_streams", "PackedLoader", "StreamingLoader",
           "val_batches", "files_for", "fingerprint"]
