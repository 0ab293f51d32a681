"""Corpus sources, all through HF `datasets`, each yielding documents with a "text" column.

- `stdlib`: the embedded default: this Python's own standard-library `.py` sources, read at run time from
  the machine (tests and site-packages excluded), never committed. Needs no download.
- `text_files`: local text files (paths, folders or globs); one document per file. `local_files` refuses, in
  one line naming the path, a path that matches nothing, a file that is not UTF-8 text (a NUL byte or invalid
  UTF-8 in its first 64 KiB; past that, the tokenization pass names the problem) and an empty file named
  directly; empty files found through a folder or glob are skipped, and a corpus with no text left is refused.
- `hub`: a hub dataset (e.g. HuggingFaceFW/fineweb-edu), streamed.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import os
import sysconfig

from ..errors import ConfigError


def stdlib_files() -> list[str]:
    return list(_stdlib_files())


@functools.lru_cache(maxsize=1)
def _stdlib_files() -> tuple[str, ...]:
    """The embedded corpus's files, listed once per process (the glob over the stdlib takes ~1 s)."""
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True))
    skip = ("site-packages", "test", "tests", "idle_test", "__pycache__")
    return tuple(f for f in files if not any(part in skip for part in os.path.relpath(f, root).split(os.sep)[:-1]))


HEAD_BYTES = 64 * 1024  # how much of each file is checked before anything is tokenized


def binary_problem(head: bytes) -> str | None:
    """Why the first bytes of a file are not UTF-8 text (None: they are)."""
    import codecs

    if b"\0" in head:
        return f"is a binary file, not text (a NUL byte at offset {head.index(0)})"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < HEAD_BYTES)
    except UnicodeDecodeError as e:
        return f"is not UTF-8 text (byte 0x{head[e.start]:02x} at offset {e.start})"
    return None


def _decodes(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            while f.read(1 << 20):
                pass
        return True
    except UnicodeDecodeError:
        return False


def local_files(paths) -> list[str]:
    """The files of `data.paths` (each a file, a folder: every file below it, or a glob: `**` recursive); a
    ConfigError names the path that matches nothing, the file that is binary and the file named directly that is
    empty. Empty files under a folder or glob are skipped (a folder of sources has empty `__init__.py` files)."""
    files = []
    for p in paths:
        p = os.path.expanduser(str(p))
        if os.path.isfile(p):
            found, direct = [p], True
        else:
            pattern = os.path.join(p, "**", "*") if os.path.isdir(p) else p
            found, direct = sorted(f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f)), False
            if not found:
                raise ConfigError("data.paths", f"folder {p!r} holds no files" if os.path.isdir(p)
                                  else f"no file or folder matches {p!r}")
        for f in found:
            with open(f, "rb") as fh:
                head = fh.read(HEAD_BYTES)
            if not head.strip():
                if direct:
                    raise ConfigError("data.paths", f"{f} is empty" + (" (only whitespace)" if head else ""))
                continue
            problem = binary_problem(head)
            if problem:
                raise ConfigError("data.paths", f"{f} {problem}; data.paths takes UTF-8 text files")
            files.append(f)
    if not files:
        raise ConfigError("data.paths", f"no text in {', '.join(map(str, paths))}: every file is empty")
    return files


def files_for(data_cfg) -> list[str]:
    """The document files of a file-backed source, limited to `max_bytes` (whole files, in sorted order)."""
    files = stdlib_files() if data_cfg.source == "stdlib" else local_files(data_cfg.paths)
    if data_cfg.max_bytes:
        kept, total = [], 0
        for f in files:
            if total >= data_cfg.max_bytes:
                break
            kept.append(f)
            total += os.path.getsize(f)
        files = kept
    return files


def check_size(data_cfg, train_cfg) -> None:
    """ConfigError, before anything is tokenized, for a `text_files` corpus certainly smaller than one global batch:
    a byte-level BPE token is at least one byte, so B bytes in D documents give at most B + D tokens (with EOS),
    (1 - val_fraction) of them (+ 1/2, the rounding) for training. Closer cases are caught after tokenization
    (`data.check_sizes`)."""
    if data_cfg.source != "text_files" or data_cfg.tokenizer != "bpe":
        return
    files = files_for(data_cfg)
    size = sum(os.path.getsize(f) for f in files)
    most = int((size + len(files)) * (1 - data_cfg.val_fraction) + 0.5)
    need = train_cfg.global_batch_size * train_cfg.seq_len
    if most < need:
        raise ConfigError("data.paths", f"{', '.join(map(str, data_cfg.paths))} holds {size} bytes in {len(files)} "
                          f"file(s), at most {most} training tokens, fewer than one global batch "
                          f"(train.global_batch_size x train.seq_len = {train_cfg.global_batch_size} x "
                          f"{train_cfg.seq_len} = {need}); add text, or lower train.global_batch_size or "
                          "train.seq_len")


def fingerprint(files: list[str]) -> str:
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def load_documents(data_cfg):
    """A `datasets.Dataset` (file sources) or streaming `IterableDataset` (hub) with a "text" column."""
    import datasets

    datasets.disable_progress_bars()
    if data_cfg.source in ("stdlib", "text_files"):
        files = files_for(data_cfg)
        try:
            return datasets.load_dataset("text", data_files={"train": files}, sample_by="document", split="train",
                                         cache_dir=os.path.join(os.path.expanduser(data_cfg.cache_dir), "hf_datasets"))
        except Exception as e:  # datasets wraps a decoding error past the checked head of a file
            if not isinstance(e.__cause__ or e, UnicodeDecodeError):
                raise
            bad = next((f for f in files if not _decodes(f)), "a file")
            raise ConfigError("data.paths", f"{bad} is not UTF-8 text (past its first {HEAD_BYTES // 1024} KiB: "
                              f"{(e.__cause__ or e).reason}); data.paths takes UTF-8 text files") from None
    if data_cfg.source == "hub":
        ds = datasets.load_dataset(data_cfg.hub_name, name=data_cfg.hub_config, split=data_cfg.split,
                                   streaming=True)
        if data_cfg.text_field != "text":
            ds = ds.rename_column(data_cfg.text_field, "text")
        return ds
    raise ConfigError("data.source", f"unknown source {data_cfg.source!r}", ["stdlib", "text_files", "hub"],
                      got=data_cfg.source)
