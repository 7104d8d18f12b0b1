"""The quantization side-by-side as a Markdown table: perplexity of the reference code's runs and
of ours on the same weights, ids and windows, and how many quantized weights of the saved layers
agree element by element.

    python benchmarks/fidelity/quant_compare.py --ours-weights DIR \
        --pair "RTN w4g128" REF.json REF.pt OURS.json rtn:bits=4,group_size=128 ...

Each ``--pair LABEL REF_JSON REF_WEIGHTS OURS_JSON OUR_RUN``: REF_JSON holds ``{"ppl": …}`` (the
reference driver's file for the run), REF_WEIGHTS its dequantised linears (``torch.save`` of a
state dict: keys ``model.layers.I.self_attn.q_proj.weight`` …), OURS_JSON ``method_ours.py``'s file
and OUR_RUN the run's key in it; our weights are read from ``--ours-weights``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

#: Llama's module paths by the harness's role names.
PATHS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
         "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def agreement(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(fraction of elements equal within 1e-6 relative to each row's largest, worst relative row error)."""
    equal = total = 0
    worst = 0.0
    for key, mine in ours.items():
        _, layer, role = key.split(".")
        theirs = reference[f"model.layers.{layer}.{PATHS[role]}.weight"].float()
        scale = theirs.abs().amax(1, keepdim=True).clamp(min=1e-12)
        diff = (mine.float() - theirs).abs() / scale
        equal += int((diff <= 1e-6).sum())
        total += diff.numel()
        worst = max(worst, float(diff.max()))
    return equal / total, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", action="append", nargs=5, required=True,
                        metavar=("LABEL", "REF_JSON", "REF_WEIGHTS", "OURS_JSON", "OUR_RUN"))
    parser.add_argument("--ours-weights", type=Path, required=True)
    args = parser.parse_args()
    from safetensors.torch import load_file

    lines = ["| run | reference ppl | ours ppl | Δ | weights equal (layers saved) | worst element (× row max) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for label, ref_json, ref_weights, ours_json, our_run in args.pair:
        ref_ppl = json.loads(Path(ref_json).read_text())["ppl"]
        our_ppl = json.loads(Path(ours_json).read_text())["runs"][our_run]["ppl"]
        name = our_run.replace(":", "_").replace(",", "_").replace("=", "-")
        equal, worst = agreement(load_file(args.ours_weights / f"{name}.safetensors"),
                                 torch.load(ref_weights, map_location="cpu"))
        lines.append(f"| {label} | {ref_ppl:.4f} | {our_ppl:.4f} | {100 * (our_ppl / ref_ppl - 1):+.2f} % "
                     f"| {equal:.2%} | {worst:.2e} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
