#!/usr/bin/env bash
# Issue 14 part 4: prefix caching on and off on the GPU machine (no cargo
# there): prebuilt `xtask` and `engine` binaries, results and reports into
# OUT.
#
#   scripts/gpu_prefix_cache.sh XTASK ENGINE OUT [tests] [ab] [sweep]   # default: all
#
#   tests  the GPU tests of engine/tests/cuda_prefix_caching.rs (prefill on
#          blocks written in an earlier step and in the same step, large and
#          small-batch paths, against the f32 reference; the engine's
#          outputs with caching on and off), from the test binary named by
#          PREFIX_TEST_BIN (built here with `cargo test --release -p engine
#          --test cuda_prefix_caching --no-run`); skipped when unset (~10 s)
#   ab     interleaved A/B on nightly-qwen3-0.6b-shared-prefix (512 requests,
#          8 groups sharing 512 tokens, prompt 576-768 / output 128,
#          offline): side A enable_prefix_caching=false, side B true, 3
#          paired trials each; paired verdicts on TTFT and throughput,
#          outputs compared by hash (~2-3 min on an H200)
#   sweep  workloads/sweeps/gpu-prefix-caching.toml: on/off x closed loop
#          at 1 (32 requests), 16 and 128 in flight (256 requests), 2
#          trials a point (~4 min); CSV/Markdown/HTML reports
#
# Run from the repository root. The sweep resumes when re-run with the same
# results/ (e.g. after a 10-minute command limit). Set DYNO_GIT_COMMIT to the
# commit the binaries were built from. Outputs must be identical on both
# sides: the A/B report says "outputs identical" (a change of output is
# flagged on its own, apart from speed).
set -uo pipefail
X=${1:?usage: gpu_prefix_cache.sh XTASK ENGINE OUT [tests] [ab] [sweep]}
E=${2:?engine binary}
OUT=${3:?output folder}
shift 3
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(tests ab sweep)
mkdir -p "$OUT"
LOG="$OUT/gpu_prefix_cache.log"
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
run() { echo "+ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; echo "exit ${PIPESTATUS[0]}" | tee -a "$LOG"; }
"$E" info --json > "$OUT/engine-info.json" 2>&1
for part in "${PARTS[@]}"; do
  case "$part" in
    tests)
      if [ -n "${PREFIX_TEST_BIN:-}" ]; then
        run "$PREFIX_TEST_BIN" --ignored --nocapture --test-threads 1
      else
        echo "tests: PREFIX_TEST_BIN not set, skipped" | tee -a "$LOG"
      fi
      ;;
    ab)
      run "$X" bench --engine-bin "$E" --device cuda \
        --workload nightly-qwen3-0.6b-shared-prefix --trials 3 \
        --ab --a-set enable_prefix_caching=false --b-set enable_prefix_caching=true \
        --a-label cache-off --b-label cache-on \
        --json "$OUT/ab-shared-prefix.json"
      ;;
    sweep)
      file=workloads/sweeps/gpu-prefix-caching.toml
      run "$X" sweep "$file" --dry-run --device cuda
      run "$X" sweep "$file" --engine-bin "$E" --device cuda --out "$OUT/gpu-prefix-caching"
      ;;
    *) echo "unknown part $part (tests, ab, sweep)" >&2; exit 2 ;;
  esac
done
run "$X" store ls
ls -laR "$OUT" | head -80
