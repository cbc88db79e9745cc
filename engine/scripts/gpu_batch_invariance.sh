#!/usr/bin/env bash
# The batch-invariance GPU tests (engine/tests/cuda_batch_invariance.rs) on a
# machine with an NVIDIA GPU and CUDA. Usage (from the repo root):
#   engine/scripts/gpu_batch_invariance.sh TEST_BINARY [OUT_DIR]
# TEST_BINARY is the test executable built by
#   cargo test --release -p engine --test cuda_batch_invariance --no-run
# Runs, one at a time: the pinned cuBLASLt GEMMs alone (smollm2-135m and
# qwen3-0.6b weight shapes, rows 1..8192 against the largest call, bit for
# bit); one prompt's logits alone / in a batch / chunked and a decode token in
# every graph bucket, eager and with graphs, bit for bit; and the engine's
# greedy outputs of 64 requests alone / together / chunked / preempted on
# tiny, tiny-qwen3 and smollm2-135m checkpoints, graphs on and off.
# Runs everything twice: with the knob's products through pinned cuBLASLt
# (the default) and through the small-batch kernels in tiles
# (DYNO_INVARIANT_PRODUCTS=gemv).
# Then the logits test once more at the finest splits the knob allows
# (DYNO_CUDA_SPLIT_KEYS=64: 5 splits of its 300-token context, against 1 at
# the default 512), so the in-order merge of many splits stays covered.
# And the logits and engine tests with DYNO_CUDA_INVARIANT_ONE_BLOCK=256
# and DYNO_CUDA_SPLIT_KEYS=256: attention takes one block per query
# (attention_units, folding the units itself; attention_units_prefill in
# prefill steps) from 256 blocks per split on instead of from 8 per SM, so
# that a 300-token prefill takes that path, folding 2 units, and 117-token
# chunks and small decode batches the split path, and their bits are
# compared.
# Prints the PASS/FAIL lines and one verdict for all; full logs in OUT_DIR
# (default /tmp/dyno-gpu-batch-invariance): tests-cublaslt.log,
# tests-gemv.log, tests-splits64.log, tests-oneblock.log.
set -uo pipefail
USAGE="usage: gpu_batch_invariance.sh TEST_BINARY [OUT_DIR]"
BIN=${1:?$USAGE}
OUT=${2:-/tmp/dyno-gpu-batch-invariance}
[ -x "$BIN" ] || { echo "gpu_batch_invariance: $BIN is not an executable file ($USAGE)"; exit 2; }
mkdir -p "$OUT"
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
failed=""
# run NAME ENV... -- TEST_ARGS...: one pass of the binary, logged to
# tests-NAME.log; a pass without "test result: ok" fails the verdict.
run() {
  local name=$1 log="$OUT/tests-$1.log" envs=()
  shift
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  echo "== ${envs[*]}"
  env "${envs[@]}" "$BIN" --ignored --nocapture --test-threads 1 "$@" 2>&1 | tee "$log" \
    | grep -E "GEMM|identical|batch_invariant=false|decode token|rel L2|pinned|panicked|test |test result"
  if ! grep -q "test result: ok" "$log" || grep -q "FAILED\|panicked" "$log"; then
    failed="$failed $name"
  fi
}
for products in cublaslt gemv; do
  run "$products" DYNO_INVARIANT_PRODUCTS=$products --
done
run splits64 DYNO_CUDA_SPLIT_KEYS=64 -- logits_are_bit_identical_in_any_batch
run oneblock DYNO_CUDA_INVARIANT_ONE_BLOCK=256 DYNO_CUDA_SPLIT_KEYS=256 -- \
  logits_are_bit_identical_in_any_batch \
  engine_outputs_are_identical_alone_and_in_any_batch
if [ -z "$failed" ]; then
  echo "gpu_batch_invariance: PASS"; exit 0
fi
echo "gpu_batch_invariance: FAIL ($failed; see $OUT/tests-*.log)"; exit 1
