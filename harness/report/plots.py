"""Leaderboard plots (matplotlib, PNG): quality against ratio, and per-layer allocations.

Optional: without matplotlib (``pip install 'compression-harness[plots]'``) no plot is
written and the tables are unaffected.
"""

from __future__ import annotations

from pathlib import Path

from harness.results import Record


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_metric_vs_ratio(records: list[Record], metric: str, stem: Path, lower_better: bool = False) -> Path | None:
    """One line per method: the metric at each measured ratio (matched-ratio runs only)."""
    plt = _pyplot()
    if plt is None:
        return None
    ok = [r for r in records if r.ok and metric in r.metrics]
    dense = [r.metrics[metric] for r in ok if r.method_kind == "reference"]
    runs = [r for r in ok if r.method_kind != "reference" and r.mode == "matched-ratio"
            and r.target["pattern"] == "unstructured"]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in sorted({r.method for r in runs}):
        points = sorted((r.achieved["ratio"], r.metrics[metric]) for r in runs if r.method == method)
        ax.plot(*zip(*points), marker="o", label=method)
    if dense:
        ax.axhline(dense[0], color="gray", linestyle="--", label="dense")
    ax.set_xlabel("measured ratio r (decoder-block parameters removed)")
    ax.set_ylabel(metric)
    if lower_better:  # perplexity-like: spans orders of magnitude
        ax.set_yscale("log")
    ax.set_title(f"{records[0].name}: {metric} vs ratio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = stem.with_name(f"{stem.name}-{metric.replace(':', '-')}-vs-ratio.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def allocation_by_part(layer_ratios: dict[str, float]) -> dict[str, dict[int, float]]:
    """A report's ``layer_ratios`` by part, then block: names are "layers.12" (a whole block:
    part "block") or "layers.12.mlp" / "layers.12.down" (one of its parts)."""
    parts: dict[str, dict[int, float]] = {}
    for name, ratio in layer_ratios.items():
        _, block, *part = name.split(".")
        parts.setdefault(".".join(part) or "block", {})[int(block)] = ratio
    return parts


def plot_allocation(record: Record, stem: Path) -> Path | None:
    """A method's per-layer (or per-module) ratios, from its report."""
    plt = _pyplot()
    ratios = (record.report or {}).get("layer_ratios") or {}
    if plt is None or len(set(ratios.values())) < 2:
        return None  # uniform allocations say nothing a table does not
    fig, ax = plt.subplots(figsize=(9, 3.5))
    parts = allocation_by_part(ratios)  # one bar group per block
    width = 0.9 / len(parts)
    for i, (part, by_block) in enumerate(parts.items()):
        xs = [b + (i - (len(parts) - 1) / 2) * width for b in by_block]
        ax.bar(xs, list(by_block.values()), width=width, label=part)
    ax.set_xlabel("block")
    ax.legend(fontsize=7, ncol=len(parts))
    ax.set_ylabel("ratio removed")
    ax.set_title(f"{record.method} @ {record.label}: allocation "
                 f"(measured r = {record.achieved['ratio']:.3f})")
    ax.grid(alpha=0.3, axis="y")
    path = stem.with_name(f"{stem.name}-{record.method}-{record.label}-allocation.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_quality_vs_speedup(records: list[Record], quality: str, speedup: str, stem: Path,
                            lower_better: bool = False) -> Path | None:
    """Every run as a point (measured speedup, quality); the Pareto front (faster and better) joined."""
    plt = _pyplot()
    ok = [r for r in records if r.ok and quality in r.metrics and speedup in r.metrics]
    if plt is None or len(ok) < 2:
        return None
    points = sorted(((r.metrics[speedup], r.metrics[quality], r.method) for r in ok), reverse=True)
    front, best = [], None
    for s, q, _ in points:  # from the fastest down: keep a point if it beats every faster one
        if best is None or (q < best if lower_better else q > best):
            front.append((s, q))
            best = q
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in sorted({m for _, _, m in points}):
        xs, ys = zip(*[(s, q) for s, q, m in points if m == method])
        ax.scatter(xs, ys, label=method)
    ax.plot(*zip(*sorted(front)), color="black", linewidth=1, label="Pareto front")
    ax.set_xlabel(f"measured {speedup} (× dense, same run)")
    ax.set_ylabel(quality)
    if lower_better:
        ax.set_yscale("log")
    ax.set_title(f"{records[0].name}: {quality} vs speedup")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = stem.with_name(f"{stem.name}-{quality.replace(':', '-')}-vs-{speedup.replace(':', '-')}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(records: list[Record], stem: Path, axes: dict[str, str | None],
                higher_is_better: dict[str, bool]) -> list[Path]:
    """``axes``: each shown metric's role as its evaluator states it ("quality", "speedup" or None).
    Quality against ratio, the first quality metric against every speedup, and each record's
    per-layer allocation where it is not uniform."""
    quality = [m for m, axis in axes.items() if axis == "quality"]
    lower = {m: not higher_is_better.get(m, True) for m in axes}
    written = [plot_metric_vs_ratio(records, m, stem, lower[m]) for m in quality]
    if quality:
        written += [plot_quality_vs_speedup(records, quality[0], m, stem, lower[quality[0]])
                    for m, axis in axes.items() if axis == "speedup"]
    written += [plot_allocation(record, stem) for record in records if record.ok]
    return [p for p in written if p is not None]
