"""Corpus sources, all through HF `datasets`, each yielding documents with a "text" column.

- `stdlib`: the embedded default: this Python's own standard-library `.py` sources, read at run time from
  the machine (tests and site-packages excluded), never committed. Needs no download.
- `text_files`: local text files (paths or globs); one document per file.
- `hub`: a hub dataset (e.g. HuggingFaceFW/fineweb-edu), streamed.
"""
from __future__ import annotations

import glob
import hashlib
import os
import sysconfig

from ..errors import ConfigError


def stdlib_files() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True))
    skip = ("site-packages", "test", "tests", "idle_test", "__pycache__")
    return [f for f in files if not any(part in skip for part in os.path.relpath(f, root).split(os.sep)[:-1])]


def local_files(paths) -> list[str]:
    files = []
    for p in paths:
        p = os.path.expanduser(str(p))
        if os.path.isdir(p):
            files += sorted(f for f in glob.glob(os.path.join(p, "**", "*"), recursive=True) if os.path.isfile(f))
        else:
            matched = sorted(glob.glob(p))
            if not matched:
                raise ConfigError("data.paths", f"no file matches {p!r}")
            files += matched
    if not files:
        raise ConfigError("data.paths", "no input files given; set data.paths to files, folders or globs")
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
        ds = datasets.load_dataset("text", data_files={"train": files}, sample_by="document", split="train",
                                   cache_dir=os.path.join(os.path.expanduser(data_cfg.cache_dir), "hf_datasets"))
        return ds
    if data_cfg.source == "hub":
        ds = datasets.load_dataset(data_cfg.hub_name, name=data_cfg.hub_config, split=data_cfg.split,
                                   streaming=True)
        if data_cfg.text_field != "text":
            ds = ds.rename_column(data_cfg.text_field, "text")
        return ds
    raise ConfigError("data.source", f"unknown source {data_cfg.source!r}", ["stdlib", "text_files", "hub"],
                      got=data_cfg.source)
