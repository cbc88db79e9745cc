#!/usr/bin/env bash
# Runs the CUDA backend's GPU tests on a machine with an NVIDIA GPU, CUDA and
# Python with torch + transformers. Usage (from the repo root):
#   engine/scripts/gpu_tests.sh TEST_BINARY [OUT_DIR]
# TEST_BINARY is the `cuda_backend` test executable built by
#   cargo test --release -p engine --test cuda_backend --no-run
# Prints a summary; full logs go to OUT_DIR (default /tmp/dyno-gpu-tests).
set -uo pipefail
BIN=${1:?usage: gpu_tests.sh TEST_BINARY [OUT_DIR]}
OUT=${2:-/tmp/dyno-gpu-tests}
MODELS=${DYNO_GPU_MODELS:-/tmp/dyno-gpu-models}
PRESETS=${DYNO_GPU_PRESETS:-smollm2-135m qwen3-0.6b qwen2.5-0.5b}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT" "$MODELS"
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== tiny models vs f32 reference, device sampling"
"$BIN" --ignored --nocapture --test-threads 1 tiny_models device_sampling 2>&1 | tee "$OUT/tiny.log" | grep -E "error|greedy|sampling|test result|panicked" || status=1
grep -q "test result: ok" "$OUT/tiny.log" || status=1

for p in $PRESETS; do
  echo "== golden $p"
  d="$MODELS/$p"
  if [ ! -f "$d/prompts.json" ]; then
    python3 "$HERE/gpu_golden.py" make "$p" "$d" > "$OUT/make-$p.log" 2>&1 || { echo "make $p failed"; tail -5 "$OUT/make-$p.log"; status=1; continue; }
  fi
  grep -h "HF_BF16" "$OUT/make-$p.log" 2>/dev/null
  rm -f "$d/gpu_generated.json"
  DYNO_GOLDEN_DIR="$d" "$BIN" --ignored --nocapture golden_outputs > "$OUT/golden-$p.log" 2>&1
  grep -E "GOLDEN|panicked|test result" "$OUT/golden-$p.log"
  grep -q "test result: ok" "$OUT/golden-$p.log" || { status=1; grep -E "≥|error" "$OUT/golden-$p.log" | head -3; }
  [ -f "$d/gpu_generated.json" ] || continue
  python3 "$HERE/gpu_golden.py" check "$d" > "$OUT/greedy-$p.log" 2>&1 || status=1
  grep -E "GREEDY|Error" "$OUT/greedy-$p.log"
done
echo "gpu_tests: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
