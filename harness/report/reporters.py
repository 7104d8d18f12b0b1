"""Built-in leaderboard formats: Markdown, CSV, JSON (registered like any plugin)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from harness import hookimpl
from harness.atomic import atomic_write_text
from harness.results import write_json_atomic


def file_for(stem: Path, suffix: str) -> Path:
    """``stem`` plus ``suffix``, appended: a stem may hold dots (``qwen2.5-0.5b``), which
    ``Path.with_suffix`` would take for an extension and cut."""
    return stem.with_name(stem.name + suffix)


def markdown_text(table: pd.DataFrame, header: str) -> str:
    protocol = "\n".join(f"- {line}" for line in header.splitlines())
    cells = table.astype(object).where(table.notna(), None)  # a metric a row did not measure: blank
    body = tabulate(cells, headers="keys", tablefmt="github", showindex=False,
                    floatfmt=".4g", missingval="")
    return f"{protocol}\n\n{body}\n"


def write_markdown(table: pd.DataFrame, header: str, stem: Path) -> Path:
    return atomic_write_text(file_for(stem, ".md"), markdown_text(table, header))


def write_csv(table: pd.DataFrame, header: str, stem: Path) -> Path:
    return atomic_write_text(file_for(stem, ".csv"), table.to_csv(index=False))


def write_json(table: pd.DataFrame, header: str, stem: Path) -> Path:
    path = file_for(stem, ".json")
    rows = json.loads(table.to_json(orient="records"))
    write_json_atomic(path, {"protocol": header.splitlines(), "rows": rows,
                             "higher_is_better": table.attrs.get("higher_is_better", {}),
                             "protocol_fields": table.attrs.get("protocol")})
    return path


@hookimpl
def register_reporters(register):
    register("markdown", write_markdown)
    register("csv", write_csv)
    register("json", write_json)
