"""Batch-size ramps (`train.batch_ramp`): the size and lr of every step against an independent walk of the rule,
the data each step reads, a resumed run across a size change continuing bitwise (linear and auto ramps), and
bad input."""
import math
import shutil

import pytest

from helpers import SMALL, rows, train_inprocess

SEQ = 64  # SMALL's train.seq_len


def ramp_sizes(steps, G, S, I, N, L):
    """The GPT-3 style ramp walked step by step: a step's size is S + I * floor(tokens so far / (N / m)), capped
    at G, m = (G - S) / I."""
    m = (G - S) // I
    sizes, tokens = [], 0
    for _ in range(steps):
        size = min(G, S + I * math.floor(tokens / (N / m)))
        sizes.append(size)
        tokens += size * L
    return sizes


@pytest.mark.parametrize("G,S,I,N,L", [(16, 4, 4, 3000, 64), (64, 8, 8, 100_000, 128), (32, 8, 24, 7777, 32),
                                       (12, 4, 4, 100, 64)])
def test_ramp_sizes_follow_the_rule(G, S, I, N, L):
    from pretrain.batch_size import BatchSizes
    b = BatchSizes(G, seq_len=L, quantum=4, start=S, increment=I, tokens=N)
    want = ramp_sizes(300, G, S, I, N, L)
    assert [b.size(s) for s in range(300)] == want
    assert [b.consumed(s) for s in range(300)] == [sum(want[:s]) for s in range(300)]
    assert b.ramp_end() == want.index(G)
    for rule, f in [("none", lambda k: 1.0), ("linear", lambda k: k), ("sqrt", math.sqrt)]:
        assert [b.lr_factor(s, rule) for s in range(300)] == [f(x / G) for x in want]


RAMP = ["train.global_batch_size=16", "train.micro_batch_size=4", "train.batch_ramp={start: 4, increment: 4, tokens: 3000}",
        "schedule=constant", "schedule.warmup_steps=0", "optim.lr=2e-3"]


def test_a_ramped_run_reads_each_step_at_its_size_and_rule_lr(tmp_path):
    """lr = lr at G (sqrt rule from base 8: 2e-3 sqrt(16/8)) x sqrt(size / 16) at every step; tokens counted."""
    _, _ = train_inprocess(RAMP + [f"run_dir={tmp_path / 'r'}", "train.steps=14", "train.eval_every=0",
                                   "scaling.batch_lr_rule=sqrt", "scaling.base_batch_size=8"])
    r = rows(tmp_path / "r")
    want = ramp_sizes(14, 16, 4, 4, 3000, SEQ)
    assert len(set(want)) == 4  # the run crosses every size
    assert [x["batch_size"] for x in r] == want
    assert [x["tokens"] for x in r] == [sum(want[:s + 1]) * SEQ for s in range(14)]
    peak = 2e-3 * math.sqrt(16 / 8)
    assert [x["lr"] for x in r] == pytest.approx([peak * math.sqrt(s / 16) for s in want], rel=1e-12)


def test_the_ramp_reads_consecutive_sequences_of_the_fixed_order():
    """Step s reads sequences [consumed(s), consumed(s) + size(s)) of the loader's order, split over ranks and
    micro-batches as at a fixed size."""
    import numpy as np

    from pretrain.batch_size import BatchSizes
    from pretrain.data import PackedLoader
    tokens = np.arange(1000 * 4)
    b = BatchSizes(16, seq_len=4, quantum=8, start=8, increment=8, tokens=200)
    seen = []
    for step in range(12):
        for rank in range(2):
            ld = PackedLoader(tokens, seq_len=4, global_batch=16, micro_batch=4, rank=rank, world=2, seed=3)
            ld.batch_sizes = b
            for i in range(b.size(step) // 8):
                seen.append(ld.micro_batch(step, i)[:, 0].tolist())
    order = PackedLoader(tokens, seq_len=4, global_batch=16, micro_batch=4, rank=0, world=1, seed=3)
    flat = [x // 4 for chunk in seen for x in chunk]
    assert sorted(flat) == sorted(int(order._perm_for(0)[k]) for k in range(b.consumed(12)))
    assert len(set(flat)) == len(flat)


@pytest.mark.parametrize("ramp", ["linear", "auto"])
def test_resume_across_a_batch_size_change_is_bitwise(tmp_path, monkeypatch, ramp):
    import pretrain.batch_size as bs
    monkeypatch.setattr(bs, "AUTO_MIN_OBSERVATIONS", 5)
    extra = RAMP if ramp == "linear" else RAMP[:2] + ["train.batch_ramp=auto"] + RAMP[3:]
    common = extra + ["train.steps=12", "train.eval_every=6", "train.save_every=4", "train.keep_checkpoints=0"]
    full = tmp_path / "full"
    train_inprocess(common + [f"run_dir={full}"])
    a = {x["step"]: x for x in rows(full)}
    sizes = [a[s]["batch_size"] for s in sorted(a)]
    assert sizes[3] < sizes[-1]  # the size changes after the checkpoint at step 4
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_4", part / "checkpoints" / "step_4")
    train_inprocess(common + [f"run_dir={part}", "resume=auto"])
    b = {x["step"]: x for x in rows(part)}
    assert sorted(b) == list(range(5, 13))
    for s in b:
        for key in ("loss", "grad_norm", "lr", "batch_size", "tokens", "b_noise"):
            assert b[s][key] == a[s][key], (s, key, a[s][key], b[s][key])
    assert rows(part, "eval")[-1]["val_loss"] == rows(full, "eval")[-1]["val_loss"]


@pytest.mark.parametrize("ramp,field,words", [
    ("{start: 6, increment: 4, tokens: 1000}", "train.batch_ramp.start", "multiple of train.micro_batch_size"),
    ("{start: 4, increment: 8, tokens: 1000}", "train.batch_ramp.increment", "must divide"),
    ("{start: 16, increment: 4, tokens: 1000}", "train.batch_ramp.start", "below train.global_batch_size"),
    ("{start: 4, increment: 4, tokens: 1.0e9}", "train.batch_ramp.tokens", "after the run"),
    ("{start: 4, increment: 4, tokens: -5}", "train.batch_ramp.tokens", "positive"),
    ("{start: 4, increment: 4}", "train.batch_ramp.tokens", "missing"),
    ("{start: 4, increment: 4, tokens: 100, stop: 3}", "train.batch_ramp.stop", "unknown key"),
    ("fast", "train.batch_ramp", "null, 'auto' or a mapping"),
])
def test_bad_ramps_name_the_field(ramp, field, words):
    from pretrain.config import load_config
    from pretrain.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        load_config(SMALL + ["train.global_batch_size=16", f"train.batch_ramp={ramp}"])
    assert e.value.field == field and words in str(e.value), str(e.value)


def test_ramps_under_deepspeed_are_refused(monkeypatch):
    from pretrain.config import load_config
    from pretrain.errors import ConfigError
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError) as e:
        load_config(SMALL + ["train.global_batch_size=16", "train.batch_ramp=auto"])
    assert e.value.field == "train.batch_ramp" and "DeepSpeed" in str(e.value)
