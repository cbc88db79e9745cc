#!/usr/bin/env bash
# Issue 14 on the GPU machine: every preset shape through the pipeline, a
# batch-1 and an offline-throughput workload each (workloads/specs/
# presets-batch1.toml, presets-offline.toml). Prebuilt binaries, no cargo:
#   scripts/gpu_presets.sh XTASK_BINARY ENGINE_BINARY [OUT_DIR] [PRESET...]
# (from the repository root). Each preset's checkpoint is synthesized into
# $DYNO_GPU_MODELS (default /tmp/dyno-gpu-models) and deleted after its run
# unless DYNO_KEEP_MODELS=1 (the 7-8B shapes are ~16 GB each). Writes
# OUT_DIR/presets.md (one row per preset and workload: TPOT p50 and output
# tok/s, mean ± stdev over the trials, run id) and each run's JSON.
set -uo pipefail
USAGE="usage: gpu_presets.sh XTASK ENGINE [OUT_DIR] [PRESET...]"
XTASK=$(realpath "${1:?$USAGE}")
ENGINE=$(realpath "${2:?$USAGE}")
OUT=$(realpath -m "${3:-/tmp/dyno-presets}")
shift 3 2>/dev/null || shift $#
PRESETS=${*:-smollm2-135m smollm2-360m qwen3-0.6b qwen2.5-0.5b llama-3.2-1b qwen3-1.7b smollm2-1.7b llama-3.2-3b qwen3-4b qwen2.5-7b qwen3-8b llama-3.1-8b}
MODELS=${DYNO_GPU_MODELS:-/tmp/dyno-gpu-models}
TRIALS=${DYNO_PRESET_TRIALS:-2}
mkdir -p "$OUT" "$MODELS"
export DYNO_ROOT=$PWD
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
failed=""
for p in $PRESETS; do
  d="$MODELS/$p"
  [ -f "$d/config.json" ] || "$ENGINE" synth --preset "$p" --seed 0 --out "$d" > "$OUT/synth-$p.log" 2>&1 \
    || { echo "synth $p failed: $(tail -1 "$OUT/synth-$p.log")"; failed="$failed $p"; continue; }
  echo "== $p"
  "$XTASK" bench --engine-bin "$ENGINE" --engine-profile release --device cuda --model "$d" \
    --workload presets-batch1 --workload presets-offline --trials "$TRIALS" \
    --results "$OUT/results" --json "$OUT/run-$p.json" > "$OUT/bench-$p.log" 2>&1 \
    || failed="$failed $p"
  grep -E "stored run|error|Error" "$OUT/bench-$p.log" | head -5
  [ "${DYNO_KEEP_MODELS:-0}" = 1 ] || rm -rf "$d"
done
python3 - "$OUT" <<'PY'
import json, glob, os, re, statistics, sys
out = sys.argv[1]
rows = ["| preset | workload | TPOT p50 (ms) | output tok/s | trials | run |", "|---|---|---|---|---|---|"]
for path in sorted(glob.glob(os.path.join(out, "run-*.json"))):
    preset = os.path.basename(path)[4:-5]
    runs = json.load(open(path))
    runs = runs if isinstance(runs, list) else [runs]
    log = open(os.path.join(out, f"bench-{preset}.log")).read()
    ids = re.findall(r"stored run ([0-9a-f]+)", log)
    for run in runs:
        rid = ids[0] if ids else "?"
        for w in run.get("workloads", []):
            trials = [t for t in w.get("trials", []) if t.get("metrics")]
            def stat(key):
                v = [t["metrics"][key] for t in trials if key in t["metrics"]]
                if not v: return "-"
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                return f"{statistics.mean(v):.4g} ± {sd:.2g}"
            rows.append(f"| {preset} | {w.get('name')} | {stat('p50_tpot_ms')} | {stat('output_throughput')} | {len(trials)} | {str(rid)[:16]} |")
open(os.path.join(out, "presets.md"), "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
[ -z "$failed" ] || { echo "FAILED:$failed"; exit 1; }
