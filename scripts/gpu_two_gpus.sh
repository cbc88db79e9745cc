#!/usr/bin/env bash
# Issue 13 acceptance on a 2-GPU machine (kind nvidia-h200-x2): a 4-point
# sweep run 2 at a time on the 2 GPUs (--launcher local) against the same
# points run one at a time on one GPU. Prebuilt binaries, no cargo:
#   scripts/gpu_two_gpus.sh XTASK_BINARY ENGINE_BINARY [OUT_DIR]
# (from the repository root; build with
#  `cargo build --release -p xtask -p engine`, carry target/release/{xtask,engine}).
# Writes OUT_DIR/{two-gpus,one-gpu}.log, the two stores, and
# OUT_DIR/compare.md + compare.json: per point, output tok/s mean ± stdev on
# both sides, the GPU UUID each ran on, and the two wall times.
set -euo pipefail
XTASK=$(realpath "${1:?usage: gpu_two_gpus.sh XTASK ENGINE [OUT_DIR]}")
ENGINE=$(realpath "${2:?usage: gpu_two_gpus.sh XTASK ENGINE [OUT_DIR]}")
OUT=$(realpath -m "${3:-${OUT:-/tmp/dyno-two-gpus}}")
mkdir -p "$OUT"
export DYNO_ROOT=$PWD
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi -L | tee "$OUT/gpus.txt"
[ "$(nvidia-smi -L | wc -l)" -ge 2 ] || { echo "needs 2 GPUs" >&2; exit 2; }

SWEEP="$OUT/two-gpus.toml"
# TRIALS and REQUESTS (defaults 3 and 1000) shrink the sweep to fit a short
# lease.
TRIALS=${TRIALS:-3}
REQUESTS=${REQUESTS:-1000}
cat >"$SWEEP" <<TOML
name = "two-gpus"
description = "4 engine settings on smollm2-135m, offline $REQUESTS x (256 -> 512): the local launcher on 2 GPUs vs 1"
trials = $TRIALS
device = "cuda"

[fixed]
model = "smollm2-135m"
seed = 13
requests = $REQUESTS
warmup_requests = 16
prompt_len = 256
output_len = 512
ignore_eos = true

[[experiment]]
name = "batching"
max_num_seqs = [256, 512]
max_num_batched_tokens = [8192, 16384]
TOML

run() {  # run NAME CUDA_VISIBLE_DEVICES
    local name=$1 visible=$2 start end
    start=$(date +%s.%N)
    CUDA_VISIBLE_DEVICES=$visible "$XTASK" sweep "$SWEEP" --engine-bin "$ENGINE" --device cuda \
        --results "$OUT/store-$name" --out "$OUT/report-$name" 2>&1 | tee "$OUT/$name.log"
    end=$(date +%s.%N)
    awk -v n="$name" -v s="$start" -v e="$end" 'BEGIN { printf "%s %.3f\n", n, e - s }' >>"$OUT/wall.txt"
}
rm -f "$OUT/wall.txt"
run two-gpus 0,1
run one-gpu 0

python3 "$(dirname "$0")/compare_two_gpus.py" "$OUT"
