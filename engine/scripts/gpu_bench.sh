#!/usr/bin/env bash
# Decode-speed numbers of the CUDA backend on checkpoints made by
# gpu_golden.py (run gpu_tests.sh first, or set DYNO_GPU_MODELS):
#   engine/scripts/gpu_bench.sh TEST_BINARY [OUT_DIR]
# For each model: batch 1 (prompt 128, 512 decode steps) and batch 256
# (prompt 256, 1024 decode steps), CUDA graphs and eager. One JSON line per
# case ("BENCH {...}") in the output and in OUT_DIR/bench.jsonl.
set -uo pipefail
BIN=${1:?usage: gpu_bench.sh TEST_BINARY [OUT_DIR]}
OUT=${2:-/tmp/dyno-gpu-tests}
MODELS=${DYNO_GPU_MODELS:-/tmp/dyno-gpu-models}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
for spec in "smollm2-135m:1,256" "qwen3-0.6b:1,256"; do
  p=${spec%%:*}
  d="$MODELS/$p"
  [ -f "$d/config.json" ] || python3 "$HERE/gpu_golden.py" make "$p" "$d" > "$OUT/make-$p.log" 2>&1
  DYNO_GPU_BENCH_DIR="$d" DYNO_BENCH_BATCHES=${spec#*:} "$BIN" --ignored --nocapture decode_speed 2>&1 \
    | tee "$OUT/bench-$p.log" | grep -E "^BENCH|panicked"
done
grep -h "^BENCH" "$OUT"/bench-*.log | sed 's/^BENCH //' > "$OUT/bench.jsonl"
