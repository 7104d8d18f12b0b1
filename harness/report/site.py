"""The leaderboard site: static pages from run records, an index of models and one page per model.

A model page holds each of its tables (matched ratio, matched speedup, matched memory; one per
protocol, as ``harness.report.leaderboard`` splits them): sortable by any column and filterable by
method kind, pattern and target, the dense row pinned on top as the reference (a footer group
drawn first: sorting and filtering leave it), Δ columns coloured
by whether the change is for the better (``higher_is_better`` from the records). Beside each table
its trade-off plots: quality against measured speedup, weight memory and ratio, one point per row,
the Pareto front drawn, the method, knobs and provenance on hover. Under them, per record: knobs,
provenance, the command that reproduces it, how to load its export and its per-layer allocation.

Interactivity comes from maintained libraries, taken from their Python packages so that the site
works from ``file://`` and any static host with no CDN and no server: tables are DataTables as
``itables`` bundles it, filtered by ColumnControl's value lists in the header (an ES module, inlined into each page and imported from a blob URL, since
browsers refuse module files over ``file://``), plots are Plotly figures drawn by the
``plotly.min.js`` the ``plotly`` package ships (one copy in ``assets/``). The tables are usable
before any figure: figures are drawn as they come into view, and the Plotly script, the heaviest
file, is fetched for the first of them.

Nothing published names a machine path: data files appear by name and content hash, the model by
its name and identity.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import pandas as pd

from harness.atomic import atomic_write_text
from harness.plugins import Registry, default_registry
from harness.report.leaderboard import (
    FAMILIES,
    TableGroup,
    build_table,
    directions,
    protocol_header,
    records_frame,
    table_groups,
    table_notes,
)
from harness.report.plots import allocation_by_part
from harness.report.protocol import newest_per_cell
from harness.results import Record, load_records, slug

#: Columns a reader filters a table by.
FILTERS = ("kind", "pattern", "target")


def write_site(results: list[Path], out: Path, registry: Registry | None = None) -> list[Path]:
    """The site for every record under ``results`` (folders of run records), written to ``out``:
    ``index.html``, one page per model, ``assets/``. Returns the pages written."""
    try:
        import itables  # noqa: F401
        import plotly  # noqa: F401
    except ImportError as error:
        raise ImportError(f"the leaderboard site needs {error.name}: pip install 'compression-harness[site]'") from None
    registry = registry or default_registry()
    records = [r for folder in results for r in load_records(Path(folder))]
    if not records:
        raise FileNotFoundError(f"no run records under {', '.join(map(str, results))}")
    out = Path(out)
    (out / "assets").mkdir(parents=True, exist_ok=True)
    _write_assets(out / "assets")
    bundle = _datatables_bundle()
    groups = table_groups(records)
    pages, models = [], []
    for model in dict.fromkeys(g.model for g in groups):
        tables = [_table(g, registry) for g in groups if g.model == model]
        page = out / f"{slug(model)}.html"
        atomic_write_text(page, _model_page(model, tables, bundle))
        pages.append(page)
        models.append((model, page.name, tables))
    pages.append(atomic_write_text(out / "index.html", _index_page(models)))
    return pages


# --- one table: its rows, header, plots and records --------------------------------------------
def _table(entry: TableGroup, registry: Registry) -> dict:
    kept, older = newest_per_cell(entry.group.records)
    ok = [r for r in kept if r.ok]
    better = directions(ok)
    frame = build_table(records_frame(ok), None, better)
    rows = _rows_in_table_order(ok, frame)
    notes = table_notes(ok, [r for r in kept if not r.ok], older, entry.family, registry)
    header = [_without_paths(line) for line in protocol_header(ok, registry).splitlines() + notes]
    return {"id": slug(entry.stem), "title": f"{FAMILIES[entry.family]}" + (
        f" ({', '.join(entry.fields)})" if entry.several else ""), "frame": frame, "records": rows,
        "better": better, "header": header, "plots": _plots(frame, rows, better)}


def _rows_in_table_order(records: list[Record], frame: pd.DataFrame) -> list[Record]:
    """The records in the order of ``build_table``'s rows (dense first, then by target and rank)."""
    def key(r: Record) -> tuple:
        method = f"{r.method} ({r.variant})" if r.variant else r.method
        target = f"{r.label} (nearest)" if r.mode == "nearest-ratio" else r.label
        return method, str(target)
    by_key = {key(r): r for r in records}
    return [by_key[(row["method"], str(row["target"]))] for _, row in frame.iterrows()]


