"""Our side of the LLM-Pruner side-by-side: the harness's ``llm-pruner`` (block-wise, Taylor
``param_first``, no LoRA recovery) on the side-by-side inputs (float32, CPU, one torch thread), run
through the registry as ``benchmarks/fidelity/method_ours.py`` runs it, with the kept query heads and
MLP channels of every layer recorded so they can be compared with the reference's
(``llm_pruner_compare.py``).

The reference side is ``llm_pruner_reference.py``, which needs the reference's edited copy; both
sides and the results are described in ``leaderboards/fidelity/llm_pruner_smollm2_cpu.md``. This
script itself uses only the harness. The gradient is taken on the first 10 calibration windows (the
reference's 10 examples), whole or cut to their first ``--gradient-length`` tokens (the reference's
examples are 64 tokens long; the method's ``examples`` knob sets how many windows, not their
length). ``--gqa-unit`` sets the method's ``gqa_unit`` knob (its default when not given). The units
are recorded by wrapping ``remove_units`` as the method's module sees it, and with ``--scores`` the
per-head and per-channel scores by wrapping ``LLMPruner.group_scores``, in this process only; the
method runs unchanged.

    cd /work/main && OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/fidelity/llm_pruner_ours.py \\
        --inputs /tmp/fidelity-512 0.1203127 --gradient-length 64 [--gqa-unit kv-group] --ppl \\
        --out ours_llm_pruner_0.1203127_64.json

``--budget-of REF.json`` instead prints the ratio (the harness's: the share of the blocks' nonzero
parameters) that a reference run's kept heads and channels realise, and prunes nothing:

    python benchmarks/fidelity/llm_pruner_ours.py --inputs /tmp/fidelity-512 --budget-of ref_llm_pruner_0.2.json

Writes --out (JSON: settings, timings, ``heads_kept`` and ``mlp_kept`` per layer, the harness's
parameter counts, block weights counted as ``llm_pruner_reference.py`` counts them, and with --ppl
the perplexity of the first 16 test windows) and prints it, less the per-layer lists, on a
``RESULT`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from reference_protocol import block_weight_counts, kept_units

import baselines.llm_pruner.llm_pruner as llm_pruner_module
from baselines.flap.units import BlockUnits
from harness.calibration import Calibration, CalibrationSpec
from harness.evaluations.perplexity import perplexity
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.models.loading import load_model
from harness.plugins import default_registry
from harness.targets import count_parameters

GRADIENT_WINDOWS = 10  # the reference's --num_examples
TEST_WINDOWS = 16


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ratio", type=float, nargs="?", help="target ratio of the harness")
    parser.add_argument("--inputs", type=Path, required=True, help="side-by-side inputs: model/ and ids.pt")
    parser.add_argument("--gradient-length", type=int, default=None,
                        help="tokens of each gradient window (default: the whole window)")
    parser.add_argument("--gqa-unit", choices=["kv-group", "query-head"], default=None,
                        help="the method's gqa_unit knob (default: the method's default)")
    parser.add_argument("--ppl", action="store_true", help="perplexity on the first 16 test windows")
    parser.add_argument("--scores", type=Path, help="also save the per-head and per-channel scores (torch.save)")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--budget-of", type=Path, metavar="REF.json",
                        help="only print the ratio a reference run's kept units realise")
    args = parser.parse_args()
    if args.budget_of is None and (args.ratio is None or args.out is None):
        parser.error("a ratio and --out are needed (or --budget-of)")
    return args


def budget_of(adapter: ModelAdapter, reference: dict) -> dict:
    """The harness's ratio (removed nonzeros / all the blocks' nonzeros) of a reference run's kept sets."""
    units = [BlockUnits(adapter, block) for block in adapter.blocks]
    removed = 0
    for block_units, heads, channels in zip(units, reference["heads_kept"], reference["mlp_kept"]):
        heads = set(heads)
        channels = set(channels)
        removed += block_units.removed({h for h in range(block_units.heads) if h not in heads},
                                       [c for c in range(block_units.channels) if c not in channels])
    total = sum(block_units.total for block_units in units)
    return {"removed_nonzeros": removed, "total_nonzeros": total, "ratio": removed / total}


