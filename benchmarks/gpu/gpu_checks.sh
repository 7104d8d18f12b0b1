#!/usr/bin/env bash
# On the device machine, with `.device/whl` carried (transformers and prodigyopt wheels of the
# lock: `bash benchmarks/gpu/prepare_device.sh` builds it, or pip download those two pins):
# installs them and this package, runs the GPU tests of the serving step, then the given
# command (e.g. a `harness bench compress` run), with its output under $OUT when set.
#   device run, carry [.device/whl]:  bash benchmarks/gpu/gpu_checks.sh [COMMAND...]
set -euo pipefail
site=/tmp/dev/site
mkdir -p "$site"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .device/whl/*.whl
export PYTHONPATH=$site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/test_throughput.py tests/test_decode_kernels.py tests/test_fusion.py \
    -k "cuda or gpu or semi_structured or sparse or decode or peak or tuned or q_k_v or compiled" 2>&1 | tail -25
if [ $# -gt 0 ]; then "$@"; fi
