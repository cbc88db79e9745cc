#!/usr/bin/env bash
# Issue 9's measurement on the GPU machine (no cargo there): prebuilt
# `xtask` and `engine` binaries, the store in $DYNO_RESULTS (kept between
# calls while the machine is warm), everything brought back as one tarball.
#
#   scripts/gpu_verdicts.sh history XTASK ENGINE OUT   # 3 back-to-back pr runs, each promoted
#   scripts/gpu_verdicts.sh judge   XTASK ENGINE OUT   # 1 more pr run, judged against that history;
#                                                      # 2 interleaved A/A sessions; PDL off as side B
#
# Run from the repository root: runs go to its results/ (kept between calls
# while the machine is warm), baselines to its baselines/. Set
# DYNO_GIT_COMMIT to the commit the binaries were built from.
set -uo pipefail
STEP=${1:?usage: gpu_verdicts.sh history|judge XTASK ENGINE OUT}
X=${2:?xtask binary}
E=${3:?engine binary}
OUT=${4:?output folder}
LOG="$OUT/gpu_verdicts-$STEP.log"
mkdir -p "$OUT"
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
run() { echo "+ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; echo "exit ${PIPESTATUS[0]}" | tee -a "$LOG"; }
case "$STEP" in
  history)
    for i in 1 2 3; do
      run "$X" bench --suite pr --engine-bin "$E"
      run "$X" baseline promote latest
    done
    ;;
  judge)
    run "$X" bench --suite pr --engine-bin "$E"
    for i in 1 2; do
      run "$X" bench --workload pr-smollm2-batch1 --workload pr-smollm2-offline --trials 4 \
        --engine-bin "$E" --a-engine-bin "$E" --a-label "A/A session $i, side A" --b-label "A/A session $i, side B" \
        --ab-seed "$i"
    done
    run "$X" bench --workload pr-smollm2-batch1 --workload pr-smollm2-offline --trials 5 \
      --engine-bin "$E" --ab --b-env DYNO_CUDA_PDL=0 --a-label "PDL on" --b-label "PDL off (DYNO_CUDA_PDL=0)" \
      --ab-seed 9
    run "$X" store ls || run "$X" store ls
    ;;
esac
# The promoted baselines come back (the raw records stay: too large).
tar czf "$OUT/baselines-$STEP.tgz" baselines
ls -la "$OUT"
