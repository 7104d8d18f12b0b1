#!/usr/bin/env bash
# Issue 17 on the GPU machine: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantised), full
# protocol (128 × 2048 calibration, all WikiText-2 test windows of 2048), float16. Parts first:
# see prepare_qwen.sh. Every run resumes from the records already in $store/qwen, and every
# call returns them all under $OUT/qwen-records.tgz, so a sweep cut by the call limit or the
# session's device time continues in the next call (or, from committed records copied back
# into $store/qwen, the next session).
#   bash leaderboards/gpu/qwen_sweep.sh [STAGE ...]     stages: ppl zeroshot speed besa (default: all)
set -euo pipefail
store=/tmp/dev
if [ ! -e "$store/qwen.gguf" ]; then
  cat "$store"/q{1,2,3,4,5,6,7,8,9}/qwen.part > "$store/qwen.gguf"
  echo "$(cat "$store/zs/qwen.sha256")  $store/qwen.gguf" | sha256sum -c --quiet
fi
if [ ! -e "$store/zs/.installed" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$store/site" "$store"/whl/*.whl "$store"/zs/whl/*.whl
  PYTHONPATH="$store/site" python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
  mkdir -p "$store/data/zeroshot" && cp "$store"/zs/zeroshot/* "$store/data/zeroshot/"
  touch "$store/zs/.installed"
fi
export PYTHONPATH=$store/site HARNESS_DATA_DIR=$store/data HARNESS_CACHE_DIR=$store/cache PYTHONUNBUFFERED=1 \
       TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1
out=$store/qwen
common=(--model "$store/qwen.gguf" --dtype float16 --calib wikitext2:128x2048 --out "$out")
zeroshot=zeroshot:piqa,arc_easy,arc_challenge,hellaswag,winogrande,boolq,openbookqa
keep() { tar czf "${OUT:-/tmp}/qwen-records.tgz" --exclude models -C "$store" qwen; }
# one method per run, records returned after each: a call cut by its time limit keeps what it finished
for stage in ${@:-zeroshot ppl speed besa}; do
  case $stage in
    zeroshot)  # r = 0.3 and 2:4 with the 7 zero-shot tasks as well (one record per cell; dense here)
      for method in dense intraslice slicegpt wanda sparsegpt magnitude; do
        harness run "${common[@]}" --methods "$method" --ratios 0.3 --eval ppl:wikitext2 --eval "$zeroshot" || true; keep
      done
      for method in wanda sparsegpt magnitude; do
        harness run "${common[@]}" --methods "$method" --pattern 2:4 --eval ppl:wikitext2 --eval "$zeroshot" || true; keep
      done ;;
    ppl)       # every method at r = 0.2 and 0.5, the sparsity methods at 4:8 (the dense row: zeroshot stage)
      for method in intraslice slicegpt wanda sparsegpt magnitude; do
        harness run "${common[@]}" --methods "$method" --ratios 0.2,0.5 || true; keep
      done
      harness run "${common[@]}" --methods magnitude,wanda,sparsegpt --pattern 4:8 || true; keep ;;
    speed)     # structured methods at a matched measured speedup of 1.2x, quality measured there
      for method in intraslice slicegpt; do
        harness run "${common[@]}" --methods "$method" --match speedup:1.2 --phase prefill@8x2048 \
            --eval ppl:wikitext2 || true; keep
      done ;;
    besa)      # BESA last: it trains per block
      harness run "${common[@]}" --methods besa --ratios 0.3 --eval ppl:wikitext2 --eval "$zeroshot" || true; keep
      harness run "${common[@]}" --methods besa --ratios 0.2,0.5 || true; keep ;;
  esac
done
