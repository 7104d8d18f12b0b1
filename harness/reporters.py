"""Built-in leaderboard formats: Markdown, CSV, JSON (registered like any plugin)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from harness import hookimpl
from harness.results import write_json_atomic


def _atomic_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def markdown_text(table: pd.DataFrame, header: str) -> str:
    protocol = "\n".join(f"- {line}" for line in header.splitlines())
    body = tabulate(table, headers="keys", tablefmt="github", showindex=False,
                    floatfmt=".4g", missingval="")
    return f"{protocol}\n\n{body}\n"


def write_markdown(table: pd.DataFrame, header: str, stem: Path) -> Path:
    return _atomic_text(stem.with_suffix(".md"), markdown_text(table, header))


def write_csv(table: pd.DataFrame, header: str, stem: Path) -> Path:
    return _atomic_text(stem.with_suffix(".csv"), table.to_csv(index=False))


def write_json(table: pd.DataFrame, header: str, stem: Path) -> Path:
    path = stem.with_suffix(".json")
    rows = json.loads(table.to_json(orient="records"))
    write_json_atomic(path, {"protocol": header.splitlines(), "rows": rows})
    return path


@hookimpl
def register_reporters(register):
    register("markdown", write_markdown)
    register("csv", write_csv)
    register("json", write_json)
