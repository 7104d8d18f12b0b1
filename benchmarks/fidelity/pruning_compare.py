"""A pruning side-by-side as a Markdown table: perplexity of the reference code's runs and of
ours on the same weights, ids and windows, and how far the masks of the saved layers agree.

    python benchmarks/fidelity/pruning_compare.py --model DIR --ours OURS.json --ours-weights W \\
        --pair "RIA 2:4" 165.007 ria:pattern=2:4 REF_MASKS.pt ...

Each ``--pair LABEL REF_PPL OUR_RUN REF_MASKS``: the reference's perplexity, the run's key in
``method_ours.py``'s JSON, and the reference's masks (``torch.save`` of {module path: bool tensor,
True = pruned}) or ``-``. A weight counts as pruned on our side where it is zero now and was not
zero in the model (``--model``'s safetensors) before.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

PATHS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
         "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--ours", type=Path, required=True)
    parser.add_argument("--ours-weights", type=Path, required=True)
    parser.add_argument("--pair", action="append", nargs=4, required=True, metavar=("LABEL", "REF_PPL", "OUR_RUN", "REF_MASKS"))
    args = parser.parse_args()
    from safetensors import safe_open
    from safetensors.torch import load_file

    dense = safe_open(str(args.model / "model.safetensors"), "pt")
    runs = json.loads(args.ours.read_text())["runs"]
    lines = ["| run | reference ppl | ours ppl | Δ | masks equal (layers saved) | differing weights |",
             "| --- | --- | --- | --- | --- | --- |"]
    for label, ref_ppl, run, masks in args.pair:
        ours_ppl, ref_ppl = runs[run]["ppl"], float(ref_ppl)
        agree = "—"
        if masks != "-":
            reference = torch.load(masks, map_location="cpu")
            mine = load_file(str(args.ours_weights / f"{run.replace(':', '_').replace(',', '_').replace('=', '-')}.safetensors"))
            equal = total = 0
            for key, weight in mine.items():
                _, layer, role = key.split(".")
                path = f"model.layers.{layer}.{PATHS[role]}"
                if path not in reference:
                    continue
                before = dense.get_tensor(f"{path}.weight")
                ours_mask = (weight == 0) & (before != 0)
                theirs = reference[path].bool() & (before != 0)
                equal += int((ours_mask == theirs).sum())
                total += ours_mask.numel()
            agree = f"{equal / total:.4%} | {total - equal}"
        lines.append(f"| {label} | {ref_ppl:.3f} | {ours_ppl:.3f} | {100 * (ours_ppl / ref_ppl - 1):+.2f} % | {agree} |"
                     if masks != "-" else
                     f"| {label} | {ref_ppl:.3f} | {ours_ppl:.3f} | {100 * (ours_ppl / ref_ppl - 1):+.2f} % | — | — |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
