"""Regression check: compare fresh results against a stored leaderboard.

    harness check RESULTS --against leaderboards/ci/smollm2-quick.json --rtol 0.02

RESULTS is a directory of run records or another leaderboard JSON. Rows are matched by
(method, target). A metric worse than the stored one by more than ``rtol`` (relative), or
a stored row with no fresh counterpart, fails the check; improvements are reported, not
failed. Which way is better comes from the evaluator that measured the metric (recorded
in the records and in the leaderboard JSON; the installed evaluators for older boards).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from harness.leaderboard import build_table, directions, records_frame
from harness.results import load_records, newest_per_cell


@dataclass
class Comparison:
    key: tuple[str, str]  # (method, target)
    metric: str
    stored: float | None
    fresh: float | None
    status: str  # "ok", "better", "WORSE", "MISSING"


def _rows(path: Path, skip_corrupt: bool = False) -> tuple[dict[tuple[str, str], dict], dict[str, bool]]:
    """Leaderboard rows by (method, target), and metric directions, from a JSON board or a records dir."""
    if path.is_dir():
        records = [r for r in newest_per_cell(load_records(path, skip_corrupt))[0] if r.ok]
        if not records:
            raise FileNotFoundError(f"no successful run records under {path}")
        rows = json.loads(build_table(records_frame(records)).to_json(orient="records"))
        better = directions(records)
    else:
        board = json.loads(path.read_text())
        rows, better = board["rows"], board.get("higher_is_better", {})
    return {(r["method"], str(r["target"])): r for r in rows}, better


def _metrics(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if ":" in k and not k.startswith("Δ") and v is not None}


def compare(fresh_path: Path, stored_path: Path, rtol: float = 0.02,
            skip_corrupt: bool = False) -> list[Comparison]:
    (fresh, fresh_better), (stored, stored_better) = (_rows(Path(fresh_path), skip_corrupt),
                                                      _rows(Path(stored_path), skip_corrupt))
    registry = None
    out = []
    for key, row in stored.items():
        for metric, reference in _metrics(row).items():
            value = _metrics(fresh.get(key, {})).get(metric)
            if value is None:
                out.append(Comparison(key, metric, reference, None, "MISSING"))
                continue
            higher = fresh_better.get(metric, stored_better.get(metric))
            if higher is None:  # a board written before directions were recorded: ask the evaluator
                from harness.plugins import default_registry

                registry = registry or default_registry()
                higher = registry.higher_is_better(metric)
            lower_better = not higher
            change = (value - reference) / abs(reference) if reference else value - reference
            worse = change if lower_better else -change
            status = "WORSE" if worse > rtol else "better" if worse < -rtol else "ok"
            out.append(Comparison(key, metric, reference, value, status))
    return out


def report(comparisons: list[Comparison]) -> str:
    rows = [[*c.key, c.metric, c.stored, c.fresh,
             None if c.fresh is None or not c.stored else f"{(c.fresh - c.stored) / abs(c.stored):+.2%}",
             c.status] for c in comparisons]
    return tabulate(rows, headers=["method", "target", "metric", "stored", "fresh", "change", "status"],
                    tablefmt="github", floatfmt=".4g", missingval="—")


def failed(comparisons: list[Comparison]) -> bool:
    return any(c.status in ("WORSE", "MISSING") for c in comparisons)
