"""A record's protocol: everything besides the method and its target that its numbers depend on.

Two records are ranked in one table only when they were measured the same way. The protocol
is a flat mapping of named fields, each a plain value:

    model                           the checkpoint's identity (content hash; the name as given
                                    for records that predate it)
    dtype                           the weights' dtype
    calibration.dataset, .n, .length, .seed, .sha256, .batch_size, .bos
                                    the shared calibration set (absent for methods that use none)
    eval NAME.FIELD                 every field of an evaluation's recorded spec: windows, window
                                    length, data hash, zero-shot tasks, limit and lm-eval version,
                                    a speed phase's settings and device ...

Where the BOS token went (``bos``: calibration and perplexity) is ``none`` for records that
predate the field: they tokenised without special tokens.

Where a file was read from (``source``) is left out: its content hash is the identity, so the
same data at another path is the same protocol.

A field one record lacks is not a conflict: the dense row (no calibration) belongs to every
table of its evaluation protocol, and a row without zero-shot scores joins a table that has
them. Two records conflict when a field both define differs; ``tables`` groups records so that
no two records of one table conflict, and a record compatible with several tables appears in
each (the dense row of two calibration sets, say).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from harness.results import Record

#: Spec keys that say where something was read from, not what it was.
LOCATIONS = frozenset({"source"})

Protocol = dict[str, Any]


def _flatten(prefix: str, value: Any, out: Protocol) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key not in LOCATIONS:
                _flatten(f"{prefix}.{key}", inner, out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = json.dumps(list(value))
    else:
        out[prefix] = value


def protocol_of(record: Record) -> Protocol:
    """The record's protocol fields (see the module docstring)."""
    fields: Protocol = {"model": record.model_id or record.model, "dtype": record.dtype}
    if record.calibration:
        _flatten("calibration", {"bos": "none", **record.calibration}, fields)
    for name, spec in record.eval.items():
        _flatten(f"eval {name}", {"bos": "none", **spec} if name.startswith("ppl:") else spec, fields)
    return fields


def conflicts(a: Protocol, b: Protocol) -> list[str]:
    """The fields both protocols define with different values."""
    return [name for name in a if name in b and a[name] != b[name]]


def differences(a: Protocol, b: Protocol, names: tuple[str, str] = ("a", "b")) -> list[str]:
    """One line per conflicting field: ``calibration.n: 16 (stored) ≠ 8 (fresh)``."""
    return [f"{name}: {a[name]} ({names[0]}) ≠ {b[name]} ({names[1]})" for name in conflicts(a, b)]


@dataclass
class ProtocolTable:
    """Records that may share a ranked table, and the union of their protocol fields."""

    protocol: Protocol = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)


def tables(records: list[Record]) -> list[ProtocolTable]:
    """Records grouped so that no two records of a group conflict. Protocols that define more
    fields are placed first; each other protocol joins every group it agrees with (extending
    that group's fields), or starts a group of its own."""
    by_protocol: dict[str, tuple[Protocol, list[Record]]] = {}
    for record in records:
        protocol = protocol_of(record)
        key = json.dumps(protocol, sort_keys=True, default=str)
        by_protocol.setdefault(key, (protocol, []))[1].append(record)
    ordered = sorted(by_protocol.values(), key=lambda item: -len(item[0]))
    groups: list[ProtocolTable] = []
    for protocol, members in ordered:
        joined = [g for g in groups if not conflicts(g.protocol, protocol)]
        for group in joined:
            group.protocol.update(protocol)
            group.records += members
        if not joined:
            groups.append(ProtocolTable(dict(protocol), list(members)))
    order = {id(r): i for i, r in enumerate(records)}
    for group in groups:  # records in the order they were given
        group.records.sort(key=lambda r: order[id(r)])
    return groups


def distinguishing(groups: list[ProtocolTable]) -> list[list[str]]:
    """Per group, the ``field=value`` pairs that set it apart from the other groups: the fields
    on which some two groups conflict."""
    split = [name for i, a in enumerate(groups) for b in groups[i + 1:] for name in conflicts(a.protocol, b.protocol)]
    split = list(dict.fromkeys(split))
    return [[f"{name}={g.protocol[name]}" for name in split if name in g.protocol] for g in groups]


def newest_per_cell(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """One record per cell (model, method and its variant, target, mode, dtype) of one protocol table: of those
    that measured the most metrics, the newest (``created``). Another record of the same cell
    measured the same way is a rerun of the same measurement (another harness commit, say), and
    one that ran fewer of the table's evaluations never hides one that ran more; records of other
    protocols are never compared here. Returns (kept, superseded)."""
    def cell(record: Record) -> tuple:
        return record.name, record.method, record.variant, record.label, record.mode, record.dtype

    def rank(record: Record) -> tuple:
        return len(record.metrics), record.provenance.get("created", "")

    newest: dict[tuple, Record] = {}
    for record in records:
        held = newest.get(cell(record))
        if held is None or rank(record) > rank(held):
            newest[cell(record)] = record
    return ([r for r in records if newest[cell(r)] is r],
            [r for r in records if newest[cell(r)] is not r])
