#!/usr/bin/env bash
# On the device machine (see prepare_device.sh): `stash` keeps what this call carried under
# /tmp/dev (the machine keeps /tmp while warm) and, once both GGUF parts are there, installs
# the wheels and this package and assembles the model; `ray` installs Ray from its two carried
# parts; `env` prints the exports a job needs.
set -euo pipefail
store=/tmp/dev
case "${1:-}" in
  stash)
    mkdir -p "$store"
    for part in .device/*; do [ -e "$part" ] && cp -r "$part" "$store/"; done  # whatever this call carried
    if [ -e "$store/p1" ] && [ -e "$store/p2" ] && [ ! -e "$store/smollm2.gguf" ]; then
      cat "$store/p1" "$store/p2" > "$store/smollm2.gguf"
      echo "$(cat "$store/data/smollm2.sha256")  $store/smollm2.gguf" | sha256sum -c --quiet
      python3 -m pip install -q --no-index --no-deps --no-compile --target "$store/site" "$store"/whl/*.whl
      PYTHONPATH="$store/site" python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
      echo "device ready: $store/smollm2.gguf"
    fi
    ls "$store" ;;
  ray)  # Ray from its two carried parts (.device/raya, .device/rayb: see ray_grid.sh), once
    wheel=$store/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
    if [ ! -e "$store/.ray-installed" ]; then
      cat "$store/raya/ray.part1" "$store/rayb/ray.part2" > "$wheel"
      python3 -m pip install -q --no-index --no-deps --no-compile --target "$store/site" "$store"/raya/*.whl "$wheel"
      touch "$store/.ray-installed"
    fi ;;
  env)
    echo "export PYTHONPATH=$store/site HARNESS_DATA_DIR=$store/data HARNESS_CACHE_DIR=$store/cache"
    echo "export SMOLLM2=$store/smollm2.gguf PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false" ;;
  *) echo "usage: on_device.sh stash|ray|env" >&2; exit 2 ;;
esac
