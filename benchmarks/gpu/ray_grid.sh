#!/usr/bin/env bash
# experiments/ray-grid.toml on the GPU machine through `--executor ray`, then the same grid run
# sequentially, for the wall-clock comparison (both times printed; both record folders returned
# in $OUT/ray-grid.tgz). Ray's wheel (79 MB) is over one call's 64 MiB, so it travels in two parts:
#   here:    bash benchmarks/gpu/prepare_device.sh && bash benchmarks/gpu/prepare_ray.sh; then save a
#            small random Llama with SmolLM2's tokenizer to .device/rayb/tinysmol
#   call 1:  carry [.device/whl, .device/data, .device/raya]  bash benchmarks/gpu/on_device.sh stash
#   call 2:  carry [.device/rayb]  bash benchmarks/gpu/on_device.sh stash && bash benchmarks/gpu/ray_grid.sh
set -euo pipefail
store=/tmp/dev
wheel=$store/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
[ -e "$wheel" ] || cat "$store/raya/ray.part1" "$store/rayb/ray.part2" > "$wheel"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$store/site" \
    "$store"/whl/*.whl "$store"/raya/*.whl "$wheel"
export PYTHONPATH=$store/site HARNESS_DATA_DIR=$store/data PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
out=${OUT:-/tmp/out}
grid=(--config experiments/ray-grid.toml --model "$store/rayb/tinysmol" --cache-dir "$store/cache")
start=$(date +%s.%N)
harness run "${grid[@]}" --executor ray --out "$store/ray-grid" 2>&1 | grep -v "it/s\]"
mid=$(date +%s.%N)
harness run "${grid[@]}" --out "$store/seq-grid" 2>&1 | grep -v "it/s\]"
end=$(date +%s.%N)
python3 -c "print(f'ray sweep: {$mid - $start:.1f} s; sequential (calibration cache warm): {$end - $mid:.1f} s')"
tar czf "$out/ray-grid.tgz" -C "$store" ray-grid seq-grid
