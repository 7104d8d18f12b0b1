"""Text datasets for calibration and perplexity, and the built-in ones.

A dataset knows how to produce one long string per split, joined the way the papers'
perplexity protocol joins it, from a local directory (offline machines, tests) or from
the Hugging Face hub through ``datasets``. Adding a dataset is one ``TextDataset(...)``
entry registered through the ``register_datasets`` hook.

Local layout: ``DATA_DIR/<name>/<file>``, where ``DATA_DIR`` is ``--data-dir`` or the
environment variable ``HARNESS_DATA_DIR``. ``.txt`` files are read as they are; ``.json``
/ ``.jsonl`` files (optionally ``.gz``) are JSON lines whose ``text`` fields are joined.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import hookimpl
from harness.data.hub import hub_unreachable

DATA_DIR_ENV = "HARNESS_DATA_DIR"


class DatasetNotFound(FileNotFoundError):
    pass


@dataclass(frozen=True)
class TextDataset:
    name: str
    description: str
    #: split ("test" for evaluation, "calibration") -> local files to try, in order.
    local_files: dict[str, tuple[str, ...]]
    #: split -> function returning the joined text from the hub (``datasets``).
    hub: dict[str, Callable[[], str]] = field(default_factory=dict)
    joiner: str = "\n\n"
    #: The papers evaluate C4 on its first 256 windows only.
    max_eval_windows: int | None = None

    def locate(self, split: str, data_dir: str | Path | None = None) -> DataSource:
        """Where the split comes from, resolved now: a local file (with its content hash) or
        the hub. Fails here, before any cache is consulted, when neither is available."""
        tried = []
        data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
        if data_dir:
            for rel in self.local_files.get(split, ()):
                path = Path(data_dir) / self.name / rel
                if path.is_file():
                    return DataSource(self.name, split, str(path.resolve()), file_fingerprint(path))
                tried.append(str(path))
        if split in self.hub:
            offline = hub_unreachable()
            if offline is None:
                return DataSource(self.name, split, f"hub:{self.name}/{split}", None)
            tried.append(f"the hub (offline: {offline})")
        raise DatasetNotFound(
            f"no {split!r} data for dataset {self.name!r}; looked in: "
            + "; ".join(tried or ["nowhere"])
            + f". Pass --data-dir or set {DATA_DIR_ENV} to a directory holding "
            f"{self.name}/{' or '.join(self.local_files.get(split, ('<file>',)))}."
        )

    def read(self, source: DataSource) -> str:
        """The split's joined text, from where ``locate`` found it."""
        if source.sha256 is None:
            return self.hub[source.split]()
        return _read_local(Path(source.path), self.joiner)

    def text(self, split: str, data_dir: str | Path | None = None) -> tuple[str, str]:
        """The split's joined text and where it came from (``locate`` then ``read``)."""
        source = self.locate(split, data_dir)
        return self.read(source), source.path


@dataclass(frozen=True)
class DataSource:
    """One split of a dataset as found: a local file and its content hash, or the hub."""

    dataset: str
    split: str
    path: str  # resolved file path, or "hub:NAME/SPLIT"
    sha256: str | None  # the file's content (see file_fingerprint); None for the hub

    @property
    def identity(self) -> tuple:
        """What a cache of this split's tokens is keyed on: content, not the path it sits at."""
        return (self.dataset, self.split, self.sha256 or self.path)

    def describe(self) -> dict:
        return {"source": self.path, "sha256": self.sha256}


#: Files up to this size are hashed whole (WikiText-2's train split: 11 MB, ~20 ms).
WHOLE_HASH_BYTES = 256 * 2**20


def file_fingerprint(path: Path) -> str:
    """SHA-256 of the file's content; for a file over 256 MiB, of its size and its first and
    last MiB (a C4 shard is read in full when it is tokenised anyway, but not on every run).
    Read once per process while the file keeps its size and modification time (a model's
    identity, its tokenizer's and its cache key all hash the same file)."""
    path = Path(path).resolve()
    stat = path.stat()
    return _fingerprint(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _fingerprint(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_HASH_BYTES:
            for chunk in iter(lambda: f.read(2**20), b""):
                digest.update(chunk)
            return digest.hexdigest()
        digest.update(str(size).encode())
        digest.update(f.read(2**20))
        f.seek(size - 2**20)
        digest.update(f.read(2**20))
    return "sampled:" + digest.hexdigest()


def _read_local(path: Path, joiner: str) -> str:
    suffixes = path.suffixes
    opener = gzip.open if suffixes[-1] == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        if ".json" in suffixes or ".jsonl" in suffixes:
            return joiner.join(json.loads(line)["text"] for line in f if line.strip())
        return f.read()


def _hub(path: str, name: str | None, split: str, column: str, joiner: str,
         data_files: dict | None = None, first: int | None = None) -> Callable[[], str]:
    def load() -> str:
        import datasets

        ds = datasets.load_dataset(path, name, split=split, data_files=data_files)
        rows = ds[column] if first is None else ds[:first][column]
        return joiner.join(rows)

    return load


_C4 = "allenai/c4"
BUILTIN = (
    TextDataset(
        name="wikitext2",
        description="WikiText-2 raw v1 (Merity et al.); test joined with blank lines",
        local_files={
            "test": ("test.joined.txt", "test.txt"),
            # The train split is the standard calibration source; offline copies may only
            # have the validation split, which is disjoint from test and recorded as such.
            "calibration": ("train.joined.txt", "train.txt", "valid.tokens.txt"),
        },
        hub={
            "test": _hub("wikitext", "wikitext-2-raw-v1", "test", "text", "\n\n"),
            "calibration": _hub("wikitext", "wikitext-2-raw-v1", "train", "text", "\n\n"),
        },
    ),
    TextDataset(
        name="c4",
        description="C4 English (first validation shard; calibration from train shard 0)",
        local_files={
            "test": ("validation.txt", "c4-validation.00000-of-00008.json.gz",
                     "c4-validation.00000-of-00008.json"),
            "calibration": ("train.txt", "c4-train.00000-of-01024.json.gz",
                            "c4-train.00000-of-01024.json"),
        },
        hub={
            # SparseGPT's protocol: the first 1100 validation documents joined by spaces.
            "test": _hub(_C4, None, "validation", "text", " ",
                         {"validation": "en/c4-validation.00000-of-00008.json.gz"}, 1100),
            "calibration": _hub(_C4, None, "train", "text", "\n\n",
                                {"train": "en/c4-train.00000-of-01024.json.gz"}),
        },
        joiner=" ",
        max_eval_windows=256,
    ),
    TextDataset(
        name="ptb",
        description="Penn Treebank (text only); sentences joined by spaces",
        local_files={"test": ("test.txt", "ptb.test.txt"),
                     "calibration": ("train.txt", "ptb.train.txt")},
        hub={
            "test": _hub("ptb_text_only", "penn_treebank", "test", "sentence", " "),
            "calibration": _hub("ptb_text_only", "penn_treebank", "train", "sentence", " "),
        },
        joiner=" ",
    ),
)


@hookimpl
def register_datasets(register):
    for dataset in BUILTIN:
        register(dataset)
