"""Corpora at the edges: the validation split is by tokens (one file trains like many), val_fraction=0 means no
validation set, unusable corpora are named in one ConfigError; recipes state warmup as a fraction of the run."""
import glob
import math
import os
import sysconfig

import numpy as np
import pytest
import yaml

from helpers import ROOT, SMALL
from pretrain.config import load_config
from pretrain.data.packing import split_stream
from pretrain.errors import ConfigError

NO_WARMUP = [o for o in SMALL if not o.startswith("schedule.warmup_steps")]  # the recipe's warmup_fraction applies


def stdlib_text(limit: int) -> str:
    root = sysconfig.get_paths()["stdlib"]
    text = ""
    for f in sorted(glob.glob(os.path.join(root, "json", "*.py")) + glob.glob(os.path.join(root, "email", "*.py"))):
        text += open(f, encoding="utf-8").read()
        if len(text) >= limit:
            break
    return text[:limit]


@pytest.fixture(scope="module")
def one_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "one.txt"
    path.write_text(stdlib_text(120_000))
    return str(path)


def run(overrides):
    """Train in this process; (config, log lines, metrics rows, config.yaml as written)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from pretrain.loop import train
    from pretrain.tracking import read_metrics

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    cfg = load_config(overrides)
    logs = []
    train(cfg, log=logs.append)
    with open(os.path.join(cfg.run_dir, "config.yaml")) as f:
        return cfg, logs, read_metrics(cfg.run_dir), yaml.safe_load(f)


def test_split_holds_out_the_first_fraction_of_the_token_stream():
    tokens = np.arange(1000)
    train, val = split_stream(tokens, 0.1)
    assert np.array_equal(val, np.arange(100)) and np.array_equal(train, np.arange(100, 1000))
    train, val = split_stream(tokens, 0.0)
    assert len(val) == 0 and np.array_equal(train, tokens)
    assert len(split_stream(np.arange(10), 0.25)[1]) == 3  # 2.5 rounds half up


def test_documents_are_concatenated_in_a_seeded_order_then_cut(tmp_path):
    import datasets

    from pretrain.data.packing import packed_streams
    from pretrain.data.tokenizer import load_tokenizer

    texts = [f"document {i}: " + " ".join(f"word{i * j % 17}" for j in range(40 + 7 * i)) for i in range(9)]
    docs = datasets.Dataset.from_dict({"text": texts})

    class D:  # the data config fields the tokenizer reads
        tokenizer, vocab_size, cache_dir = "bpe", 300, str(tmp_path)

    tok = load_tokenizer(D, docs, "edges")
    encoded = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    total = sum(map(len, encoded))
    streams = {seed: packed_streams(docs, tok, fingerprint=f"e{seed}", val_fraction=0.3, split_seed=seed,
                                    cache_dir=str(tmp_path), log=lambda *_: None) for seed in (1, 2)}
    for s in streams.values():
        assert len(s["val"]) == math.floor(0.3 * total + 0.5) and len(s["val"]) + len(s["train"]) == total
        whole = np.concatenate([s["val"], s["train"]]).tolist()
        pieces, start = [], 0  # cut after each EOS: the documents, each whole, in some order
        for i, t in enumerate(whole):
            if t == tok.eos_token_id:
                pieces.append(whole[start:i + 1])
                start = i + 1
        assert sorted(pieces) == sorted(encoded)
    assert streams[1]["val"].tolist() != streams[2]["val"].tolist()
    one = packed_streams(datasets.Dataset.from_dict({"text": texts[:1]}), tok, fingerprint="one", val_fraction=0.25,
                         split_seed=0, cache_dir=str(tmp_path), log=lambda *_: None)  # one document is cut too
    assert np.concatenate([one["val"], one["train"]]).tolist() == encoded[0]
    assert len(one["val"]) == math.floor(0.25 * len(encoded[0]) + 0.5) > 0 and len(one["train"]) > 0


def test_one_text_file_trains_and_evaluates(one_file, tmp_path):
    cfg, logs, rows, saved = run(NO_WARMUP + ["data=text_files", f"data.paths=[{one_file}]", f"run_dir={tmp_path}/r"])
    evals = [r for r in rows if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [0, 10, 20] and all(math.isfinite(r["val_loss"]) for r in evals)
    assert len([r for r in rows if r.get("kind", "train") == "train"]) == 20
    # the tiny recipe's warmup_fraction 0.1 of 20 steps: 2 warmup steps, lr = peak * step / 2 (linear warmup)
    assert saved["schedule"]["warmup_steps"] == 2 and "warmup_fraction" not in saved["schedule"]
    train_rows = [r for r in rows if r.get("kind", "train") == "train"]
    assert train_rows[1]["lr"] == pytest.approx(3e-3 * 1 / 2)


def test_val_fraction_zero_means_no_validation_set(one_file, tmp_path):
    cfg, logs, rows, saved = run(SMALL + ["data=text_files", f"data.paths=[{one_file}]", "data.val_fraction=0",
                                          f"run_dir={tmp_path}/r"])
    assert "data: no validation set (data.val_fraction=0): evaluation is skipped" in logs
    assert not [r for r in rows if r.get("kind") == "eval"] and saved["train"]["eval_every"] == 0
    assert len([r for r in rows if r.get("kind", "train") == "train"]) == 20


def _build_data(overrides):
    from pretrain.data import build_data

    return build_data(load_config(SMALL + overrides), rank=0, world=1, log=lambda *_: None)


def test_corpus_too_small_after_tokenization_names_the_path(tmp_path):
    small = tmp_path / "repetitive.txt"
    small.write_text("hello world\n" * 300)  # 3600 bytes pass the byte bound (2048 tokens); BPE makes far fewer
    with pytest.raises(ConfigError, match=rf"data.paths: {small} has \d+ training tokens = \d+ sequences of "
                                          r"train.seq_len=128, fewer than one global batch"):
        _build_data(["data=text_files", f"data.paths=[{small}]", "train.seq_len=128", "train.global_batch_size=16",
                     "data.vocab_size=300", f"data.cache_dir={tmp_path}/cache"])


def test_validation_split_shorter_than_a_sequence_is_named_unless_evaluation_is_off(one_file, tmp_path):
    base = ["data=text_files", f"data.paths=[{one_file}]", "data.val_fraction=0.001"]
    with pytest.raises(ConfigError, match=r"data.val_fraction: the validation split of .*one.txt \(0.001 of the "
                                          r"tokens: \d+\) is shorter than one sequence of train.seq_len=64"):
        _build_data(base)
    tokenizer, loader, val = _build_data(base + ["train.eval_every=0"])
    assert val == [] and loader.n_blocks >= 8


def test_folders_and_globs_skip_empty_files_and_name_binary_ones(tmp_path):
    from pretrain.data.corpus import load_documents, local_files

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    assert local_files([str(pkg)]) == [str(pkg / "a.py"), str(pkg / "sub" / "b.py")]
    assert local_files([f"{pkg}/**/*.py"]) == [str(pkg / "a.py"), str(pkg / "sub" / "b.py")]
    with pytest.raises(ConfigError, match=r"__init__.py is empty"):
        local_files([str(pkg / "__init__.py")])  # named directly
    (pkg / "sub" / "c.pyc").write_bytes(b"\x00\x01\x02")
    with pytest.raises(ConfigError, match=r"data.paths: .*c.pyc is a binary file"):
        local_files([str(pkg)])
    late = tmp_path / "late.txt"  # invalid UTF-8 past the checked head: named by the tokenization pass
    late.write_bytes(b"a" * 70_000 + "caf\u00e9\n".encode("latin-1"))
    assert local_files([str(late)]) == [str(late)]

    class D:
        source, paths, max_bytes, cache_dir = "text_files", [str(late)], None, str(tmp_path / "cache")

    with pytest.raises(ConfigError, match=rf"data.paths: {late} is not UTF-8 text \(past its first 64 KiB"):
        load_documents(D)


def test_recipes_state_warmup_as_a_fraction_of_the_run():
    """Each recipe's warmup_steps is round(its warmup_fraction x train.steps), read from the YAML files here; a
    shorter run keeps the fraction; warmup_steps on the command line wins."""
    for path in sorted(glob.glob(os.path.join(ROOT, "recipes", "recipe", "*.yaml"))):
        recipe = yaml.safe_load(open(path))
        name, fraction = os.path.basename(path)[:-5], recipe["schedule"]["warmup_fraction"]
        steps = recipe.get("train", {}).get("steps", 300)
        cfg = load_config([f"recipe={name}"])
        assert cfg.schedule["warmup_steps"] == round(fraction * steps) and "warmup_fraction" not in cfg.schedule
        assert load_config([f"recipe={name}", "train.steps=20"]).schedule["warmup_steps"] == round(fraction * 20)
    assert load_config(["train.steps=20", "schedule.warmup_steps=7"]).schedule["warmup_steps"] == 7
    assert load_config(["train.steps=10", "schedule.warmup_fraction=0.5"]).schedule["warmup_steps"] == 5
    assert load_config(["schedule=wsd", "train.steps=40"]).schedule["warmup_steps"] == 4
    assert "warmup_steps" not in load_config(["schedule=one_cycle"]).schedule  # no warmup: the fraction is dropped
    with pytest.raises(ConfigError, match="schedule 'one_cycle' has no warmup"):
        load_config(["schedule=one_cycle", "schedule.warmup_fraction=0.1"])
