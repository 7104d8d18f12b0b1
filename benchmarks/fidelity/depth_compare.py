"""The depth-pruning side-by-side as a Markdown table: which blocks SLEB and ShortGPT remove and the
perplexity after, from the reference drivers' JSON file and ``method_ours.py``'s.

    python benchmarks/fidelity/depth_compare.py REFERENCE.json OURS.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def our_blocks(notes: list[str]) -> list[int]:
    """The removed blocks a depth method's report note names, in its order."""
    text = notes[0]
    if text.startswith("removed in order"):
        return [int(b) for b in re.findall(r"(\d+) \(", text.split(": ", 1)[1])]
    return [int(b) for b in re.search(r"removed blocks \[([^\]]*)\]", text).group(1).split(", ")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path)
    parser.add_argument("ours", type=Path)
    args = parser.parse_args()
    ref, ours = json.loads(args.reference.read_text()), json.loads(args.ours.read_text())["runs"]
    tokens = ref["calibration_windows"] * ref["inputs"]["calibration"]["shape"][1]
    sleb, short = ref["sleb"], ref["shortgpt"]
    rows = [("dense", [], sleb["ppl_dense"], [], ours["dense:"]["ppl"]),
            ("SLEB, 3 blocks (order of removal)", sleb["order"], sleb["ppl_removed"],
             our_blocks(ours["sleb:blocks=3"]["notes"]), ours["sleb:blocks=3"]["ppl"]),
            ("ShortGPT, 3 blocks", sorted(short["removed3_list"]), short["ppl_removed3"],
             sorted(our_blocks(ours["shortgpt:blocks=3"]["notes"])), ours["shortgpt:blocks=3"]["ppl"]),
            ("ShortGPT, 6 blocks", sorted(short["removed6_list"]), short["ppl_removed6"],
             sorted(our_blocks(ours["shortgpt:blocks=6"]["notes"])), ours["shortgpt:blocks=6"]["ppl"])]
    lines = ["| run | reference blocks | ours | reference ppl | ours ppl | Δ |", "| --- | --- | --- | --- | --- | --- |"]
    for label, theirs, their_ppl, mine, my_ppl in rows:
        lines.append(f"| {label} | {theirs} | {mine} | {their_ppl:.6f} | {my_ppl:.6f} | {100 * (my_ppl / their_ppl - 1):+.4f} % |")
    chosen = [min(r.values()) / tokens for r in sleb["rounds"]]
    mine = [float(x) for x in re.findall(r"\(([\d.]+)\)", ours["sleb:blocks=3"]["notes"][0])]
    lines += ["", "SLEB, each round's winning loss (mean next-token NLL over the calibration tokens): reference "
              + ", ".join(f"{x:.4f}" for x in chosen) + "; ours " + ", ".join(f"{x:.4f}" for x in mine) + "."]
    bi = ours["shortgpt:blocks=3"]["notes"][0].split("block influence: ")[1].split(", ")
    worst = max(abs(float(item.split(":")[1]) - short["bi_prenorm"][i]) for i, item in enumerate(bi))
    lines += ["", f"ShortGPT's block influence, all {len(bi)} blocks: largest difference from the reference's "
              f"(last block before the final norm) {worst:.1e} (ours is printed to 4 decimals)."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
