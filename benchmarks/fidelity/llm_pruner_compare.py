"""Compares the LLM-Pruner side-by-side runs: the JSON files of ``llm_pruner_reference.py``
(reference; needs the reference's edited copy) and ``llm_pruner_ours.py`` (ours). The setting and
the results are in ``leaderboards/fidelity/llm_pruner_smollm2_cpu.md``.

    python benchmarks/fidelity/llm_pruner_compare.py ref_*.json ours_*.json [--out compare.json]

Each file is sorted by its content: a run of ours has ``harness_ratio_blocks``; a reference run
with ``"diag_aligned": true`` is the aligned-group-score diagnostic. A reference run at its
``--pruning_ratio`` p is compared with
  the diagnostic run at p,
  every run of ours at ratio p (the nominal budget), and
  every run of ours at the reference's budget (ours' ratio within --budget-tolerance of the share
  of block weights the reference removed);
a diagnostic run with every run of ours at its budget on the same gradient tokens. For each pair it
prints a Markdown table row: both perplexities and their difference ("0, bit-equal" where the two
floats are equal), the share of the blocks' q, k, v, o, gate, up, down weights each removed, the
layers whose kept query heads are identical, and the layers whose kept MLP channels are identical
with the mean Jaccard index of the kept channels over all layers. Below the table, the units each
run removed per pruned block (query heads, KV groups, MLP channels: the values taken, with how many
blocks). With --out, all of it is written as JSON.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

# SmolLM2-135M, the side-by-side's model
DEFAULT_HEADS, DEFAULT_KV_HEADS, DEFAULT_INTERMEDIATE = 9, 3, 1536


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="JSON files of llm_pruner_reference.py and llm_pruner_ours.py")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--budget-tolerance", type=float, default=1e-4,
                        help="how close ours' ratio must be to the reference's removed share")
    parser.add_argument("--heads", type=int, default=DEFAULT_HEADS, help="query heads per layer")
    parser.add_argument("--kv-heads", type=int, default=DEFAULT_KV_HEADS, help="KV heads per layer")
    parser.add_argument("--intermediate", type=int, default=DEFAULT_INTERMEDIATE, help="MLP channels per layer")
    return parser.parse_args()


def load_runs(paths: list[Path]) -> list[dict]:
    """Each run with its file and role: ours, ref, or diag (the aligned-score reference)."""
    runs = []
    for path in dict.fromkeys(paths):
        data = json.loads(path.read_text())
        if "harness_ratio_blocks" in data:
            role = "ours"
        else:
            role = "diag" if data.get("diag_aligned") else "ref"
        runs.append({"path": path, "role": role, "data": data})
    return runs


def describe(run: dict, reference: dict) -> str:
    """How a run of ours (or a diagnostic) is labelled beside ``reference``."""
    data = run["data"]
    if run["role"] == "diag":
        return "the reference with the aligned group score"
    budget = "ratio" if data["ratio"] == reference["ratio"] else "the reference's budget"
    return (f"ours at {budget} {data['ratio']:.4g} ({data['gqa_unit']}, "
            f"gradient {data['gradient_windows']} × {data['gradient_length']})")


def pairs_of(runs: list[dict], tolerance: float) -> list[tuple[dict, dict]]:
    """(reference or diagnostic, ours or diagnostic) pairs, in the order of the table."""
    pairs = []
    references = sorted((run for run in runs if run["role"] != "ours"),
                        key=lambda run: (run["data"]["ratio"], run["role"] == "diag"))
    ours = sorted((run for run in runs if run["role"] == "ours"),
                  key=lambda run: (-run["data"]["ratio"], -run["data"]["gradient_length"], run["data"]["gqa_unit"]))
    for reference in references:
        data = reference["data"]
        realised = data["removed_fraction_of_block_linears"]
        at_budget = [run for run in ours if run["data"]["ratio"] != data["ratio"]
                     and abs(run["data"]["ratio"] - realised) <= tolerance]
        if reference["role"] == "diag":  # beside ours at its budget on the same gradient tokens
            pairs += [(reference, run) for run in at_budget
                      if run["data"]["gradient_length"] == data["gradient_length"]]
            continue
        pairs += [(reference, run) for run in runs if run["role"] == "diag" and run["data"]["ratio"] == data["ratio"]]
        pairs += [(reference, run) for run in ours if run["data"]["ratio"] == data["ratio"]]
        pairs += [(reference, run) for run in at_budget]
    return pairs


def compare_kept(a: dict, b: dict) -> dict:
    """How run B's kept heads and MLP channels relate to run A's, layer by layer."""
    layers = range(len(a["heads_kept"]))
    mlp_a, mlp_b = a["mlp_kept"], b["mlp_kept"]
    jaccard = [len(set(mlp_a[i]) & set(mlp_b[i])) / len(set(mlp_a[i]) | set(mlp_b[i])) for i in layers]
    return {"layers": len(layers), "heads_identical": sum(a["heads_kept"][i] == b["heads_kept"][i] for i in layers),
            "mlp_identical": sum(mlp_a[i] == mlp_b[i] for i in layers),
            "jaccard_mean": sum(jaccard) / len(jaccard), "jaccard_min": min(jaccard),
            "b_mlp_kept_subset_of_a": sum(set(mlp_b[i]) <= set(mlp_a[i]) for i in layers)}


def removed_units(run: dict, shape: argparse.Namespace) -> dict:
    """Per pruned block (a block that lost anything): {value: blocks} of the query heads, KV groups
    and MLP channels removed."""
    per = shape.heads // shape.kv_heads
    counts = {"heads": Counter(), "kv_groups": Counter(), "channels": Counter()}
    for heads, channels in zip(run["heads_kept"], run["mlp_kept"]):
        if len(heads) == shape.heads and len(channels) == shape.intermediate:
            continue
        counts["heads"][shape.heads - len(heads)] += 1
        counts["kv_groups"][shape.kv_heads - len({h // per for h in heads})] += 1
        counts["channels"][shape.intermediate - len(channels)] += 1
    return {unit: dict(sorted(counter.items())) for unit, counter in counts.items()}


def format_units(units: dict) -> str:
    def values(counter: dict) -> str:
        return ", ".join(f"{value} ×{blocks}" if len(counter) > 1 else str(value) for value, blocks in counter.items())
    return f"heads {values(units['heads'])}; KV groups {values(units['kv_groups'])}; channels {values(units['channels'])}"


def table_row(label: str, a: dict, b: dict, comparison: dict) -> str:
    ppl_a, ppl_b = (f"{run['ppl']:.3f}" if "ppl" in run else "—" for run in (a, b))
    delta = "—"
    if "ppl" in a and "ppl" in b:
        delta = f"{100 * (b['ppl'] / a['ppl'] - 1):+.1f} %".replace("-", "−")
        if a["ppl"] == b["ppl"]:
            ppl_a = ppl_b = repr(a["ppl"])
            delta = "0, bit-equal"
    removed = f"{100 * a['removed_fraction_of_block_linears']:.2f} % / {100 * b['removed_fraction_of_block_linears']:.2f} %"
    layers = comparison["layers"]
    return (f"| {label} | {ppl_a} | {ppl_b} | {delta} | {removed} | {comparison['heads_identical']}/{layers} "
            f"| {comparison['mlp_identical']}/{layers}, {comparison['jaccard_mean']:.3f} |")


def main() -> None:
    args = parse_args()
    runs = load_runs(args.runs)
    pairs = pairs_of(runs, args.budget_tolerance)
    paired = {id(run) for pair in pairs for run in pair}
    for run in runs:
        if id(run) not in paired:
            print(f"not compared (nothing to pair with): {run['path']}")
    print("| run | reference ppl | ours ppl | Δ | block weights removed, reference / ours "
          "| layers with identical kept heads | MLP channels: layers identical, mean Jaccard |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for a, b in pairs:
        label = f"p = {a['data']['ratio']}" + (", aligned diagnostic" if a["role"] == "diag" else "")
        label += f"; {describe(b, a['data'])}"
        comparison = compare_kept(a["data"], b["data"])
        print(table_row(label, a["data"], b["data"], comparison))
        results.append({"run": label, "a": str(a["path"]), "b": str(b["path"]),
                        "ppl_a": a["data"].get("ppl"), "ppl_b": b["data"].get("ppl"), **comparison})
    print()
    print("Units removed per pruned block (value ×blocks where they differ):")
    for run in sorted(runs, key=lambda run: str(run["path"])):
        units = removed_units(run["data"], args)
        print(f"- {run['path'].name} ({run['role']}, ratio {run['data']['ratio']}): {format_units(units)}")
        for result in results:
            for side in ("a", "b"):
                if result[side] == str(run["path"]):
                    result[f"units_{side}"] = units
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
