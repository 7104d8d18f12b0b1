#!/usr/bin/env bash
# Build .device/raya and .device/rayb: Ray 2.60.0 (the locked version) for the device image
# (Python 3.12), whose wheel (79 MB) is over one call's 64 MiB, split in two, with the
# dependency wheels the image lacks. On the device: carry each in its own call with
# `bash benchmarks/gpu/on_device.sh stash`, then `bash benchmarks/gpu/on_device.sh ray`
# (qwen_sweep.sh and smollm2_zeroshot.sh do that themselves when RAY_GPUS is set).
set -euo pipefail
cd "$(dirname "$0")/../.."
dev=.device
pin() { grep -i "^$1==" .ci/constraints.txt; }
rm -rf "$dev/raya" "$dev/rayb" "$dev/raywhl"; mkdir -p "$dev/raya" "$dev/rayb" "$dev/raywhl"
for p in ray click jsonschema jsonschema-specifications referencing rpds-py attrs msgpack protobuf; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$dev/raywhl" "$(pin "$p")"
done
ray_wheel=$(ls "$dev"/raywhl/ray-*.whl)
[ "$(basename "$ray_wheel")" = ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl ] || { echo "unexpected $ray_wheel" >&2; exit 1; }
head -c 40M "$ray_wheel" > "$dev/raya/ray.part1"
tail -c +$((40 * 1024 * 1024 + 1)) "$ray_wheel" > "$dev/rayb/ray.part2"
mv "$dev"/raywhl/*.whl "$dev/raya/" && rm "$dev/raya/$(basename "$ray_wheel")" && rmdir "$dev/raywhl"
du -sh "$dev/raya" "$dev/rayb"