def _quality_metrics(frame: pd.DataFrame) -> list[str]:
    """The quality axes of a table's plots: its first perplexity and the zero-shot average."""
    ppl = [c for c in frame.columns if c.startswith("ppl:")][:1]
    return ppl + [c for c in ("zeroshot:avg",) if c in frame.columns]


def _cost_axes(frame: pd.DataFrame) -> list[str]:
    speed = [c for c in frame.columns if c.startswith("speedup:")]
    return speed + [c for c in ("memory ratio", "ratio") if c in frame.columns and frame[c].notna().any()]


def _plots(frame: pd.DataFrame, records: list[Record], better: dict[str, bool]) -> list[dict]:
    """Plotly figures (as JSON-able dicts): each quality metric against each cost axis."""
    figures = []
    hover = [_hover(r) for r in records]
    for quality in _quality_metrics(frame):
        for axis in _cost_axes(frame):
            points = [(x, y, h) for x, y, h in zip(frame[axis], frame[quality], hover)
                      if _finite(x) and _finite(y)]
            if not points:
                continue
            xs, ys, texts = map(list, zip(*points))
            front = _pareto(xs, ys, better.get(quality, False))
            figures.append({"data": [
                {"type": "scatter", "mode": "markers", "name": "records", "x": xs, "y": ys, "text": texts,
                 "hovertemplate": "%{text}<extra></extra>", "marker": {"size": 9}},
                {"type": "scatter", "mode": "lines", "name": "Pareto front", "x": [xs[i] for i in front],
                 "y": [ys[i] for i in front], "hoverinfo": "skip", "line": {"dash": "dot"}}],
                "layout": {"title": {"text": f"{quality} against {axis}"}, "xaxis": {"title": {"text": axis}},
                           # perplexities span orders of magnitude across ratios: a log axis
                           "yaxis": {"title": {"text": quality},
                                     "type": "linear" if better.get(quality, False) else "log"},
                           "height": 380, "margin": {"t": 40}, "showlegend": False}})
    return figures


