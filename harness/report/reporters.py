"""Built-in leaderboard formats: Markdown, CSV, JSON (registered like any plugin)."""

from __future__ import annotations

import json
import re
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


HTML_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
ul.protocol {{ color: #555; font-size: 0.9em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }}
th {{ background: #f3f3f3; position: sticky; top: 0; }}
td:nth-child(2), td:nth-child(3), td:nth-child(4), td:nth-child(5) {{ text-align: left; }}
tr.reference td {{ font-weight: bold; background: #fafae8; }}
</style></head><body>
<h1>{title}</h1>
<ul class="protocol">{protocol}</ul>
{table}
</body></html>
"""


def write_html(table: pd.DataFrame, header: str, stem: Path) -> Path:
    """A self-contained page: protocol list, then the table (dense row highlighted)."""
    import html

    protocol = "".join(f"<li>{html.escape(line)}</li>" for line in header.splitlines())
    body = table.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)
    body = re.sub(r"<tr>(\s*<td>[^<]*</td>\s*<td>dense</td>)", r'<tr class="reference">\1', body, count=1)
    page = HTML_PAGE.format(title=html.escape(stem.name), protocol=protocol, table=body)
    return atomic_write_text(file_for(stem, ".html"), page)


@hookimpl
def register_reporters(register):
    register("markdown", write_markdown)
    register("csv", write_csv)
    register("json", write_json)
    register("html", write_html)
