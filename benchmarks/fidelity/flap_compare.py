"""Compares the kept heads and MLP channels of the FLAP / Wanda-sp side-by-side runs: the JSON files
of ``flap_reference.py`` (reference; needs the reference's edited copy) and ``flap_ours.py`` (ours).
The setting and the results are in ``leaderboards/fidelity/flap_smollm2_cpu_8x512.md``.

    python benchmarks/fidelity/flap_compare.py ref_*.json ours_*.json --out compare.json

Each file is sorted by its content: a run of ours has ``harness_ratio_blocks``; a reference run with
``"exact_variance": true`` (or named with ``--exact-variance``, for files written before that key
existed) is the exact-variance diagnostic. The runs are grouped into cases, one per reference run
at a method and ratio (``flap 0.2``, ``wanda-sp 0.2``), holding
  ours at the same ratio                       -> ref_vs_ours (and diag_vs_ours, ref_vs_diag)
  ours at the reference's realised budget      -> ref_vs_ours_matched (and diag_vs_ours_matched),
    i.e. ours' ratio within --budget-tolerance of the reference's removed_fraction_of_block_linears
each with a summary of every run (ref, ours, diag_exactvar, ours_matched_summary). In a comparison
of A with B: heads_equal / mlp_identical count layers with identical kept sets, head_counts_equal
layers keeping as many heads, jaccard_* the Jaccard index of the kept channels, and
b_heads_kept_subset_of_a / b_kept_subset_of_a layers where B keeps a subset of what A keeps.

Prints a Markdown table (one row per comparison) and writes all of it to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# SmolLM2-135M, the side-by-side's model
DEFAULT_HEADS, DEFAULT_KV_HEADS, DEFAULT_INTERMEDIATE = 9, 3, 1536


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="JSON files of flap_reference.py and flap_ours.py")
    parser.add_argument("--exact-variance", type=Path, action="append", default=[], metavar="FILE",
                        help="an exact-variance reference run without the exact_variance key (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("compare.json"), help="JSON file to write")
    parser.add_argument("--budget-tolerance", type=float, default=1e-4,
                        help="how close ours' ratio must be to the reference's realised fraction")
    parser.add_argument("--heads", type=int, default=DEFAULT_HEADS, help="query heads per layer")
    parser.add_argument("--kv-heads", type=int, default=DEFAULT_KV_HEADS, help="KV heads per layer")
    parser.add_argument("--intermediate", type=int, default=DEFAULT_INTERMEDIATE, help="MLP channels per layer")
    return parser.parse_args()


def load_runs(paths: list[Path], exact_variance_paths: list[Path]) -> list[dict]:
    """Each run with its file, its role (ours, ref, diag = exact variance) and a normalised method."""
    exact_variance = {path.resolve() for path in exact_variance_paths}
    unique_paths = {path.resolve(): path for path in [*paths, *exact_variance_paths]}
    runs = []
    for resolved, path in unique_paths.items():
        data = json.loads(path.read_text())
        if "harness_ratio_blocks" in data:
            role = "ours"
        elif data.get("exact_variance") or resolved in exact_variance:
            role = "diag"
        else:
            role = "ref"
        runs.append({"path": path, "role": role, "method": data["method"].replace("_", "-"), "data": data})
    return runs


def case_label(run: dict) -> str:
    return f"{run['method']} {run['data']['ratio']}"


def find_one(runs: list[dict], label: str, description: str, predicate) -> dict | None:
    """The single run satisfying ``predicate``, None if there is none; two is an error."""
    found = [run for run in runs if predicate(run)]
    if len(found) > 1:
        raise SystemExit(f"{label}: {len(found)} {description} runs: {', '.join(str(r['path']) for r in found)}")
    return found[0] if found else None


def find_case(ref: dict, runs: list[dict], tolerance: float) -> dict:
    """A reference run with its exact-variance twin, ours at the same ratio and ours at its budget."""
    label, ratio = case_label(ref), ref["data"]["ratio"]
    realised = ref["data"]["removed_fraction_of_block_linears"]

    def same_method(run: dict, role: str) -> bool:
        return run["role"] == role and run["method"] == ref["method"]

    def at_budget(run: dict) -> bool:
        return run["data"]["ratio"] != ratio and abs(run["data"]["ratio"] - realised) <= tolerance

    return {"ref": ref,
            "diag": find_one(runs, label, "exact-variance",
                             lambda run: same_method(run, "diag") and run["data"]["ratio"] == ratio),
            "ours": find_one(runs, label, "ours", lambda run: same_method(run, "ours") and run["data"]["ratio"] == ratio),
            "matched": find_one(runs, label, "ours-at-budget", lambda run: same_method(run, "ours") and at_budget(run))}


def find_cases(runs: list[dict], tolerance: float) -> dict[str, dict]:
    """One case per reference run, keyed by its label; two reference runs with one label is an error."""
    cases = {}
    for ref in (run for run in runs if run["role"] == "ref"):
        label = case_label(ref)
        if label in cases:
            raise SystemExit(f"{label}: two reference runs: {cases[label]['ref']['path']}, {ref['path']}")
        cases[label] = find_case(ref, runs, tolerance)
    return cases


def compare_kept(a: dict, b: dict) -> dict:
    """How run B's kept heads and MLP channels relate to run A's, layer by layer."""
    layers = range(len(a["heads_kept"]))
    heads_a, heads_b, mlp_a, mlp_b = a["heads_kept"], b["heads_kept"], a["mlp_kept"], b["mlp_kept"]
    jaccard = [len(set(mlp_a[i]) & set(mlp_b[i])) / len(set(mlp_a[i]) | set(mlp_b[i])) for i in layers]
    return {"b_heads_kept_subset_of_a": sum(set(heads_b[i]) <= set(heads_a[i]) for i in layers),
            "heads_equal": sum(heads_a[i] == heads_b[i] for i in layers),
            "head_counts_equal": sum(len(heads_a[i]) == len(heads_b[i]) for i in layers),
            "mlp_identical": sum(mlp_a[i] == mlp_b[i] for i in layers),
            "jaccard_mean": sum(jaccard) / len(jaccard), "jaccard_min": min(jaccard),
            "b_kept_subset_of_a": sum(set(mlp_b[i]) <= set(mlp_a[i]) for i in layers)}


def summarise(run: dict, shape: argparse.Namespace) -> dict:
    """Units removed in total and the kept counts per layer."""
    heads_per_group = shape.heads // shape.kv_heads
    heads_kept, mlp_kept = run["heads_kept"], run["mlp_kept"]
    return {"heads_removed": sum(shape.heads - len(heads) for heads in heads_kept),
            "groups_removed": sum(shape.kv_heads - len({h // heads_per_group for h in heads}) for heads in heads_kept),
            "channels_removed": sum(shape.intermediate - len(channels) for channels in mlp_kept),
            "heads_per_layer": [len(heads) for heads in heads_kept],
            "ch_per_layer": [len(channels) for channels in mlp_kept],
            "lin_removed": run["block_linear_weights_removed"], "frac": run["removed_fraction_of_block_linears"]}


def case_result(case: dict, shape: argparse.Namespace) -> tuple[dict, list[tuple]]:
    """The case's summaries and comparisons, and the (name, A, B) pairs compared."""
    ref, diag, ours, matched = (case[k] and case[k]["data"] for k in ("ref", "diag", "ours", "matched"))
    result = {"ref": summarise(ref, shape)}
    pairs = []
    if ours:
        result["ours"] = summarise(ours, shape)
        pairs.append(("ref_vs_ours", ref, ours))
    if diag:
        result["diag_exactvar"] = summarise(diag, shape)
        if ours:
            pairs.append(("diag_vs_ours", diag, ours))
        pairs.append(("ref_vs_diag", ref, diag))
    if matched:
        result["ours_matched_summary"] = summarise(matched, shape)
        pairs.append(("ref_vs_ours_matched", ref, matched))
        if diag:
            pairs.append(("diag_vs_ours_matched", diag, matched))
    result.update({name: compare_kept(a, b) for name, a, b in pairs})
    return result, pairs