def _pareto(xs: list[float], ys: list[float], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both axes (x: more is better, as speedup,
    memory ratio and ratio are), ordered by x."""
    sign = 1 if higher_is_better else -1
    front = [i for i in range(len(xs)) if not any(
        xs[j] >= xs[i] and sign * ys[j] >= sign * ys[i] and (xs[j] > xs[i] or sign * ys[j] > sign * ys[i])
        for j in range(len(xs)))]
    return sorted(front, key=lambda i: xs[i])


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _hover(r: Record) -> str:
    knobs = ", ".join(f"{k}={v}" for k, v in (r.target.get("options") or {}).items()) or "defaults"
    p = r.provenance
    return (f"<b>{html.escape(r.method)}</b>{' (' + html.escape(r.variant) + ')' if r.variant else ''} @ "
            f"{html.escape(r.label)}<br>knobs: {html.escape(knobs)}<br>harness {p.get('harness')}, torch "
            f"{p.get('torch')}, {html.escape(str(p.get('device')))}<br>{p.get('created', '')}")


def _command(r: Record) -> str:
    """The ``harness run`` line that reproduces a record (the model by the name it is known by)."""
    parts = ["harness run", f"--model {r.name}", f"--methods {r.method}", f"--dtype {r.dtype}"]
    pattern = r.target.get("pattern", "unstructured")
    if r.mode == "matched-speedup" and r.match:
        parts += [f"--match speedup:{r.match['target']:g}", f"--phase {r.match['phase']}"]
    elif r.mode == "matched-memory" and r.match:
        parts.append(f"--match memory:{r.match['target']:g}")
    elif pattern != "unstructured":
        parts.append(f"--pattern {pattern}")
    elif r.method_kind not in ("reference", "quantization"):
        parts.append(f"--ratios {r.target.get('ratio', 0):g}")
    if r.calibration:
        c = r.calibration
        parts.append(f"--calib {c['dataset']}:{c['n']}x{c['length']} --seed {c['seed']}")
    parts += [f"-o {r.method}.{k}={v}" for k, v in (r.target.get("options") or {}).items()]
    parts += [f"--eval {_eval_argument(name, spec)}" for name, spec in r.eval.items()]
    return " ".join(parts)


def _allocation(r: Record) -> str:
    """The record's per-layer allocation (its report's ``layer_ratios``: the share each block, or
    each of its modules, lost) as a bar chart drawn when the record is opened; a uniform one is
    said in words."""
    ratios = (r.report or {}).get("layer_ratios") or {}
    if not ratios:
        return ""
    if len(set(ratios.values())) == 1:
        return f"<p>Allocation: uniform, {next(iter(ratios.values())):.4g} removed in each of {len(ratios)} layers.</p>"
    data = [{"type": "bar", "name": part, "x": list(by_block), "y": [round(v, 4) for v in by_block.values()]}
            for part, by_block in allocation_by_part(ratios).items()]
    achieved = (r.achieved or {}).get("ratio")
    title = "per-layer allocation" + (f" (measured r = {achieved:.4g})" if achieved is not None else "")
    figure = {"data": data, "layout": {"title": {"text": title}, "barmode": "group", "height": 300,
                                      "margin": {"t": 40}, "xaxis": {"title": {"text": "block"}, "dtick": 1},
                                      "yaxis": {"title": {"text": "share removed"}}}}
    return f'<div class="figure allocation" data-figure="{html.escape(json.dumps(figure))}"></div>'


def _eval_argument(name: str, spec: dict) -> str:
    """An evaluation as ``--eval`` takes it: ``ppl:wikitext2`` as recorded; an evaluation recorded
    under its bare name with its tasks (zero-shot) as ``zeroshot:piqa,arc_easy,...``."""
    if ":" in name or not spec.get("tasks"):
        return name
    return f"{name}:{','.join(spec['tasks'])}"


def _record_details(r: Record) -> str:
    p, c = r.provenance, r.calibration or {}
    items = {
        "knobs": json.dumps(r.target.get("options") or {}),
        "status": r.status,
        "versions": f"harness {p.get('harness')}, torch {p.get('torch')}, transformers {p.get('transformers')}",
        "device": p.get("device"),
        "created": p.get("created"),
        "commit": p.get("git_commit"),
        "model": f"{r.name} ({r.model_id or 'no identity recorded'})",
        "calibration": (f"{c.get('dataset')} {c.get('n')}×{c.get('length')} seed {c.get('seed')}, "
                        f"{Path(str(c.get('source', ''))).name} sha256 {str(c.get('sha256'))[:16]}") if c else "none",
        "reproduce": _command(r),
    }
    if r.saved_model:
        items["export"] = f"saved as {Path(r.saved_model).name}: harness run --model {Path(r.saved_model).name}"
    body = "".join(f"<dt>{html.escape(k)}</dt><dd><code>{html.escape(str(v))}</code></dd>" for k, v in items.items())
    method = f"{r.method} ({r.variant})" if r.variant else r.method
    return (f'<details id="record-{r.key}"><summary>{html.escape(method)} @ {html.escape(r.label)}</summary>'
            f"<dl>{body}</dl>{_allocation(r)}</details>")


def _without_paths(line: str) -> str:
    """A header line with any absolute path cut to its file name."""
    return " ".join(Path(word).name if word.startswith("/") and len(word) > 1 else word for word in line.split(" "))


# --- HTML --------------------------------------------------------------------------------------
def _cell(column: str, value, better: dict[str, bool]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td data-order="">—</td>'
    if isinstance(value, float):
        text = (f"{value:+.4g}" if value else "0") if column.startswith("Δ ") else f"{value:.4g}"
        css = ""
        if column.startswith("Δ ") and value != 0:
            good = (value > 0) == better.get(column[2:], False)
            css = ' class="better"' if good else ' class="worse"'
        return f'<td data-order="{value!r}"{css}>{text}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _table_html(table: dict) -> str:
    """The table: the dense row in a footer group drawn first (CSS), so no sort or filter moves or
    hides the reference; every other record a body row."""
    frame, records = table["frame"], table["records"]
    columns = list(frame.columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body, reference = [], []
    for (_, row), record in zip(frame.iterrows(), records):
        cells = "".join(_cell(c, row[c], table["better"]) for c in columns)
        line = f'<tr data-record="{record.key}" data-kind="{html.escape(record.method_kind)}">{cells}</tr>'
        (reference if record.method_kind == "reference" else body).append(line)
    filters = [columns.index(c) for c in FILTERS if c in columns]
    return (f'<table id="{table["id"]}" class="board display compact" data-filters="{json.dumps(filters)}">'
            f'<thead><tr>{head}</tr></thead><tfoot class="reference">{"".join(reference)}</tfoot>'
            f"<tbody>{''.join(body)}</tbody></table>")


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; }
td.better { color: #1a7f37; } td.worse { color: #cf222e; }
ul.protocol { color: #555; font-size: 12px; } .plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plot { width: 560px; min-height: 380px; } .allocation { max-width: 1100px; min-height: 300px; } details { margin: .2em 0; } dd code { white-space: pre-wrap; }
table.board tfoot.reference { display: table-row-group; font-weight: 600; background: #f3f6fa; }
"""

