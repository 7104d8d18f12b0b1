#!/usr/bin/env bash
# Named GPU experiments: the low-bit kernels against their reference path, the 7B shape's int4
# and int8 rows, GPTQ's compression time beside SparseGPT's, SmolLM2's quantization tables, GPTQ beside RTN across settings, and the pruning
# baselines' sweep. The device is prepared as prepare_device.sh says (one call per part: wheels and
# data with the SmolLM2 GGUF's first part, then the others; .device/zs from prepare_qwen.sh for the
# sweeps' zero-shot cells); then
#   source <(bash benchmarks/gpu/on_device.sh env) && bash benchmarks/gpu/experiments.sh EXPERIMENT...
# or, past one call's limit, `on_device.sh bg q "CALL_S=3000 bash benchmarks/gpu/experiments.sh ..."`.
# Under $OUT: speed-*.json rows (copy to leaderboards/llama-2-7b-shape/) and NAME-records.tgz per
# sweep (unpack into the leaderboard folder the sweep file names). The sweeps resume from the
# committed records, and from their own records while the machine stays warm.
set -euo pipefail
export PYTHONUNBUFFERED=1
start=$(date +%s) store=/tmp/dev
results=${OUT:-/tmp/out}; mkdir -p "$results"
bench() { local name=$1; shift; echo "== $name: harness bench speed $*"
  timeout "${BENCH_S:-570}" python3 -m harness.cli bench speed --shape llama-2-7b "$@" --json "$results/$name.json" 2>&1 \
    | grep -v "it/s\]$" | tee "$results/$name.log" || true; }
sweep() {  # sweep NAME COMMITTED CONFIG: one sweep file, resumable (sweep_steps.sh)
  name=$1 committed=$2; source benchmarks/gpu/sweep_steps.sh; sweep_begin
  common=(--model "$SMOLLM2" --out "$out" --cache-dir "$store/cache"); step --config "$3"; }
# int4 g128 and int8 per-channel symmetric formats, each in a run beside dense (one run held both
# past a call's time): the shape probes
# round random weights to the nearest (speed depends on the format alone)
INT8="-o gptq.bits=8 -o gptq.group_size=-1 -o gptq.symmetric=true"
for experiment in "$@"; do
  case $experiment in
    kernels)  # the GPU tests of the low-bit kernels, the serving step and GPTQ's graphed sweep, then 2 blocks of the 7B shape
      python3 -m pytest -q -p no:cacheprovider tests/test_quant_kernels.py tests/test_fusion.py tests/test_quantization.py 2>&1 | tail -15
      # shellcheck disable=SC2086
      bench quant-check --methods dense,rtn,gptq $INT8 --layers 2 --phases decode@1x512,prefill@8x2048 --profile ;;
    shape7b)  # the 7B shape's int4 rows at every phase, beside dense
      bench speed-quant --methods dense,rtn --phases decode@1x512,decode@16x512,prefill@8x2048 ;;
    shape7b-int8)  # the 7B shape's int8 (per row, symmetric) rows at every phase, beside dense
      # shellcheck disable=SC2086
      bench speed-quant-int8 --methods dense,gptq $INT8 --phases decode@1x512,decode@16x512,prefill@8x2048 ;;
    prune7b)  # depth and width pruning at r = 0.25 beside dense (shapes from each method's data-free probe)
      bench speed-prune --methods dense,shortgpt,flap,wanda-sp,llm-pruner --ratio 0.25 \
        --phases decode@1x512,decode@16x512,prefill@8x2048 ;;
    compress7b)  # GPTQ's compression time beside SparseGPT's (the same float64 statistics), 4 blocks of the 7B shape
      timeout "${BENCH_S:-570}" python3 -m harness.cli bench compress --shape llama-2-7b --methods sparsegpt,gptq,rtn \
        --calib 128x2048 --layers 4 --json "$results/compress-7b.json" 2>&1 | grep -v "it/s\]$" | tee "$results/compress-7b.log" || true ;;
    smollm2)  # SmolLM2-135M-Instruct, fp16: grid rows, 2:4 + w4, matched memory
      sweep smollm2-q leaderboards/smollm2-135m-instruct/records experiments/smollm2-quantization.toml ;;
    pruning-baselines)  # ShortGPT, SLEB, FLAP, Wanda-sp, OWL, RIA on SmolLM2, fp16 (zero-shot needs .device/zs)
      sweep smollm2-pb leaderboards/smollm2-135m-instruct/records experiments/smollm2-pruning-baselines.toml ;;
    gptq-settings)  # GPTQ beside RTN by dtype, calibration length and GPTQ's options
      sweep gptq-settings leaderboards/fidelity/gptq-smollm2-settings/records experiments/smollm2-gptq-settings.toml ;;
    *) echo "unknown experiment $experiment"; exit 2 ;;
  esac
done
