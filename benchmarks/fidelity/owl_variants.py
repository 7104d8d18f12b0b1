"""OWL (Wanda) on the side-by-side inputs with the reference's choices switched in one at a time,
to show which of them separates the two sides (``leaderboards/fidelity/owl_ria_smollm2_cpu_8x512.md``).
Our OWL runs unchanged; a variant replaces one helper, in this process only:

  none        as the harness runs it
  count-all   each row loses int(cols · s_l) of all its weights, as the reference counts (the harness
              removes s_l of the nonzeros, so a checkpoint's exact zeros can move the count by one)
  f32stats    the reference's statistic: float32 running mean of ‖x_j‖² over calibration samples
  stablesort  per-row selection by a stable sort of the scores (the reference), not topk
  bs1         one calibration sample per forward (the reference's loop)

Variants combine with ``+``. Writes TAG.pt (masks: weights zero after pruning that were not before)
and TAG.json (perplexity with --eval) under --out-dir.

    python benchmarks/fidelity/owl_variants.py --inputs /tmp/fidelity-512 --out-dir /tmp/owl \\
        --ratio 0.5 --variant count-all+f32stats+stablesort+bs1 --eval
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import baselines.owl.owl as owl_module
import harness.calibration as calibration_module
from baselines.owl.owl import OWL
from harness.calibration import Calibration, CalibrationSpec
from harness.evaluations.perplexity import perplexity
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.models.loading import load_model


class ReferenceStatistic:
    """luuyin/OWL ``WrappedGPT.add_batch``: per sample, scaler_row ← scaler_row·n/(n+1) + ‖x‖²/(n+1), float32."""

    def __init__(self, features, device, gram):
        self.scaler_row, self.samples, self.tokens = torch.zeros(features, device=device), 0, 0

    def __call__(self, module, args, output):
        for sample in args[0].detach().split(1):
            x = sample.reshape(-1, sample.shape[-1]).t().float()
            self.scaler_row *= self.samples / (self.samples + 1)
            self.samples += 1
            self.scaler_row += torch.norm(x, p=2, dim=1) ** 2 / self.samples
            self.tokens += x.shape[1]

    def result(self):
        return calibration_module.InputStats(None, self.scaler_row, self.tokens)


def stable_prune_mask(scores, sparsity, n_m=None, per_row=True):
    """The reference's per-row selection: the first int(cols · s) of a stable sort."""
    k = int(scores.shape[1] * sparsity)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, torch.sort(scores, dim=-1, stable=True)[1][:, :k], True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=Path, required=True, help="make_inputs.py output (weights and token ids)")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--variant", default="none")
    parser.add_argument("--eval", action="store_true", help="perplexity on the first 16 test windows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = set(args.variant.split("+"))
    if unknown := variants - {"none", "count-all", "f32stats", "stablesort", "bs1"}:
        parser.error(f"unknown variants {sorted(unknown)}")
    if "f32stats" in variants:
        calibration_module._StatsHook = ReferenceStatistic
    if "stablesort" in variants:
        owl_module.prune_mask = stable_prune_mask
    if "count-all" in variants:
        owl_module.mask_sparsity = lambda linears, ratio: ratio

    ids = torch.load(args.inputs / "ids.pt")
    calibration_ids, test = ids["calibration"][:8], ids["test"][:16]
    calibration = Calibration(calibration_ids, CalibrationSpec("side-by-side", 8, calibration_ids.shape[1], 0),
                              batch_size=1 if "bs1" in variants else 8)
    model, _ = load_model(str(args.inputs / "model"), torch.float32)
    adapter = ModelAdapter(model)
    linears = {f"{i}.{role}": linear for i, block in enumerate(adapter.blocks)
               for role, linear in adapter.linears(block).items()}
    zero_before = {name: linear.weight.data == 0 for name, linear in linears.items()}
    OWL().compress(adapter, calibration, Target(args.ratio))
    masks = {name: (linear.weight.data == 0) & ~zero_before[name] for name, linear in linears.items()}
    tag = f"ours_{args.ratio}_{args.variant}"
    out = {"variant": args.variant, "ratio": args.ratio, "pruned": int(sum(int(m.sum()) for m in masks.values()))}
    if args.eval:
        out["ppl"] = perplexity(adapter, test, "cpu").perplexity
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"masks": masks, "zero_before": zero_before}, args.out_dir / f"{tag}.pt")
    (args.out_dir / f"{tag}.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