INIT = """
const {ITable} = await import(URL.createObjectURL(new Blob(
  [atob(document.getElementById("datatables-bundle").textContent)], {type: "text/javascript"})));
for (const table of document.querySelectorAll("table.board")) {
  const filters = JSON.parse(table.dataset.filters);
  new ITable(table, {
    paging: false, order: [],  // rows as ranked until a reader sorts; the reference sits in the footer group
    autoWidth: false,  // the browser lays the columns out: DataTables would measure a hidden copy of the table
    columnDefs: [{targets: filters, columnControl: [["searchList"]]}],  // a value list in the filter columns' headers
    layout: {topStart: null, topEnd: "search", bottomStart: "info", bottomEnd: null},
  });
}
document.body.dataset.readyAt = performance.now().toFixed(0);
document.body.dataset.ready = "1";

// Figures are drawn when they come into view (a closed record's allocation when it is opened), and
// plotly.min.js, the page's largest file, is fetched for the first of them: the tables never wait.
let plotly;
const loadPlotly = () => plotly ??= new Promise((resolve, reject) => {
  const script = Object.assign(document.createElement("script"), {src: "assets/plotly.min.js"});
  script.onload = resolve; script.onerror = () => reject(new Error("assets/plotly.min.js did not load"));
  document.head.append(script);
});
async function draw(figure) {
  await loadPlotly();
  const {data, layout} = JSON.parse(figure.dataset.figure);
  // no tool bar over the title: drag zooms, a double click resets, hover shows each record
  await Plotly.newPlot(figure, data, layout, {displayModeBar: false, responsive: true});
  figure.dataset.drawnAt = performance.now().toFixed(0);
  figure.classList.add("drawn");
}
const inView = new IntersectionObserver(entries => entries.filter(e => e.isIntersecting).forEach(e => {
  inView.unobserve(e.target); draw(e.target);
}), {rootMargin: "400px"});
document.querySelectorAll("div.figure").forEach(figure => inView.observe(figure));
"""