def format_ppl(run: dict) -> str:
    return f"{run['ppl']:.6g}" if "ppl" in run else "—"


def table_row(label: str, name: str, a: dict, b: dict, comparison: dict) -> str:
    delta = f"{100 * (b['ppl'] / a['ppl'] - 1):+.2f} %" if "ppl" in a and "ppl" in b else "—"
    removed = f"{100 * a['removed_fraction_of_block_linears']:.2f} % / {100 * b['removed_fraction_of_block_linears']:.2f} %"
    layers = len(a["heads_kept"])
    return (f"| {label} | {name} (B at {b['ratio']}) | {format_ppl(a)} | {format_ppl(b)} | {delta} | {removed} "
            f"| {comparison['heads_equal']}/{layers} | {comparison['mlp_identical']}/{layers} "
            f"| {comparison['jaccard_mean']:.4f} ({comparison['jaccard_min']:.4f}) "
            f"| {comparison['b_heads_kept_subset_of_a']}/{layers}, {comparison['b_kept_subset_of_a']}/{layers} |")


def print_table(rows: list[str]) -> None:
    print("| case | A vs B | A ppl | B ppl | Δ ppl | block weights removed, A / B | heads equal "
          "| MLP identical | MLP Jaccard mean (min) | B ⊆ A: heads, MLP |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)


def main() -> None:
    args = parse_args()
    runs = load_runs(args.runs, args.exact_variance)
    cases = find_cases(runs, args.budget_tolerance)
    used = {id(run) for case in cases.values() for run in case.values() if run}
    for run in runs:
        if id(run) not in used:
            print(f"not compared (no reference run to pair with): {run['path']}")
    results, rows = {}, []
    for label, case in cases.items():
        results[label], pairs = case_result(case, args)
        rows += [table_row(label, name, a, b, results[label][name]) for name, a, b in pairs]
    print_table(rows)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
