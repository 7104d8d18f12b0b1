"""Weights-file sizes of the exports under a results directory, beside the dense model's.

    harness run --methods magnitude,wanda,sparsegpt,besa,slicegpt,intraslice --ratios 0.3 \
        --calib wikitext2:8x256 --eval-windows 2 --eval-length 1024 --dtype float32 --device cpu \
        --out /tmp/exp --save-models
    harness run --methods wanda,sparsegpt --pattern 2:4 --calib wikitext2:8x256 --eval-windows 2 \
        --eval-length 1024 --dtype float32 --device cpu --out /tmp/exp --save-models
    python benchmarks/export_sizes.py /tmp/exp/models      # the rows of leaderboards/smollm2-135m-instruct/export-sizes.md
"""

import json
import sys
import tempfile
from pathlib import Path

import torch

from harness.models.loading import load_model


def weights(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


dense, _ = load_model("smollm2-135m-instruct", torch.float32)
with tempfile.TemporaryDirectory() as tmp:
    dense.save_pretrained(tmp, safe_serialization=True)
    base = weights(Path(tmp))
print(f"| dense (save_pretrained) | {base / 2**20:.1f} | 1.000 | yes |")
for export in sorted(Path(sys.argv[1]).iterdir()):
    meta = json.loads((export / "compression.json").read_text())
    stock = "yes" if meta["loadable_by_transformers"] else "no (shape plan)"
    print(f"| {meta['method']} @ {meta['target']} | {weights(export) / 2**20:.1f} | {weights(export) / base:.3f} | {stock} |")
