"""Saving a compressed model and loading it back.

A compressed model is an ordinary module tree, but not always one that transformers can
rebuild from a config (sliced widths, SliceGPT's shortcut blocks, narrower value heads).
We therefore save the whole module with ``torch.save`` beside its tokenizer; loading
unpickles classes from transformers and this project, so load only files you trust.
``harness run --model DIR`` accepts such a directory like any other model.
"""

from __future__ import annotations

from pathlib import Path

import torch

import harness
from harness.atomic import atomic_write

MODEL_FILE = "harness-model.pt"


def save_compressed(model: torch.nn.Module, tokenizer, path: str | Path, info: dict | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    payload = {"format": 1, "harness": harness.__version__, "info": info or {}, "model": model}
    atomic_write(path / MODEL_FILE, lambda f: torch.save(payload, f), binary=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def is_compressed_dir(path: str | Path) -> bool:
    return (Path(path) / MODEL_FILE).is_file()


def load_compressed(path: str | Path, device: str = "cpu"):
    """(model, tokenizer) saved by ``save_compressed``."""
    from transformers import AutoTokenizer

    payload = torch.load(Path(path) / MODEL_FILE, map_location=device, weights_only=False)
    model = payload["model"].eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer
