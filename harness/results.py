"""Run records: one ``Record`` per (model, method, target, protocol), one JSON file, written atomically.

A run that dies leaves no half-written record (write to a temporary file, fsync, rename).
A sweep that is started again skips the records that already exist, so it resumes where
it stopped; failed runs are recorded too (status "failed") and are retried.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.atomic import atomic_write

#: 2: ``higher_is_better`` per metric (read by leaderboards and ``check`` instead of a name
#: prefix), evaluator details under ``details`` (1 kept speed results under ``speed``).
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)


@dataclass
class Record:
    """One run: a method at a target on a model, as measured. Written as one JSON file."""

    key: str  # hash of everything that defines the result (see ``run_key``)
    model: str  # as the user named it (hub id, path, embedded name)
    architecture: str
    dtype: str
    method: str
    method_kind: str
    target: dict[str, Any]  # Target as a dict: ratio, pattern, options
    mode: str  # "matched-ratio" | "matched-speedup" | "native KNOB"
    label: str  # the target as the table shows it: "0.3", "2:4", "s=1.25", "slicing=0.25"
    variant: str | None = None  # the method's variant knobs away from their defaults ("base=sparsegpt")
    status: str = "ok"  # "ok" | "failed" | "unreachable"
    error: str | None = None
    calibration: dict[str, Any] | None = None  # Calibration.describe(), or None
    eval: dict[str, dict] = field(default_factory=dict)  # evaluation protocol, by "name:arg"
    metrics: dict[str, float] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)  # per metric
    details: dict[str, Any] = field(default_factory=dict)  # per evaluator (speed per phase, ...)
    timings: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # versions, commit, device, seed
    report: dict[str, Any] | None = None  # the method's CompressionReport
    achieved: dict[str, Any] | None = None  # MeasuredRatio.to_dict()
    memory: dict[str, Any] = field(default_factory=dict)
    match: dict[str, Any] | None = None  # matched-speedup search log
    saved_model: str | None = None
    model_id: str | None = None  # the checkpoint's identity (models.loading.identity): a content hash
    model_name: str | None = None  # its name for tables and folders (models.loading.display_name)
    traceback: str | None = None
    schema: int = SCHEMA_VERSION
    path: Path | None = field(default=None, compare=False, repr=False)  # where it was read from

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def name(self) -> str:
        """The model's name in tables, file names and plots (records made before ``model_name``
        existed: the model argument as given)."""
        return self.model_name or self.model

    @property
    def pattern(self) -> str:
        """The table's pattern column: sliced methods say "structured", not "unstructured"."""
        return "structured" if self.method_kind == "structured" else self.target["pattern"]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        return {k: v for k, v in data.items() if v is not None or k in ("error", "calibration")}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | None = None) -> Record:
        """A record of any readable schema, upgraded to this one."""
        data = dict(data)
        schema = data.get("schema")
        if schema not in READABLE_SCHEMAS:
            raise ValueError(f"record schema {schema!r} is not one of {READABLE_SCHEMAS}")
        if schema == 1:  # directions were a name prefix; speed results sat at the top
            data["higher_is_better"] = {m: not m.startswith("ppl:") for m in data.get("metrics", {})}
            if "speed" in data:
                data.setdefault("details", {})["speed"] = data.pop("speed")
            data["schema"] = SCHEMA_VERSION
        known = {f.name for f in fields(cls)} - {"path"}
        return cls(**{k: v for k, v in data.items() if k in known}, path=path)


def is_record(data: Any) -> bool:
    return isinstance(data, dict) and data.get("schema") in READABLE_SCHEMAS and "method" in data


def run_key(**fields: Any) -> str:
    """A short stable hash of everything that defines a run's result."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()[:60]


def record_path(out_dir: Path, model: str, method: str, target_label: str, key: str) -> Path:
    return Path(out_dir) / f"{slug(model)}__{slug(method)}__{slug(target_label)}__{key}.json"


def write_json_atomic(path: Path, data: Any) -> None:
    def write(f) -> None:
        json.dump(data, f, indent=2, sort_keys=False, default=_jsonable)
        f.write("\n")

    atomic_write(path, write)


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


def load_record(path: Path) -> Record | None:
    """The record at ``path``, upgraded to this schema; None if unreadable or not a record."""
    data = read_record(path)
    return Record.from_json(data, Path(path)) if is_record(data) else None


def write_record(path: Path, record: Record) -> None:
    write_json_atomic(path, record.to_json())


def completed(path: Path) -> bool:
    record = load_record(path)
    return record is not None and record.ok


def load_records(results_dir: Path, skip_corrupt: bool = False, warn=None) -> list[Record]:
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
        elif is_record(record):
            records.append(Record.from_json(record, path))
    if corrupt and not skip_corrupt:
        raise CorruptRecords(corrupt)
    for path in corrupt:
        (warn or (lambda text: print(text, file=sys.stderr)))(f"warning: skipped unreadable record {path}")
    return records
