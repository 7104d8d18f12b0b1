"""The one way this harness writes a file: all of it or nothing, safe with many writers.

The content goes to a uniquely named temporary file in the same directory (so two
processes filling the same cache key, or writing the same record on shared storage,
never write into one file), is flushed to disk, and is renamed over the target in one
step: a reader sees the old file or the new one, never half of either. A run killed
mid-write leaves no partial file behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: Path, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def atomic_write_dir(path: Path, fill: Callable[[Path], None]) -> Path:
    """Call ``fill(directory)`` on a temporary directory beside ``path``, then rename it to
    ``path``. When another writer got there first, its complete directory is kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        fill(staging)
        staging.rename(path)
    except OSError:  # the rename found a full directory: another writer's finished copy
        if not path.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
