"""Regression check: compare fresh results against a stored leaderboard.

    harness check RESULTS --against leaderboards/ci/smollm2-quick.json --rtol 0.02

RESULTS is a directory of run records or another leaderboard JSON. Only like is compared with
like: the stored board's protocol (``harness.report.protocol``: checkpoint, dtype, calibration set,
evaluation spec) must agree with the fresh results' on every field both define, or the check
stops with ``ProtocolMismatch`` naming each field that differs (exit 2), never a verdict on
numbers measured differently. Rows are matched by (method, target). A metric worse than the
stored one by more than ``rtol`` (relative), or a stored row with no fresh counterpart, fails
the check; improvements and fresh rows the reference lacks are reported, not failed. Which
way is better comes from the evaluator that measured the metric (recorded in the records and
in the leaderboard JSON; the installed evaluators for older boards).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from harness.report.leaderboard import build_table, directions, records_frame
from harness.report.protocol import Protocol, conflicts, differences, newest_per_cell, tables
from harness.results import load_records

Key = tuple[str, str]  # (method, target)


class ProtocolMismatch(ValueError):
    """The two sides were measured differently: their numbers are not compared."""


@dataclass
class Board:
    """One table's rows by (method, target), its protocol, and which way each metric improves."""

    protocol: Protocol | None
    rows: dict[Key, dict] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)


@dataclass
class Comparison:
    key: Key
    metric: str
    stored: float | None
    fresh: float | None
    status: str  # "ok", "better", "WORSE", "MISSING" (stored row absent), "NEW" (fresh row not in the reference)


def boards(path: Path, skip_corrupt: bool = False) -> list[Board]:
    """A leaderboard JSON's one table, or a records directory's tables, one per protocol."""
    if not path.is_dir():
        board = json.loads(path.read_text())
        return [Board(board.get("protocol_fields"), {(r["method"], str(r["target"])): r for r in board["rows"]},
                      board.get("higher_is_better", {}))]
    found = []
    for group in tables(load_records(path, skip_corrupt)):
        records = [r for r in newest_per_cell(group.records)[0] if r.ok]
        if records:
            rows = json.loads(build_table(records_frame(records)).to_json(orient="records"))
            found.append(Board(group.protocol, {(r["method"], str(r["target"])): r for r in rows},
                               directions(records)))
    if not found:
        raise FileNotFoundError(f"no successful run records under {path}")
    return found


def counterpart(stored: Board, fresh: list[Board], names: tuple[str, str]) -> Board:
    """The fresh table measured as ``stored`` was (the one sharing most rows, if several)."""
    if stored.protocol is None or any(board.protocol is None for board in fresh):
        raise ProtocolMismatch(
            f"the {names[0] if stored.protocol is None else names[1]} leaderboard records no protocol, so "
            "nothing shows it was measured like the other side: regenerate it from its records with "
            "`harness leaderboard`")
    alike = [board for board in fresh if not conflicts(stored.protocol, board.protocol)]
    if alike:
        return max(alike, key=lambda board: len(board.rows.keys() & stored.rows.keys()))
    closest = min(fresh, key=lambda board: len(conflicts(stored.protocol, board.protocol)))
    raise ProtocolMismatch(
        f"the {names[1]} results were measured with another protocol than the {names[0]} leaderboard; "
        "not comparing them. Fields that differ:\n  "
        + "\n  ".join(differences(stored.protocol, closest.protocol, names)))


def _metrics(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if ":" in k and not k.startswith("Δ") and v is not None}


def compare(fresh_path: Path, stored_path: Path, rtol: float = 0.02,
            skip_corrupt: bool = False) -> list[Comparison]:
    fresh_boards = boards(Path(fresh_path), skip_corrupt)
    registry = None
    out = []
    for stored in boards(Path(stored_path), skip_corrupt):
        fresh = counterpart(stored, fresh_boards, ("stored", "fresh"))
        for key, row in stored.rows.items():
            for metric, reference in _metrics(row).items():
                value = _metrics(fresh.rows.get(key, {})).get(metric)
                if value is None:
                    out.append(Comparison(key, metric, reference, None, "MISSING"))
                    continue
                higher = fresh.higher_is_better.get(metric, stored.higher_is_better.get(metric))
                if higher is None:  # a board written before directions were recorded: ask the evaluator
                    from harness.plugins import default_registry

                    registry = registry or default_registry()
                    higher = registry.higher_is_better(metric)
                change = (value - reference) / abs(reference) if reference else value - reference
                worse = -change if higher else change
                status = "WORSE" if worse > rtol else "better" if worse < -rtol else "ok"
                out.append(Comparison(key, metric, reference, value, status))
        out += [Comparison(key, "—", None, None, "NEW") for key in fresh.rows if key not in stored.rows]
    return out


def report(comparisons: list[Comparison]) -> str:
    rows = [[*c.key, c.metric, c.stored, c.fresh,
             None if c.fresh is None or not c.stored else f"{(c.fresh - c.stored) / abs(c.stored):+.2%}",
             "NEW (not in the reference)" if c.status == "NEW" else c.status] for c in comparisons]
    return tabulate(rows, headers=["method", "target", "metric", "stored", "fresh", "change", "status"],
                    tablefmt="github", floatfmt=".4g", missingval="—")


def failed(comparisons: list[Comparison]) -> bool:
    return any(c.status in ("WORSE", "MISSING") for c in comparisons)