def _model_page(model: str, tables: list[dict], bundle: str) -> str:
    sections = []
    for table in tables:
        plots = "".join(f'<div class="figure plot" data-figure="{html.escape(json.dumps(fig))}"></div>' for fig in table["plots"])
        details = "".join(_record_details(r) for r in table["records"])
        header = "".join(f"<li>{html.escape(line.lstrip('- '))}</li>" for line in table["header"])
        sections.append(f'<section id="section-{table["id"]}"><h2>{html.escape(table["title"])}</h2>'
                        f'<ul class="protocol">{header}</ul>{_table_html(table)}'
                        f'<div class="plots">{plots}</div><h3>Records</h3>{details}</section>')
    css = _datatables_css()
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(model)}</title>"
            f"<style>{css}{STYLE}</style></head><body>"
            f"<p><a href='index.html'>← all models</a></p><h1>{html.escape(model)}</h1>{''.join(sections)}"
            f"<script type='text/plain' id='datatables-bundle'>{bundle}</script>"
            f"<script type='module'>{INIT}</script></body></html>")


def _index_page(models: list[tuple[str, str, list[dict]]]) -> str:
    rows = []
    for model, page, tables in models:
        first = tables[0]
        frame, records = first["frame"], first["records"]
        quality = _quality_metrics(frame)
        dense = frame[frame["kind"] == "reference"]
        dense_text = ", ".join(f"{q} {dense[q].iloc[0]:.4g}" for q in quality if len(dense)) or "—"
        best = []
        ranked = frame[frame["kind"] != "reference"]
        common = ranked["target"].astype(str).value_counts()  # the target most rows share: compared there
        at = common.index[0] if len(common) else None
        for kind in [k for k in dict.fromkeys(ranked["kind"])]:
            rows_of_kind = ranked[(ranked["kind"] == kind) & (ranked["target"].astype(str) == at)]
            if quality and len(rows_of_kind) and rows_of_kind[quality[0]].notna().any():
                ascending = not first["better"].get(quality[0], False)
                top = rows_of_kind.sort_values(quality[0], ascending=ascending).iloc[0]
                best.append(f"{kind}: {top['method']} @ {top['target']} ({quality[0]} {top[quality[0]]:.4g})")
        identity = next((r.model_id for r in records if r.model_id), "")
        rows.append(f"<tr><td><a href='{page}'>{html.escape(model)}</a></td><td><code>{html.escape(identity[:24])}</code>"
                    f"</td><td>{html.escape(dense_text)}</td><td>{len(records)}</td><td>{len(tables)}</td>"
                    f"<td>{'<br>'.join(html.escape(b) for b in best)}</td></tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Leaderboards</title>"
            f"<style>{STYLE} table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; "
            "padding: .3em .6em; text-align: left; vertical-align: top; }</style></head><body data-ready='1'><h1>Leaderboards</h1>"
            "<p>One page per model: its tables (rows measured alike), trade-off plots and records.</p>"
            "<table id='models'><thead><tr><th>model</th><th>identity</th><th>dense</th><th>rows (first table)</th>"
            "<th>tables</th><th>best row per kind, at the target most rows share (first table)</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></body></html>")


# --- the libraries' files ----------------------------------------------------------------------
def _datatables_bundle() -> str:
    from importlib.resources import files

    return base64.b64encode((files("itables") / "html" / "dt_bundle.js").read_bytes()).decode()


def _datatables_css() -> str:
    from importlib.resources import files

    return (files("itables") / "html" / "dt_bundle.css").read_text()


def _write_assets(folder: Path) -> None:
    from plotly.offline import get_plotlyjs

    target = folder / "plotly.min.js"
    script = get_plotlyjs()
    if not target.is_file() or target.read_text() != script:
        atomic_write_text(target, script)
