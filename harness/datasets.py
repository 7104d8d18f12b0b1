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

import gzip
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import hookimpl

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

    def text(self, split: str, data_dir: str | Path | None = None) -> tuple[str, str]:
        """The split's joined text and a description of where it came from."""
        tried = []
        data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
        if data_dir:
            for rel in self.local_files.get(split, ()):
                path = Path(data_dir) / self.name / rel
                if path.is_file():
                    return _read_local(path, self.joiner), str(path)
                tried.append(str(path))
        if split in self.hub:
            try:
                return self.hub[split](), f"hub:{self.name}/{split}"
            except Exception as error:  # offline, missing auth, renamed dataset...
                tried.append(f"the hub via `datasets` ({type(error).__name__}: {error})"[:300])
        raise DatasetNotFound(
            f"no {split!r} data for dataset {self.name!r}; looked in: "
            + "; ".join(tried or ["nowhere"])
            + f". Pass --data-dir or set {DATA_DIR_ENV} to a directory holding "
            f"{self.name}/{' or '.join(self.local_files.get(split, ('<file>',)))}."
        )


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
