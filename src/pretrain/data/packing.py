"""Tokenize documents, append EOS to each, and pack them into one token stream per split, cached on disk.

File-backed corpora are tokenized once (HF `datasets.map`, batched) and the packed streams saved as .npy under
`data.cache_dir/tokens/<key>`; the key hashes the file list (names, sizes, mtimes), the tokenizer and the split,
so a second run on the same corpus reuses them.

The validation split is by tokens (`split_stream`): the documents are concatenated in a seeded random order
(`data.split_seed`) and the first round(val_fraction x tokens) tokens are held out, the rest is trained on. So a
corpus of one file splits like one of thousands, the held-out set is whole documents except the one it cuts, and
`data.val_fraction=0` holds out nothing (no validation set).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np


def document_order(n_docs: int, seed: int) -> np.ndarray:
    """The seeded order in which documents are concatenated before the split."""
    return np.random.default_rng(seed).permutation(n_docs)


def split_stream(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): val is the first round(val_fraction x len(tokens)) tokens (half up), train the rest."""
    n_val = int(np.floor(val_fraction * len(tokens) + 0.5))
    return tokens[n_val:], tokens[:n_val]


def _encode(documents, tokenizer) -> np.ndarray:
    eos = tokenizer.eos_token_id

    def tok(batch):
        return {"ids": [ids + [eos] for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]]}

    enc = documents.map(tok, batched=True, batch_size=64, remove_columns=documents.column_names,
                        load_from_cache_file=False, keep_in_memory=True, desc=None)
    dtype = np.uint16 if len(tokenizer) < 2**16 else np.uint32
    ids = enc["ids"]
    return np.concatenate([np.asarray(x, dtype=dtype) for x in ids]) if len(ids) else np.zeros(0, dtype)


def packed_streams(documents, tokenizer, *, fingerprint: str, val_fraction: float, split_seed: int,
                   cache_dir: str, log=print) -> dict[str, np.ndarray]:
    """{"train": tokens, "val": tokens}, from cache when present."""
    tok_hash = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:12]
    key = f"{fingerprint}_{tok_hash}_v{val_fraction}_s{split_seed}_bytokens"
    root = os.path.join(os.path.expanduser(cache_dir), "tokens", key)
    paths = {s: os.path.join(root, f"{s}.npy") for s in ("train", "val")}
    if all(os.path.exists(p) for p in paths.values()):
        log(f"data: reusing cached tokenization {root}")
        return {s: np.load(p, mmap_mode="r") for s, p in paths.items()}
    stream = _encode(documents.select(document_order(len(documents), split_seed)), tokenizer)
    train, val = split_stream(stream, val_fraction)
    out = {"train": train, "val": val}
    os.makedirs(root, exist_ok=True)
    for s, arr in out.items():
        tmp = paths[s] + f".tmp{os.getpid()}.npy"
        np.save(tmp, arr)
        os.replace(tmp, paths[s])
    with open(os.path.join(root, "info.json"), "w") as f:
        json.dump({"train_tokens": int(len(train)), "val_tokens": int(len(val)), "documents": len(documents),
                   "split": "by tokens", "val_fraction": val_fraction, "split_seed": split_seed}, f)
    log(f"data: tokenized {len(documents)} documents -> {len(out['train'])} train / {len(out['val'])} val tokens")
    return out
