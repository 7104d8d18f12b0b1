"""Leaderboards: run records → one table per model, mode and protocol, written by every
registered reporter.

Records measured differently (another calibration set, other evaluation windows, another
checkpoint: ``harness.report.protocol``) never share a ranked table: each protocol gets its own file,
with its own dense row, and ``index.md`` lists the tables. The dense row comes first as the
reference; every metric gets a Δ column against it (none where the protocol has no dense
row, and the header says so); the rest are sorted by a metric of your choice (default: the
first perplexity, ascending). The protocol is printed above each table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd

from harness.atomic import atomic_write_text
from harness.evaluation import describe_spec
from harness.plugins import Registry, default_registry
from harness.report.protocol import ProtocolTable, distinguishing, newest_per_cell, tables
from harness.results import Record, load_records, slug


def directions(records: list[Record]) -> dict[str, bool]:
    """Which way each metric improves, as the evaluators that measured it recorded."""
    return {metric: better for r in records for metric, better in r.higher_is_better.items()}


def records_frame(records: list[Record]) -> pd.DataFrame:
    rows = []
    for r in records:
        if not r.ok:
            continue
        row = {
            "model": r.name,
            "method": f"{r.method} ({r.variant})" if r.variant else r.method,
            "kind": r.method_kind,
            "pattern": r.pattern,
            "target": f"{r.label} (nearest)" if r.mode == "nearest-ratio" else r.label,
            "ratio": r.achieved["ratio"],
            "model ratio": r.achieved["whole_model_ratio"],
            "memory ratio": r.achieved.get("memory_ratio"),
        }
        row.update(r.metrics)
        row["compress s"] = r.timings.get("compress_s")
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "memory ratio" in frame and frame["memory ratio"].isna().all():  # records that predate the count
        frame = frame.drop(columns=["memory ratio"])
    return frame


def matching(names: list[str], patterns: list[str] | None) -> list[str]:
    """``names`` that match any glob in ``patterns`` ("zeroshot:*"), all of them for None."""
    return names if patterns is None else [n for n in names if any(fnmatch(n, p) for p in patterns)]


def build_table(frame: pd.DataFrame, sort: str | None = None,
                higher_is_better: dict[str, bool] | None = None,
                metrics: list[str] | None = None, deltas: list[str] | None = None) -> pd.DataFrame:
    """One model's table: dense first, Δ columns, ranks by ``sort`` in its metric's direction.
    ``metrics`` and ``deltas`` are globs choosing the metric columns and the ones with a Δ."""
    shown = matching([c for c in frame.columns if ":" in c], metrics)
    frame = frame[[c for c in frame.columns if ":" not in c or c in shown]]
    metrics = shown
    sort = sort or (metrics[0] if metrics else "ratio")
    if sort not in frame.columns:
        raise ValueError(f"cannot sort by {sort!r}; columns: {', '.join(frame.columns)}")
    dense = frame[frame["kind"] == "reference"]
    rest = frame[frame["kind"] != "reference"]
    ascending = not (higher_is_better or {}).get(sort, True) or sort == "compress s"
    # Rank within each matched point: the same target (a ratio, an N:M pattern, a speedup).
    rest = rest.assign(target=rest["target"].astype(str))
    rest = rest.sort_values(["target", sort], ascending=[True, ascending]).copy()
    rest.insert(0, "rank", rest.groupby(["target"])[sort].rank(ascending=ascending, method="min"))
    rest.loc[rest["target"].str.endswith(" (nearest)"), "rank"] = None  # matched no target: ranked beside none
    table = pd.concat([dense.assign(rank=None), rest], ignore_index=True)
    for metric in matching(metrics, deltas):
        if len(dense):
            table[f"Δ {metric}"] = table[metric] - dense[metric].iloc[0]
    ordered = ["rank", "method", "kind", "pattern", "target", "ratio", "model ratio", "memory ratio"]
    ordered = [c for c in ordered if c in table.columns]
    ordered += [c for m in metrics for c in (m, f"Δ {m}") if c in table.columns]
    ordered += [c for c in table.columns if c not in ordered and c != "model"]
    return table[ordered]


def protocol_header(records: list[Record], registry: Registry | None = None) -> str:
    """What every row of a table shares (or the distinct values, if they differ); each evaluation
    as its evaluator describes it."""
    registry = registry or default_registry()

    def distinct(get) -> str:
        values = []
        for r in records:
            try:
                v = get(r)
            except (KeyError, TypeError):
                continue
            if v is not None and v not in values:
                values.append(v)
        return " | ".join(map(str, values)) or "—"

    def calib(r):  # the data file by name and content hash, never by where it lay
        c = r.calibration
        if not c:
            return None
        source = Path(c["source"]).name + (f", sha256 {c['sha256'][:12]}" if c.get("sha256") else "")
        return f"{c['dataset']} {c['n']}×{c['length']} seed {c['seed']} ({source})"

    ids = {r.model_id for r in records if r.model_id}
    identity = f"{min(ids)[:17]}…, " if len(ids) == 1 else ""

    def evals(r) -> list[str]:
        parts = []
        for key, spec in r.eval.items():
            evaluator = registry.evaluator_for(key)
            details = r.details.get(evaluator.name) if evaluator else None
            parts.append(evaluator.describe(key, spec, details) if evaluator else describe_spec(key, spec))
        return parts

    # each evaluation once, whichever rows ran it (zero-shot may cover only some rows)
    evaluations = list(dict.fromkeys(part for r in records for part in evals(r)))

    p = records[0].provenance
    zeros = _dense_zero_fraction(records)
    notes = [] if zeros < 1e-3 else [
        f"dense zeros: {zeros:.2%} of the dense decoder-block weights are exact zeros (a dequantised "
        "quantised checkpoint); r counts nonzeros removed, so N:M rows, which keep N of every M elements, "
        f"measure r below 1 − N/M (2:4 with no kept zero: {1 - 0.5 / (1 - zeros):.4f})"]
    return "\n".join([
        f"model: {records[0].name} ({identity}{records[0].architecture}-family adapter row, "
        f"{distinct(lambda r: r.dtype)})",
        "ratio: r = 1 − P_blocks(compressed)/P_blocks(dense), nonzero parameters of decoder-block linears",
        f"calibration: {distinct(calib)}",
        f"evaluation: {'; '.join(evaluations) or '—'}",
        f"device: {distinct(lambda r: r.provenance['device'])}",
        f"versions: harness {p['harness']}, torch {p['torch']}, transformers {p['transformers']}",
        *notes,
    ])


def _dense_zero_fraction(records: list[Record]) -> float:
    """Exact zeros among the dense model's decoder-block elements, as the records counted them."""
    for r in records:
        dense = (r.achieved or {}).get("params_dense") or {}
        if dense.get("block_elements"):
            return 1 - dense["blocks"] / dense["block_elements"]
    return 0.0


