"""Side-by-side table of the authors' IntraSlice run and ours (recipe: leaderboards/fidelity/README.md).

    python benchmarks/fidelity/intraslice_compare.py REF.json OURS.json --config 9,3,64,576,1536 > table.md

The authors' code only simulates slicing, so its "measured r" here is what its decisions
would remove when sliced physically: per layer, the kept query heads and KV groups at its
width w (Q, K, V, O), and its kept MLP neurons (gate, up, down), over the same block
linears the harness counts.
"""

from __future__ import annotations

import argparse
import json


def sliced_parameters(heads: int, groups: int, width: int, qk: int, mlp: int, d: int) -> int:
    return heads * qk * d + groups * qk * d + groups * width * d + d * heads * width + 3 * d * mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference")
    parser.add_argument("ours")
    parser.add_argument("--config", required=True, help="H,G,head_dim,hidden,ffn")
    parser.add_argument("--title", default="IntraSlice: authors' code vs harness")
    args = parser.parse_args()
    H, G, hd, d, ffn = (int(x) for x in args.config.split(","))
    per = H // G
    ref, ours = json.load(open(args.reference)), json.load(open(args.ours))
    dense = len(ref["runs"][0]["layers"]) * sliced_parameters(H, G, hd, hd, ffn, d)
    print(f"# {args.title}\n")
    print(f"Dense perplexity: authors' code {ref['dense_ppl']:.3f}, harness {ours['dense_ppl']:.3f}.\n")
    print("| --sparsity | r (authors, sliced) | r (harness, measured) | ppl authors | ppl harness | gap |"
          " layers same heads | same widths | same MLP |")
    print("|---|---|---|---|---|---|---|---|---|")
    details = []
    for run in ref["runs"]:
        mine = next((o for o in ours["runs"] if o["target_ratio"] is None and abs(o["sparsity"] - run["sparsity"]) < 1e-9), None)
        if mine is None:
            continue
        kept_ref = 0
        same_heads = same_width = same_mlp = 0
        rows = []
        for i, layer in enumerate(run["layers"]):
            deleted = layer.get("deleted", [])
            heads = H - len(deleted)
            groups = sum(1 for g in range(G) if any(h not in deleted for h in range(g * per, (g + 1) * per)))
            width = layer.get("width", hd)
            kept_ref += sliced_parameters(heads, groups, width, 2 * (width // 2), layer["mlp"], d)
            k = mine["kept"][f"layers.{i}"]
            our_deleted = [h for h in range(H) if h not in k.get("heads", range(H))]
            same_heads += our_deleted == deleted
            same_width += k.get("v_dim", hd) == width
            same_mlp += k["mlp"] == layer["mlp"]
            rows.append(f"| {i} | {run['rates'][i][0]:.3f} / {run['rates'][i][1]:.3f} | {deleted} | {width} | {layer['mlp']} "
                        f"| {mine['layer_ratios'][f'layers.{i}.attention']:.3f} / {mine['kept'][f'layers.{i}']['mlp_planned']} "
                        f"| {our_deleted} | {k.get('v_dim', hd)} | {k['mlp']} |")
        r_ref = 1 - kept_ref / dense
        gap = mine["ppl"] / run["ppl"] - 1
        n = len(run["layers"])
        print(f"| {run['sparsity']} | {r_ref:.4f} | {mine['ratio']:.4f} | {run['ppl']:.3f} | {mine['ppl']:.3f} | "
              f"{gap:+.1%} | {same_heads}/{n} | {same_width}/{n} | {same_mlp}/{n} |")
        details.append((run["sparsity"], rows))
    for r in ours["runs"]:
        if r["target_ratio"] is not None:
            print(f"\nHarness at matched r = {r['target_ratio']}: measured {r['ratio']:.4f}, solved --sparsity "
                  f"{r['sparsity']:.4f}, ppl {r['ppl']:.3f}.")
    for sparsity, rows in details:
        print(f"\n## Per layer at --sparsity {sparsity}\n")
        print("| layer | authors' allocation attn / mlp | authors: deleted heads | width | MLP kept "
              "| harness: attn ratio / MLP planned | deleted heads | width | MLP kept |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
