#!/usr/bin/env bash
# Issue 11's measurements on the GPU machine (no cargo there): prebuilt
# `xtask` and `engine` binaries, the sweep files of workloads/sweeps/, the
# reports (CSV, JSON, Markdown, SVG, HTML) copied into OUT.
#
#   scripts/gpu_sweeps.sh XTASK ENGINE OUT [bsat] [tier0] [capacity]   # default: all three
#
#   bsat      B_sat of smollm2-135m (B 1..1024) and qwen3-0.6b (B 1..512),
#             prompt 256, output 1024 (~3 min on an H200)
#   tier0     max_num_seqs {128,256,512,1024} x max_num_batched_tokens
#             {8192,16384,32768} on smollm2-135m, offline 500 x (256 -> 1024),
#             then tier 1 (gpu_memory_utilization {0.8, 0.95}) from the best
#             (~3.5 min)
#   capacity  SLO capacity of smollm2-135m at p99 TTFT <= 200 ms and
#             TPOT <= 20 ms, 99 % attainment (~1.5 min)
#
# Run from the repository root. Sweeps resume: a second call (e.g. after a
# 10-minute command limit) skips the points already measured, as long as
# results/ is kept (the machine stays warm). Set DYNO_GIT_COMMIT to the
# commit the binaries were built from.
set -uo pipefail
X=${1:?usage: gpu_sweeps.sh XTASK ENGINE OUT [bsat] [tier0] [capacity]}
E=${2:?engine binary}
OUT=${3:?output folder}
shift 3
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(bsat tier0 capacity)
mkdir -p "$OUT"
LOG="$OUT/gpu_sweeps.log"
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
run() { echo "+ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; echo "exit ${PIPESTATUS[0]}" | tee -a "$LOG"; }
"$E" info --json > "$OUT/engine-info.json" 2>&1
for part in "${PARTS[@]}"; do
  case "$part" in
    bsat) file=workloads/sweeps/gpu-bsat.toml ;;
    tier0) file=workloads/sweeps/gpu-tier0-smollm2.toml ;;
    capacity) file=workloads/sweeps/gpu-capacity-smollm2.toml ;;
    *) echo "unknown part $part (bsat, tier0, capacity)" >&2; exit 2 ;;
  esac
  name=$(basename "$file" .toml)
  run "$X" sweep "$file" --dry-run --device cuda
  run "$X" sweep "$file" --engine-bin "$E" --device cuda --out "$OUT/$name"
done
run "$X" store ls
ls -laR "$OUT" | head -80