def off_target(records: list[Record]) -> list[str]:
    """Matched-speedup rows whose final measurement, of the compressed model itself, misses the
    target by more than the search's tolerance although the search's probe (a model of the same
    shapes) matched it: the table shows the final figure, the header says it missed."""
    off = []
    for r in records:
        match = r.match or {}
        final = r.metrics.get(f"speedup:{match.get('phase')}")
        if final is None or not match.get("reached"):
            continue
        goal, tolerance = match["target"], match.get("tolerance", 0.02)  # 0.02: records before it was kept
        if abs(final - goal) > tolerance * goal:
            off.append(f"{r.method} {final:.3f}× against {goal:g}× ± {tolerance:.0%} (probe {match['speedup']:.3f}×)")
    return off


def board_stem(model: str) -> str:
    """A table's file name without its extension: the model's slug, less a checkpoint file's
    extension (``/tmp/dev/qwen.gguf`` → ``tmp-dev-qwen``). Other dots stay (``qwen2.5-0.5b``):
    reporters append their extension to the stem, never replace a "suffix"."""
    return slug(re.sub(r"\.gguf$", "", model, flags=re.IGNORECASE))


#: Table families: rows set by a ratio, a grid or a native knob share the first; a matched
#: speedup and a matched memory each get tables of their own (dense heads every one).
FAMILIES = {"ratio": "matched ratio", "matched-speedup": "matched speedup", "matched-memory": "matched memory"}


def table_family(record: Record) -> str:
    return record.mode if record.mode in FAMILIES else "ratio"


