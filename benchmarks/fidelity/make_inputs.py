"""The shared inputs of a side-by-side run: the model's weights as a plain transformers
directory, and the token ids both sides use.

Both sides must start from identical weights and identical ids, so this writes them once:

- ``OUT/model``: the harness's own load of MODEL (``harness.models.loading.load_model``, the
  GGUF dequantised) saved with ``save_pretrained`` in ``--dtype``, with its tokenizer; the
  reference code loads this directory, and so does our side (``--model OUT/model``);
- ``OUT/ids.pt``: ``{"calibration": N×L, "test": W×L2}``: the calibration windows exactly as a
  sweep draws them (``draw_windows`` on the tokenised calibration split, ``--n`` × ``--length``,
  ``--seed``; not cut from a larger draw) and the perplexity windows of
  ``harness.evaluations.perplexity.eval_windows`` (non-overlapping, ``--test-length``);
- ``OUT/inputs.json``: what was written, with the hashes of the ids and of the data files.

    python benchmarks/fidelity/make_inputs.py --out /tmp/fidelity --n 128 --length 2048
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from harness.calibration import draw_windows, tokenize
from harness.evaluations.perplexity import eval_windows
from harness.models.loading import DEFAULT_MODEL, load_model, load_tokenizer
from harness.plugins import default_registry


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.to(torch.int64).numpy().tobytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--dataset", default="wikitext2")
    parser.add_argument("--data-dir", default=None, help="where the dataset's files lie (default: the harness's lookup)")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-length", type=int, default=2048)
    parser.add_argument("--round-to", choices=["float16", "bfloat16"],
                        help="round every weight to this dtype and back before saving (in --dtype): for a "
                             "reference that loads half precision and computes in float32, both sides then hold "
                             "identical weights")
    parser.add_argument("--legacy-rope", action="store_true",
                        help="also write rope_theta at the config's top level, where transformers < 5 reads it")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(args.model)
    model, _ = load_model(args.model, getattr(torch, args.dtype))
    if args.round_to:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(parameter.to(getattr(torch, args.round_to)).to(parameter.dtype))
    model.save_pretrained(args.out / "model")
    tokenizer.save_pretrained(args.out / "model")
    if args.legacy_rope:
        config_file = args.out / "model" / "config.json"
        config = json.loads(config_file.read_text())
        config.setdefault("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta"))
        config_file.write_text(json.dumps(config, indent=2) + "\n")
    dataset = default_registry().dataset(args.dataset)
    sources = {split: dataset.locate(split, args.data_dir) for split in ("calibration", "test")}
    calibration = draw_windows(tokenize(tokenizer, dataset.read(sources["calibration"])), args.n, args.length, args.seed)
    test, _ = eval_windows(tokenize(tokenizer, dataset.read(sources["test"])), args.test_length)
    torch.save({"calibration": calibration, "test": test}, args.out / "ids.pt")
    info = {"model": args.model, "dtype": args.dtype, "rounded_to": args.round_to, "seed": args.seed,
            "calibration": {"shape": list(calibration.shape), "sha256": digest(calibration),
                            "data": Path(sources["calibration"].path).name, "data_sha256": sources["calibration"].sha256},
            "test": {"shape": list(test.shape), "sha256": digest(test),
                     "data": Path(sources["test"].path).name, "data_sha256": sources["test"].sha256}}
    (args.out / "inputs.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
