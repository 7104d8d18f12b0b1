# Sourced by the device sweeps (qwen_sweep.sh, smollm2_zeroshot.sh): a record store that resumes
# from committed records and a `step` that runs one `harness run` (usually `--config experiments/...`)
# inside the call's deadline.
# The sweep sets: start (date +%s at its start), store, name (records folder under $store),
# committed (the leaderboard's records folder in the repo), common (harness run arguments: --model,
# --out; flags override the sweep file).
sweep_begin() {
  # preflight: every plugin loads and has the packages it runs on (a missing one is named with
  # its pip line), before any cell spends device time
  harness plugins > "$store/plugins.txt" || { grep -B3 "MISSING\|FAILED" "$store/plugins.txt"; exit 1; }
  out=$store/$name
  if [ ! -d "$out" ] && [ -d "$committed" ]; then mkdir -p "$out" && cp "$committed"/*.json "$out"/; fi
  # RAY_GPUS=0.25 (with .device/raya and .device/rayb stashed): quality cells four to a GPU through
  # `--executor ray` (lm-eval's per-request Python work leaves a small model's GPU mostly idle)
  parallel=()
  if [ -n "${RAY_GPUS:-}" ]; then bash benchmarks/gpu/on_device.sh ray; parallel=(--executor ray --ray-gpus "$RAY_GPUS"); fi
}
keep() { tar czf "${OUT:-/tmp}/$name-records.tgz" -C "$store" "$name"; }
step() {  # one harness run, cut at the call's deadline (CALL_S, default 570 s); records returned either way
  local left=$(( start + ${CALL_S:-570} - $(date +%s) ))
  if (( left < 20 )); then echo "$name: call time spent; rerun to continue"; keep; exit 0; fi
  local began=$(date +%s)
  timeout "$left" harness run "${common[@]}" "${parallel[@]}" "$@" || echo "$name: step ended with $? ($*)"
  echo "$name: step took $(( $(date +%s) - began )) s, call at $(( $(date +%s) - start )) s ($*)"  # where a call's time went
  # a driver cut by the deadline leaves its local Ray cluster running: stop it before the next step
  if (( ${#parallel[@]} )); then python3 -m ray.scripts.scripts stop --force >/dev/null 2>&1 || true; fi
  keep
}
