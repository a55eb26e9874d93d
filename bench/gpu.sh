#!/usr/bin/env bash
# The GPU benchmarks in one go (bench/README.md): fine-tuning throughput (full and LoRA, ours
# vs plain TRL SFTTrainer) and evaluation throughput on the 1.5B shape, each part under a
# timeout so that the whole script ends in about 8 minutes even if a part hangs.
#
#   bash bench/gpu.sh [SRC]
#
# SRC: the source tree to benchmark (default: this checkout); its operator/ and trainer_image/
# go on PYTHONPATH. Wheels in $WHEELS (default .whl, relative to the current directory) are
# installed with `pip --no-deps --target /tmp/site` first: a machine whose image lacks the
# trainer's packages (trl, datasets, pydantic, ...) gets them from there, offline.
# Writes log, train.json and eval.json under $OUT (default /tmp/mentor-gpu-bench).
#
# Environment: PYTHON (python3), SHAPE (1.5b), STEPS (30), QA (32 questions), TEXTS (512),
# TRAIN_TIMEOUT (320 s), WORKER_TIMEOUT (150 s each of the 4 trainer runs), EVAL_TIMEOUT (120 s).
set -uo pipefail

SRC=$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)
OUT=${OUT:-/tmp/mentor-gpu-bench}
WHEELS=${WHEELS:-.whl}
PY=${PYTHON:-python3}
SHAPE=${SHAPE:-1.5b}
STEPS=${STEPS:-30}
QA=${QA:-32}
TEXTS=${TEXTS:-512}
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-320}
WORKER_TIMEOUT=${WORKER_TIMEOUT:-150}
EVAL_TIMEOUT=${EVAL_TIMEOUT:-120}
SITE=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_DISABLE_PROGRESS_BARS=1
mkdir -p "$OUT"

part() { printf '\n===== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

main() {
  part "machine"
  nvidia-smi || true
  "$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))'
  "$PY" -m pip list 2>/dev/null | grep -iE '^(transformers|trl|peft|datasets|accelerate|pydantic|pyarrow|pandas|numpy|huggingface.hub|tokenizers|safetensors|regex|fsspec|typing.extensions|xxhash|dill|multiprocess) ' || true

  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    part "install $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE"
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl || echo "pip install failed (exit $?)"
    export PYTHONPATH=$SRC/operator:$SRC/trainer_image:$SITE
  else
    export PYTHONPATH=$SRC/operator:$SRC/trainer_image
  fi
  timeout 120 "$PY" -c '
import importlib
for name in ("transformers", "trl", "peft", "datasets", "accelerate", "pydantic", "pyarrow", "huggingface_hub", "tokenizers"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), module.__file__)
    except Exception as error:
        print(name, "IMPORT FAILED:", type(error).__name__, error)
' || true

  cd "$SRC" || return 1
  part "train_throughput --shape $SHAPE --method both --steps $STEPS"
  timeout -k 10 "$TRAIN_TIMEOUT" "$PY" bench/train_throughput.py --shape "$SHAPE" --method both --steps "$STEPS" \
    --json "$OUT/train.json" --verbose --keep-going --worker-timeout "$WORKER_TIMEOUT"
  echo "train_throughput exit $?"

  part "eval_throughput --shape $SHAPE --qa $QA --texts $TEXTS"
  timeout -k 10 "$EVAL_TIMEOUT" "$PY" bench/eval_throughput.py --shape "$SHAPE" --qa "$QA" --texts "$TEXTS" --json "$OUT/eval.json"
  echo "eval_throughput exit $?"
  part "done"
}

main 2>&1 | tee "$OUT/log"
