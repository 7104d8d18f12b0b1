#!/usr/bin/env bash
# Quantization on the GPU (issue 34): the kernels against their reference path, the 7B shape's
# int4 and int8 rows, and SmolLM2's quantization tables. The device is prepared as
# prepare_device.sh says (two calls: wheels, data and the SmolLM2 GGUF in two parts); then
#   source <(bash benchmarks/gpu/on_device.sh env) && bash benchmarks/gpu/quant_experiments.sh EXPERIMENT...
# Rows and records land in $OUT: copy speed-*.json to leaderboards/llama-2-7b-shape/ and the
# records to leaderboards/smollm2-135m-instruct/records/.
set -euo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/out}; mkdir -p "$out"
bench() { local name=$1; shift; echo "== $name: harness bench speed $*"
  timeout "${BENCH_S:-570}" python3 -m harness.cli bench speed --shape llama-2-7b "$@" --json "$out/$name.json" 2>&1 \
    | grep -v "it/s\]$" | tee "$out/$name.log" || true; }
# int4 g128 (tinygemm) and int8 per-channel symmetric (int8 weight-only) formats in one run beside
# dense: the shape probes round random weights to the nearest (speed depends on the format alone)
INT8="-o gptq.bits=8 -o gptq.group_size=-1 -o gptq.symmetric=true"
for experiment in "$@"; do
  case $experiment in
    kernels)  # the GPU tests of the low-bit kernels and the serving step, then 2 blocks of the 7B shape
      python3 -m pytest -q -p no:cacheprovider tests/test_quant_kernels.py tests/test_fusion.py 2>&1 | tail -15
      # shellcheck disable=SC2086
      bench quant-check --methods dense,rtn,gptq $INT8 --layers 2 --phases decode@1x512,prefill@8x2048 --profile ;;
    shape7b)  # the 7B shape's int4 and int8 rows at every phase (~8 min on an H100)
      # shellcheck disable=SC2086
      bench speed-quant --methods dense,rtn,gptq $INT8 --phases decode@1x512,decode@16x512,prefill@8x2048 ;;
    smollm2)  # SmolLM2-135M-Instruct, fp16: the grid rows, 2:4 + w4, and matched memory (experiments/)
      python3 -m harness.cli run --config experiments/smollm2-quantization.toml --model "$SMOLLM2" \
          --out "$out/records" --cache-dir /tmp/dev/cache 2>&1 | grep -v "it/s\]$" | tail -40 ;;
    *) echo "unknown experiment $experiment"; exit 2 ;;
  esac
done
