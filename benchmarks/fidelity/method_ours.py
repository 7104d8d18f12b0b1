"""Our side of a side-by-side with a method's reference code: any harness method (``rtn``,
``gptq``, ``awq``, ``sleb``, ``shortgpt`` ...) on the inputs ``make_inputs.py`` wrote (the same
weights and token ids the reference code gets), with perplexity on the first test windows, the
method's report notes (which blocks a depth method removed, say) and the weights of chosen layers.

    python benchmarks/fidelity/method_ours.py --inputs /tmp/fidelity-512 --out ours.json \\
        --run rtn:bits=4,group_size=128 --run gptq:bits=4,group_size=128,act_order=true --ncal 128 --ntest 16

Each ``--run METHOD:KNOB=VALUE,...`` starts from a fresh load of the weights; ``ratio=R`` and
``pattern=2:4`` among them set the target (``--run owl:ratio=0.7,hyper_m=5``). The JSON holds each
run's perplexity and seconds; ``--weights DIR`` also saves each run's dequantised linears of
``--layers`` (float32, safetensors) for an element-wise comparison (``quant_compare.py``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from harness.calibration import Calibration, CalibrationSpec
from harness.evaluations.perplexity import perplexity
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.models.loading import load_model
from harness.plugins import default_registry


def parse_run(text: str) -> tuple[str, dict]:
    method, _, knobs = text.partition(":")
    options = {}
    for item in filter(None, knobs.split(",")):
        key, value = item.split("=")
        options[key] = {"true": True, "false": False}.get(value.lower(), value)
        for number in (int, float):
            try:
                options[key] = number(value)
                break
            except ValueError:
                pass
    return method, options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", required=True, type=Path, help="the directory make_inputs.py wrote")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--run", action="append", default=[], help="METHOD:KNOB=VALUE,... (repeatable)")
    parser.add_argument("--ncal", type=int, default=None, help="the first N calibration windows (default all)")
    parser.add_argument("--ntest", type=int, default=None, help="the first N test windows (default all)")
    parser.add_argument("--weights", type=Path, help="save each run's dequantised linears of --layers here")
    parser.add_argument("--layers", type=int, nargs="*", default=[0, 29])
    parser.add_argument("--no-dense", action="store_true", help="skip the dense run (measured by another call)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ids = torch.load(args.inputs / "ids.pt")
    calibration_ids = ids["calibration"][: args.ncal]
    test = ids["test"][: args.ntest]
    spec = CalibrationSpec("side-by-side", len(calibration_ids), calibration_ids.shape[1], 0)
    calibration = Calibration(calibration_ids, spec, device=torch.device(args.device), batch_size=8)
    registry = default_registry()
    out = {"inputs": json.loads((args.inputs / "inputs.json").read_text()), "ncal": len(calibration_ids),
           "ntest": len(test), "torch": torch.__version__, "runs": {}}
    for text in ([] if args.no_dense else ["dense:"]) + args.run:
        method_name, options = parse_run(text)
        model, _ = load_model(str(args.inputs / "model"), torch.float32)
        adapter = ModelAdapter(model)
        start = time.perf_counter()
        options = dict(options)
        ratio, pattern = float(options.pop("ratio", 0.0)), str(options.pop("pattern", "unstructured"))
        report = registry.method(method_name).compress(adapter, calibration, Target(ratio, pattern, options))
        seconds = time.perf_counter() - start
        ppl = perplexity(adapter, test, args.device).perplexity
        out["runs"][text] = {"ppl": ppl, "seconds": seconds, "knobs": report.knobs, "notes": report.notes}
        print(f"{text}: ppl {ppl:.4f} ({seconds:.1f} s)", flush=True)
        if args.weights:
            from safetensors.torch import save_file

            args.weights.mkdir(parents=True, exist_ok=True)
            tensors = {f"layers.{i}.{role}": linear.weight.detach().float().contiguous()
                       for i in args.layers for role, linear in adapter.linears(adapter.blocks[i]).items()}
            save_file(tensors, args.weights / f"{text.replace(':', '_').replace(',', '_').replace('=', '-')}.safetensors")
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