def table_notes(ok: list[Record], failed: list[Record], older: list[Record], family: str,
                registry: Registry | None = None) -> list[str]:
    """The lines under a table's protocol that say what its rows do not: how sliced rows export,
    what each evaluation adds (what every speedup divides by, say), which rows missed or could
    not reach their target, which runs failed and which older records of the same cells were
    left out."""
    registry = registry or default_registry()
    notes = []
    structured = sorted({r.method for r in ok if r.method_kind == "structured"})
    depth = [m for m in structured if getattr(registry.methods.get(m), "discrete_ratios", False)]
    sliced = [m for m in structured if m not in depth]
    if structured:  # what --save-models gives each row (harness/models/export.py)
        notes.append("exports: sparse rows are standard checkpoints stock transformers loads"
                     + (f"; depth-pruned rows ({', '.join(depth)}) too, with fewer layers" if depth else "")
                     + (f"; sliced rows ({', '.join(sliced)}) load through the harness (safetensors + shape plan)"
                        if sliced else ""))
    for name in dict.fromkeys(name for r in ok for name in r.details):
        if (evaluator := registry.evaluations.get(name)) is not None:
            notes += evaluator.notes([r.details[name] for r in ok if name in r.details])
    if family == "matched-speedup":
        notes.append("mode: matched measured speedup (each method's ratio searched with shape probes)")
        if off := off_target(ok):
            notes.append("measured off the target after the search (the search's probe matched): " + "; ".join(off))
    if family == "matched-memory":
        notes.append("mode: matched weight memory, m = the decoder blocks' stored bytes over dense fp16 (a ratio "
                     "searched to m ± 0.005, or the grid or N:M format nearest at or under m)")
    if quantized := sorted({r.method for r in ok if r.method_kind == "quantization" or "+" in r.method}):
        notes.append(f"quantized rows ({', '.join(quantized)}): weight-only, activations in the model's dtype; "
                     "r counts parameters (rounding removes none), the memory ratio counts bytes")
    if sparse_quantized := sorted({f"{r.method} {r.label}" for r in ok
                                   if "+" in r.method and ":" in str(r.target.get("pattern", ""))}):
        notes.append(f"N:M + quantized rows ({', '.join(sparse_quantized)}): the memory ratio counts the format's "
                     "bytes (kept values at their bits, 2-bit positions, as sparse low-bit kernels store them); no "
                     "kernel here runs both at once, so a speed they show is the low-bit kernel's on the weights "
                     "stored dense")
    if nearest := [r for r in ok if r.mode == "nearest-ratio"]:
        notes.append("nearest rows (not ranked): methods that remove whole blocks reach ratios in steps; these rows "
                     "are the step nearest their target, off it by more than ±0.005: " + "; ".join(
                         f"{r.method} @ {r.label}: r = {r.achieved['ratio']:.4f}" for r in nearest))
    if unreachable := [r for r in failed if r.status == "unreachable"]:
        what = {"matched-speedup": "target speedup", "matched-memory": "target weight memory"}.get(family, "target")
        notes.append(f"cannot reach the {what} (not ranked): " + "; ".join(
            f"{r.method} ({r.target['pattern']}): {r.error}" for r in unreachable))
    if older:
        notes.append(f"superseded: {len(older)} other record(s) of cells shown here left out (reruns of a cell "
                     "with this protocol; the one that measured the most, then the newest, is shown): "
                     + ", ".join(r.path.name for r in older[:4] if r.path) + (", …" if len(older) > 4 else ""))
    if failed := [r for r in failed if r.status != "unreachable"]:
        notes.append("failed runs (not ranked): " + "; ".join(f"{r.method} @ {r.label}: {r.error}" for r in failed))
    return notes


def protocol_suffix(fields: list[str]) -> str:
    """A file-name suffix from the fields that tell a model's tables apart: each field's last
    name and its value (hashes cut to 8 characters), e.g. ``n-8.window-length-512``."""
    def short(item: str) -> str:
        name, value = item.split("=", 1)
        value = value.split(":")[-1][:8] if len(value) > 16 else value
        return slug(f"{name.rsplit('.', 1)[-1]}-{value}")
    return ".".join(short(f) for f in fields)


def write_leaderboards(results_dir: Path, out_dir: Path, sort: str | None = None,
                       formats: list[str] | None = None, registry: Registry | None = None,
                       plots: bool = True, skip_corrupt: bool = False, metrics: list[str] | None = None,
                       deltas: list[str] | None = None) -> list[Path]:
    """One table per model, mode (matched ratio, speedup, memory) and protocol from the records
    under ``results_dir``, in every format asked for, with plots, and ``index.md`` listing the
    tables; returns the files written."""
    registry = registry or default_registry()
    records = load_records(results_dir, skip_corrupt)
    if not records:
        raise FileNotFoundError(f"no run records under {results_dir}")
    formats = formats or list(registry.reporters)
    unknown = set(formats) - set(registry.reporters)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; known: {', '.join(registry.reporters)}")

    written, index = [], []
    for entry in table_groups(records):
        paths = write_table(entry.group, Path(out_dir) / entry.stem, entry.family, sort, formats, registry, plots,
                            metrics, deltas, entry.fields if entry.several else None)
        written += paths
        index.append((entry.stem, entry.model, entry.family, entry.group, entry.fields))
    written.append(write_index(Path(out_dir), index))
    return written


