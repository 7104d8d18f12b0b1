"""Our side of the IntraSlice side-by-side: the harness's ``intraslice`` at the authors'
``--sparsity`` values, on given calibration windows, with the per-layer shapes it kept.

The authors' side runs their code (github.com/Asker0Lee/IntraSlice) in a separate
environment on the same model and the same token ids; ``intraslice_compare.py`` reads both
JSON files. The recipe and the tables: leaderboards/fidelity/README.md.

    python benchmarks/fidelity/intraslice_ours.py --ids ids.pt --out ours.json 0.2 0.3
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from harness.calibration import Calibration, CalibrationSpec
from harness.evaluations.perplexity import perplexity
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.models.loading import load_model, pick_dtype
from harness.plugins import default_registry
from harness.targets import count_parameters, measure_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sparsity", type=float, nargs="+", help="the authors' --sparsity values")
    parser.add_argument("--ids", required=True, help="torch file with 'calibration' (N×L) and 'test' windows")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--method", default="intraslice")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--ppl-windows", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--match", type=float, nargs="*", default=[], help="also run at these matched ratios r")
    args = parser.parse_args()
    ids = torch.load(args.ids)
    calibration_ids = ids["calibration"][: args.n, : args.length]
    test = ids["test"][: args.ppl_windows]
    dtype = pick_dtype(args.dtype, args.device)
    method = default_registry().method(args.method)
    spec = CalibrationSpec("side-by-side", len(calibration_ids), calibration_ids.shape[1], 0)
    calibration = Calibration(calibration_ids, spec, device=torch.device(args.device), batch_size=8)
    out = {"model": args.model, "dtype": str(dtype), "device": args.device, "method": args.method, "runs": []}
    model, _ = load_model(args.model, dtype)
    out["dense_ppl"] = perplexity(ModelAdapter(model), test, args.device).perplexity
    print(f"dense ppl {out['dense_ppl']:.3f}", flush=True)
    targets = [Target(0.0, options={"sparsity": s}) for s in args.sparsity] + [Target(r) for r in args.match]
    for target in targets:
        model, _ = load_model(args.model, dtype)
        adapter = ModelAdapter(model)
        dense = count_parameters(adapter)
        start = time.perf_counter()
        report = method.compress(adapter, calibration, target)
        seconds = time.perf_counter() - start
        ratio = measure_ratio(dense, adapter).ratio
        ppl = perplexity(adapter, test, args.device).perplexity
        label = f"sparsity {target.options['sparsity']}" if target.options else f"r {target.ratio}"
        print(f"{label}: r {ratio:.4f}, ppl {ppl:.3f} ({seconds:.0f} s)", flush=True)
        out["runs"].append({"sparsity": report.knobs["sparsity"], "target_ratio": None if target.options else target.ratio,
                            "ratio": ratio, "ppl": ppl, "kept": report.knobs["kept"], "seconds": seconds,
                            "layer_ratios": report.layer_ratios})
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
