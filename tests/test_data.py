"""Data: packing with EOS, per-rank disjoint batches, deterministic order, and the streaming loader (hub path)
exercised on local files through datasets' streaming mode. The validation split (by tokens) and unusable corpora:
tests/test_data_edges.py."""
import numpy as np
import pytest
import torch

from pretrain.data.loader import PackedLoader, StreamingLoader, val_batches


def test_ranks_read_disjoint_sequences_that_together_form_the_global_batch():
    tokens = np.arange(64 * 10, dtype=np.int64)  # 64 blocks of 10 tokens, block b = 10b..10b+9
    one = PackedLoader(tokens, seq_len=10, global_batch=8, micro_batch=2, rank=0, world=1, seed=0)
    full = [one.micro_batch(5, i) for i in range(4)]
    parts = []
    for rank in range(2):
        ld = PackedLoader(tokens, seq_len=10, global_batch=8, micro_batch=2, rank=rank, world=2, seed=0)
        parts += [ld.micro_batch(5, i) for i in range(2)]
    assert torch.equal(torch.cat(full), torch.cat(parts))
    starts = torch.cat(full)[:, 0].tolist()
    assert len(set(starts)) == 8 and all(s % 10 == 0 for s in starts)
    # an epoch visits every block once, in a seeded order
    seen = [one.micro_batch(s, i)[:, 0] for s in range(8) for i in range(4)]
    assert sorted(torch.cat(seen).tolist()) == list(range(0, 640, 10))
    other = PackedLoader(tokens, seq_len=10, global_batch=8, micro_batch=2, rank=0, world=1, seed=1)
    assert not torch.equal(other.micro_batch(0, 0), one.micro_batch(0, 0))


def test_validation_set_is_the_same_for_any_number_of_processes():
    tokens = np.arange(40 * 8)
    whole = torch.cat(val_batches(tokens, seq_len=8, micro_batch=4, n_batches=3, rank=0, world=1))
    split = torch.cat([b for r in range(2) for b in val_batches(tokens, seq_len=8, micro_batch=4, n_batches=3,
                                                                  rank=r, world=2)])
    assert torch.equal(whole, split) and whole.shape == (12, 8)


def test_too_small_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        PackedLoader(np.arange(50), seq_len=10, global_batch=8, micro_batch=2, rank=0, world=1, seed=0)


def test_streaming_loader_packs_with_eos_splits_ranks_and_resumes(tmp_path):
    import datasets

    from pretrain.data.tokenizer import load_tokenizer
    for i in range(12):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i} " + " ".join(f"w{i}_{j}" for j in range(30)))
    files = sorted(str(p) for p in tmp_path.glob("*.txt"))
    ds = datasets.load_dataset("text", data_files={"train": files}, sample_by="document", split="train",
                               streaming=True)

    class D:  # the data config fields the tokenizer reads
        tokenizer, vocab_size, cache_dir = "bpe", 300, str(tmp_path / "cache")

    tok = load_tokenizer(D, documents=[{"text": open(f).read()} for f in files], fingerprint="t")
    eos = tok.eos_token_id
    loaders = [StreamingLoader(ds, tok, seq_len=16, micro_batch=2, rank=r, world=2, seed=0, shuffle_buffer=0)
               for r in range(2)]
    a0, a1 = loaders[0].micro_batch(0, 0), loaders[1].micro_batch(0, 0)
    assert a0.shape == (2, 16) and not torch.equal(a0, a1)
    state = loaders[0].state_dict(1)
    nxt = [loaders[0].micro_batch(1, 0) for _ in range(3)]
    fresh = StreamingLoader(ds, tok, seq_len=16, micro_batch=2, rank=0, world=2, seed=0, shuffle_buffer=0)
    fresh.load_state_dict(state, 1)
    assert all(torch.equal(x, fresh.micro_batch(1, 0)) for x in nxt)
    flat = torch.cat([loaders[0].micro_batch(2, 0) for _ in range(10)]).flatten()
    assert (flat == eos).sum() >= 2