def record_removed_units() -> dict[int, tuple[list[int], list[int]]]:
    """Wrap the method module's ``remove_units`` to record (heads, channels) removed per block index."""
    removed: dict[int, tuple[list[int], list[int]]] = {}
    original = llm_pruner_module.remove_units

    def recording_remove_units(model, block, heads, channels, means=None):
        index = next(i for i, candidate in enumerate(model.blocks) if candidate is block)
        removed[index] = (list(heads), list(channels))
        return original(model, block, heads, channels, means)

    llm_pruner_module.remove_units = recording_remove_units
    return removed


def record_scores() -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Wrap ``LLMPruner.group_scores`` to record each block's (per query head, per channel) scores."""
    scores: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    original = llm_pruner_module.LLMPruner.group_scores

    def recording_group_scores(model, index, block, mode, grads, squares):
        heads, channels = original(model, index, block, mode, grads, squares)
        scores[index] = (heads.detach().clone(), channels.detach().clone())
        return heads, channels

    llm_pruner_module.LLMPruner.group_scores = staticmethod(recording_group_scores)
    return scores


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    model, _ = load_model(str(args.inputs / "model"), torch.float32)
    adapter = ModelAdapter(model)
    if args.budget_of is not None:
        print(json.dumps({"reference": str(args.budget_of), **budget_of(adapter, json.loads(args.budget_of.read_text()))}))
        sys.exit()

    ids = torch.load(args.inputs / "ids.pt")
    gradient_ids = ids["calibration"][:GRADIENT_WINDOWS, :args.gradient_length].contiguous()
    test_ids = ids["test"][:TEST_WINDOWS]
    spec = CalibrationSpec("side-by-side", GRADIENT_WINDOWS, gradient_ids.shape[1], 0)
    calibration = Calibration(gradient_ids, spec, device=torch.device("cpu"), batch_size=8)
    options = {} if args.gqa_unit is None else {"gqa_unit": args.gqa_unit}
    target = Target(args.ratio, "unstructured", options)
    method = default_registry().method("llm-pruner")
    dense = count_parameters(adapter)
    dense_numel = sum(p.numel() for p in model.parameters())
    removed = record_removed_units()
    scores = record_scores() if args.scores else None

    start = time.perf_counter()
    report = method.compress(adapter, calibration, target)
    seconds = time.perf_counter() - start
    after = count_parameters(adapter)
    heads_kept, mlp_kept = kept_units(model.config, removed)
    out = {"method": "llm-pruner", "ratio": args.ratio, "gqa_unit": method.option(target, "gqa_unit"),
           "gradient_windows": GRADIENT_WINDOWS, "gradient_length": gradient_ids.shape[1],
           "seconds": seconds, "timings": report.timings, "knobs": report.knobs,
           "heads_kept": heads_kept, "mlp_kept": mlp_kept,
           "count_parameters_dense": dense.to_dict(), "count_parameters_after": after.to_dict(),
           "numel_dense": dense_numel, "numel_after": sum(p.numel() for p in model.parameters()),
           "harness_ratio_blocks": 1 - after.blocks / dense.blocks,
           **block_weight_counts(model.config, heads_kept, mlp_kept)}
    if scores is not None:
        torch.save(scores, args.scores)
    if args.ppl:
        start = time.perf_counter()
        out["ppl"] = perplexity(adapter, test_ids, "cpu").perplexity
        out["eval_s"] = time.perf_counter() - start
    summary = {key: value for key, value in out.items() if key not in ("heads_kept", "mlp_kept")}
    print("RESULT", json.dumps(summary), flush=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
