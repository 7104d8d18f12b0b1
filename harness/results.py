"""Run records: one JSON file per (model, method, target, protocol), written atomically.

A run that dies leaves no half-written record (write to a temporary file, fsync, rename).
A sweep that is started again skips the records that already exist, so it resumes where
it stopped; failed runs are recorded too (status "failed") and are retried.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def run_key(**fields: Any) -> str:
    """A short stable hash of everything that defines a run's result."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()[:60]


def record_path(out_dir: Path, model: str, method: str, target_label: str, key: str) -> Path:
    return Path(out_dir) / f"{slug(model)}__{slug(method)}__{slug(target_label)}__{key}.json"


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; records are meant to be shared
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=_jsonable)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_record(path: Path) -> dict | None:
    """The record at ``path``; None if it cannot be read or parsed (truncated, corrupt)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


class CorruptRecords(ValueError):
    """Record files that cannot be read: a table built without them would lose rows silently."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        super().__init__(f"{len(paths)} record file(s) cannot be read (truncated or corrupt): "
                         + ", ".join(map(str, paths))
                         + ". Rerun `harness run` to recompute them, delete them, or pass --skip-corrupt.")


def completed(path: Path) -> bool:
    record = read_record(path)
    return bool(record) and record.get("status") == "ok"


def load_records(results_dir: Path, skip_corrupt: bool = False, warn=None) -> list[dict]:
    """Every record under ``results_dir`` (recursively), failed ones included.

    A ``.json`` file that cannot be parsed raises ``CorruptRecords`` naming it, unless
    ``skip_corrupt``: then ``warn`` (default: stderr) is told and the file is left out.
    JSON files that are not records (tokenizer files of saved models, say) are ignored.
    """
    records, corrupt = [], []
    for path in sorted(Path(results_dir).rglob("*.json")):
        record = read_record(path)
        if record is None:
            corrupt.append(path)
        elif isinstance(record, dict) and record.get("schema") == SCHEMA_VERSION and "method" in record:
            record["_path"] = str(path)
            records.append(record)
    if corrupt and not skip_corrupt:
        raise CorruptRecords(corrupt)
    for path in corrupt:
        (warn or (lambda text: print(text, file=sys.stderr)))(f"warning: skipped unreadable record {path}")
    return records
