#!/usr/bin/env bash
# On the device machine (see prepare_device.sh): `stash` keeps what this call carried under
# /tmp/dev (the machine keeps /tmp while warm) and, once both GGUF parts are there, installs
# the wheels and this package and assembles the model; `ray` installs Ray from its two carried
# parts; `env` prints the exports a job needs; `bg` starts a job that outlives the call and `poll`
# shows how it goes.
set -euo pipefail
store=/tmp/dev
case "${1:-}" in
  stash)  # each part is used as soon as it is here: wheels and this package, lm-eval's set, the model
    mkdir -p "$store"
    for part in .device/*; do [ -e "$part" ] && cp -r "$part" "$store/"; done  # whatever this call carried
    if [ -e "$store/whl" ] && [ ! -e "$store/.installed" ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --target "$store/site" "$store"/whl/*.whl
      PYTHONPATH="$store/site" python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
      touch "$store/.installed"; echo "installed: wheels and this package"
    fi
    if [ -e "$store/zs" ] && [ ! -e "$store/zs/.installed" ]; then  # lm-eval and the zero-shot task files
      python3 -m pip install -q --no-index --no-deps --no-compile --target "$store/site" "$store"/zs/whl/*.whl
      mkdir -p "$store/data/zeroshot" && cp "$store"/zs/zeroshot/* "$store/data/zeroshot/"
      touch "$store/zs/.installed"; echo "installed: lm-eval and the zero-shot tasks"
    fi
    if [ -e "$store/p1" ] && [ ! -e "$store/smollm2.gguf" ]; then  # the GGUF once all its parts are here
      cat $(ls "$store"/p[0-9] | sort -V) > "$store/smollm2.gguf.part"
      if echo "$(cat "$store/data/smollm2.sha256")  $store/smollm2.gguf.part" | sha256sum -c --quiet 2>/dev/null; then
        mv "$store/smollm2.gguf.part" "$store/smollm2.gguf"; echo "device ready: $store/smollm2.gguf"
      else
        rm "$store/smollm2.gguf.part"; echo "model parts so far: $(ls "$store" | grep -c '^p[0-9]$')"
      fi
    fi
    ls "$store" ;;
  ray)  # Ray from its two carried parts (.device/raya, .device/rayb: see prepare_ray.sh), once
    wheel=$store/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
    if [ ! -e "$store/.ray-installed" ]; then
      cat "$store/raya/ray.part1" "$store/rayb/ray.part2" > "$wheel"
      python3 -m pip install -q --no-index --no-deps --no-compile --target "$store/site" "$store"/raya/*.whl "$wheel"
      touch "$store/.ray-installed"
    fi ;;
  bg)  # bg NAME COMMAND...: run COMMAND detached (it outlives this call; the machine keeps it while
       # warm), output in $store/NAME.log. Device time counts while the machine is held, busy or not:
       # a job in the background runs while the caller thinks, and short `poll` calls keep it warm.
       # Never two speed measurements at once (a probe timed beside another job is wrong: 2026-12-03d).
    name=$2; shift 2; mkdir -p "$store/out-$name"
    OUT=$store/out-$name setsid nohup bash -c "( $* ) 2>&1 | grep --line-buffered -v 'it/s\]\$' > $store/$name.log" \
      </dev/null >/dev/null 2>&1 &
    echo "started $name: $store/$name.log (its \$OUT: $store/out-$name)" ;;
  poll)  # poll NAME [LINES]: the job's last lines, whether it still runs, the GPU's load
    { grep -v "logging.cc\|^WARNING" "$store/$2.log" || true; } | tail -n "${3:-5}"  # an empty log is no error
    pgrep -f "$store/$2.log" >/dev/null && echo "($2 running)" || echo "($2 finished)"
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader ;;
  env)
    echo "export PYTHONPATH=$store/site HARNESS_DATA_DIR=$store/data HARNESS_CACHE_DIR=$store/cache"
    echo "export SMOLLM2=$store/smollm2.gguf PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false" ;;
  *) echo "usage: on_device.sh stash|ray|env|bg NAME CMD...|poll NAME [LINES]" >&2; exit 2 ;;
esac
