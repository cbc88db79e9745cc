#!/usr/bin/env bash
# Decode-speed numbers of the CUDA backend alone (no scheduler) on the
# synthetic presets (`engine synth --seed 0`, made once in DYNO_GPU_MODELS):
#   engine/scripts/gpu_bench.sh TEST_BINARY ENGINE_BINARY [OUT_DIR]
# For each model: batch 1 (prompt 128, 512 decode steps) and batch 256
# (prompt 256, 1024 decode steps), CUDA graphs and eager. One JSON line per
# case ("BENCH {...}") in the output and in OUT_DIR/bench.jsonl.
set -uo pipefail
BIN=${1:?usage: gpu_bench.sh TEST_BINARY ENGINE_BINARY [OUT_DIR]}
ENGINE=${2:?usage: gpu_bench.sh TEST_BINARY ENGINE_BINARY [OUT_DIR]}
OUT=${3:-/tmp/dyno-gpu-tests}
MODELS=${DYNO_GPU_MODELS:-/tmp/dyno-gpu-models}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
for spec in ${DYNO_BENCH_SPECS:-smollm2-135m:1,256 qwen3-0.6b:1,256}; do
  p=${spec%%:*}
  d="$MODELS/$p"
  [ -f "$d/config.json" ] || "$ENGINE" synth --preset "$p" --seed 0 --out "$d" > /dev/null
  DYNO_GPU_BENCH_DIR="$d" DYNO_BENCH_BATCHES=${spec#*:} "$BIN" --ignored --nocapture decode_speed 2>&1 \
    | tee "$OUT/bench-$p.log" | grep -E "^BENCH|panicked"
done
grep -h "^BENCH" "$OUT"/bench-*.log | sed 's/^BENCH //' > "$OUT/bench.jsonl"
