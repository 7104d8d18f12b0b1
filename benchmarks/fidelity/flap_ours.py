"""Our side of the FLAP / Wanda-sp side-by-side: the harness's FLAP or Wanda-sp on the side-by-side
inputs (first 8 calibration windows, one torch thread, float32, CPU), run as
``benchmarks/fidelity/method_ours.py`` runs it, with the kept query heads and MLP channels of every
layer recorded so they can be compared with the reference's (``flap_compare.py``).

The reference side is ``flap_reference.py``, which needs the reference's edited copy; both sides and
the results are described in ``leaderboards/fidelity/flap_smollm2_cpu_8x512.md``. This script itself
uses only the harness. The units are recorded by wrapping ``remove_units`` as the two methods' modules
see it, in this process only; the methods run unchanged.

    cd /work/main && OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/fidelity/flap_ours.py \\
        --inputs /tmp/fidelity-512 flap 0.2 --ppl --out ours_flap_0.2.json

Writes --out (JSON: timings, ``heads_kept`` and ``mlp_kept`` per layer, the harness's parameter
counts, block weights counted as ``flap_reference.py`` counts them, and with --ppl the perplexity of
the first 16 test windows) and prints it, less the per-layer lists, on a ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import ModuleType

import torch
from reference_protocol import block_weight_counts, kept_units

import baselines.flap.flap as flap_module
import baselines.flap.wanda_sp as wanda_sp_module
from harness.calibration import Calibration, CalibrationSpec
from harness.evaluations.perplexity import perplexity
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.models.loading import load_model
from harness.plugins import default_registry
from harness.targets import count_parameters

CALIBRATION_WINDOWS = 8
TEST_WINDOWS = 16


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=["flap", "wanda-sp"])
    parser.add_argument("ratio", type=float, help="target ratio of the harness")
    parser.add_argument("--inputs", type=Path, required=True, help="side-by-side inputs: model/ and ids.pt")
    parser.add_argument("--ppl", action="store_true", help="perplexity on the first 16 test windows")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    return parser.parse_args()


def record_removed_units(modules: tuple[ModuleType, ...]) -> dict[int, tuple[list[int], list[int]]]:
    """Wrap ``remove_units`` in each module to record (heads, channels) removed per block index."""
    removed: dict[int, tuple[list[int], list[int]]] = {}
    for module in modules:
        original = module.remove_units

        def recording_remove_units(model, block, heads, channels, means=None, _original=original):
            index = next(i for i, candidate in enumerate(model.blocks) if candidate is block)
            removed[index] = (list(heads), list(channels))
            return _original(model, block, heads, channels, means)

        module.remove_units = recording_remove_units
    return removed


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    ids = torch.load(args.inputs / "ids.pt")
    calibration_ids, test_ids = ids["calibration"][:CALIBRATION_WINDOWS], ids["test"][:TEST_WINDOWS]
    spec = CalibrationSpec("side-by-side", CALIBRATION_WINDOWS, calibration_ids.shape[1], 0)
    calibration = Calibration(calibration_ids, spec, device=torch.device("cpu"), batch_size=CALIBRATION_WINDOWS)
    model, _ = load_model(str(args.inputs / "model"), torch.float32)
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    dense_numel = sum(p.numel() for p in model.parameters())
    removed = record_removed_units((flap_module, wanda_sp_module))

    start = time.perf_counter()
    report = default_registry().method(args.method).compress(adapter, calibration, Target(args.ratio, "unstructured", {}))
    seconds = time.perf_counter() - start
    after = count_parameters(adapter)
    heads_kept, mlp_kept = kept_units(model.config, removed)
    out = {"method": args.method, "ratio": args.ratio, "seconds": seconds, "timings": report.timings,
           "heads_kept": heads_kept, "mlp_kept": mlp_kept,
           "count_parameters_dense": dense.to_dict(), "count_parameters_after": after.to_dict(),
           "numel_dense": dense_numel, "numel_after": sum(p.numel() for p in model.parameters()),
           "harness_ratio_blocks": 1 - after.blocks / dense.blocks,
           **block_weight_counts(model.config, heads_kept, mlp_kept)}
    if args.ppl:
        start = time.perf_counter()
        out["ppl"] = perplexity(adapter, test_ids, "cpu").perplexity
        out["eval_s"] = time.perf_counter() - start
    summary = {key: value for key, value in out.items() if key not in ("heads_kept", "mlp_kept")}
    print("RESULT", json.dumps(summary), flush=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
