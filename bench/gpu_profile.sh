#!/usr/bin/env bash
# bench/gpu_profile.py on a lent GPU in one go (bench/README.md): the full fine-tune's variants
# side by side and profiles, everything inside TOTAL seconds (default 290) from this script's start.
#
#   bash bench/gpu_profile.sh [SRC]
#
# SRC, WHEELS, PYTHON and SITE as in bench/gpu.sh (wheels installed offline into $SITE; SRC's
# operator/ and trainer_image/ on PYTHONPATH). Writes log, results.json and profile-*.txt under
# $OUT (default /tmp/mentor-gpu-profile). Environment: TOTAL (290), STEPS (20), STEADY_FROM (10).
set -uo pipefail

SRC=$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)
OUT=${OUT:-/tmp/mentor-gpu-profile}
WHEELS=${WHEELS:-.whl}
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
TOTAL=${TOTAL:-290}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_DISABLE_PROGRESS_BARS=1
mkdir -p "$OUT"

main() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    timeout 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
      || echo "pip install failed (exit $?)"
    export PYTHONPATH=$SRC/operator:$SRC/trainer_image:$SITE
  else
    export PYTHONPATH=$SRC/operator:$SRC/trainer_image
  fi
  cd "$SRC" || return 1
  echo "[$(date +%H:%M:%S)] gpu_profile.py, $((TOTAL - SECONDS)) s left"
  timeout -k 5 $((TOTAL - SECONDS)) "$PY" bench/gpu_profile.py --out "$OUT" --budget $((TOTAL - SECONDS - 10)) \
    --steps "${STEPS:-20}" --steady-from "${STEADY_FROM:-10}"
  echo "gpu_profile exit $?"
}

main 2>&1 | tee "$OUT/log"