@dataclass
class TableGroup:
    """One table to write: a model's records of one family (matched ratio, speedup, memory) and
    one protocol; ``fields`` set it apart from the model's other tables of that family."""

    stem: str  # its file name without extension
    model: str
    family: str
    group: ProtocolTable
    fields: list[str]
    several: bool  # the model has other tables of this family (another protocol)


def table_groups(records: list[Record]) -> list[TableGroup]:
    """Every table the records make, in the order their models and families first appear."""
    def in_table(r: Record, model: str, family: str) -> bool:  # the dense reference heads every family's tables
        return r.name == model and (r.method_kind == "reference" or table_family(r) == family)

    entries = []
    for model, family in dict.fromkeys((r.name, table_family(r)) for r in records):
        groups = [g for g in tables([r for r in records if in_table(r, model, family)])
                  if any(r.ok for r in g.records)
                  and (family == "ratio" or any(table_family(r) == family for r in g.records))]
        base = board_stem(model) + ("" if family == "ratio" else f"-{family}")
        stems: set[str] = set()
        for group, fields in zip(groups, distinguishing(groups)):
            name = base + (f"--{protocol_suffix(fields)}" if len(groups) > 1 else "")
            name = next(f"{name}{tail}" for tail in ["", *(f"-{i}" for i in range(2, len(groups) + 2))]
                        if f"{name}{tail}" not in stems)  # cut hashes may coincide: never overwrite a table
            stems.add(name)
            entries.append(TableGroup(name, model, family, group, fields, len(groups) > 1))
    return entries


def write_table(group: ProtocolTable, stem: Path, family: str, sort: str | None, formats: list[str],
                registry: Registry, plots: bool, metrics: list[str] | None, deltas: list[str] | None,
                split_by: list[str] | None) -> list[Path]:
    """One protocol's table in every format (and its plots); ``split_by``: the fields that set it
    apart from the model's other tables, when it has any."""
    kept, older = newest_per_cell(group.records)
    ok = [r for r in kept if r.ok]
    better = directions(ok)
    table = build_table(records_frame(ok), sort, better, metrics, deltas)
    table.attrs["higher_is_better"] = better  # for reporters that keep it (JSON)
    table.attrs["protocol"] = group.protocol
    notes = table_notes(ok, [r for r in kept if not r.ok], older, family, registry)
    if split_by:
        notes.append(f"protocol: one of several tables of this model (index.md), set apart by {', '.join(split_by)}")
    if not any(r.method_kind == "reference" for r in ok):
        notes.append("no dense row was measured with this protocol: no Δ columns")
    header = "\n".join([protocol_header(ok, registry), *notes])
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = [registry.reporters[name](table, header, stem) for name in formats]
    if plots:
        from harness.report.plots import write_plots

        # (not `metrics`: that is the caller's globs, which the next table needs too)
        shown = [c for c in table.columns if ":" in c and not c.startswith("Δ")]
        axes = {m: (e.plot_axis(m) if (e := registry.evaluator_for(m)) else "quality") for m in shown}
        written += write_plots(ok, stem, axes, better)
    return written


def write_index(out_dir: Path, entries: list[tuple[str, str, str, ProtocolTable, list[str]]]) -> Path:
    """``index.md``: every table written, with its model, mode, rows and what sets it apart."""
    lines = ["# Leaderboards", "",
             "One table per model, mode and protocol: rows measured differently are never ranked together.", "",
             "| table | model | mode | rows | dense row | protocol (where a model has several) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for stem, model, family, group, fields in entries:
        ok = [r for r in newest_per_cell(group.records)[0] if r.ok]
        dense = "yes" if any(r.method_kind == "reference" for r in ok) else "none (no Δ)"
        shown = ", ".join(fields) if len(fields) and sum(e[1] == model and e[2] == family for e in entries) > 1 else "—"
        lines.append(f"| `{stem}` | {model} | {FAMILIES[family]} | {len(ok)} "
                     f"| {dense} | {shown} |")
    return atomic_write_text(out_dir / "index.md", "\n".join(lines) + "\n")
