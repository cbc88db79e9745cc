#!/usr/bin/env bash
# Issue 4's performance runs through `engine bench` (scheduler, engine loop
# and CUDA backend together) on synthetic presets made on the GPU machine:
#   engine/scripts/gpu_engine_bench.sh ENGINE_BIN REQUESTS_DIR OUT_DIR [CASES]
# REQUESTS_DIR comes from gpu_requests.py. CASES (default: all) picks among
#   smollm-batch1 smollm-offline qwen3-offline smollm-offline-eager
# Prints one "ENGINE_BENCH {...}" JSON line per case (output tok/s, ITL and
# TTFT percentiles, peak GPU memory, launches per decode step).
set -uo pipefail
ENGINE=${1:?usage: gpu_engine_bench.sh ENGINE_BIN REQUESTS_DIR OUT_DIR [CASES]}
REQ=${2:?}
OUT=${3:?}
CASES=${4:-smollm-batch1 smollm-offline qwen3-offline smollm-offline-eager}
MODELS=${DYNO_SYNTH_DIR:-/tmp/dyno-synth}
MAX_NUM_SEQS=${DYNO_MAX_NUM_SEQS:-256}
mkdir -p "$OUT" "$MODELS"
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
model() {
  [ -f "$MODELS/$1/config.json" ] || "$ENGINE" synth --preset "$1" --seed 0 --out "$MODELS/$1" >/dev/null
  echo "$MODELS/$1"
}
config() {  # name eager max_num_seqs
  cat > "$OUT/$1.toml" <<TOML
device = "cuda"
max_num_seqs = $3
max_num_batched_tokens = 8192
max_model_len = 1536
enforce_eager = $2
TOML
  echo "$OUT/$1.toml"
}
run() {  # case model requests config [extra args]
  local name=$1 m; m=$(model "$2")
  "$ENGINE" bench --model "$m" --config "$4" --requests "$3" --out "$OUT/$name.records.jsonl" "${@:5}" \
    > "$OUT/$name.log" 2> "$OUT/$name.err" || { echo "$name failed:"; tail -5 "$OUT/$name.err"; return; }
  python3 - "$name" "$OUT/$name.records.jsonl" "$OUT/$name.records.summary.json" <<'PY'
import json, sys
name, rec_path, sum_path = sys.argv[1:]
s = json.load(open(sum_path))
itl, ttft = [], []
for line in open(rec_path):
    r = json.loads(line)
    t = r.get("token_times_s") or []
    itl += [b - a for a, b in zip(t, t[1:])]
    if t and "arrival_s" in r:
        ttft.append(t[0] - r["arrival_s"])
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * (len(v) - 1)))] * 1e3 if v else None
print("ENGINE_BENCH " + json.dumps({
    "case": name, "device": s["device_name"], "requests": s["num_requests"],
    "output_tokens": s["output_tokens"], "duration_s": round(s["measured_duration_s"], 3),
    "output_tok_per_s": round(s["output_tokens"] / s["measured_duration_s"]),
    "itl_ms_p50": pct(itl, .5), "itl_ms_p90": pct(itl, .9), "itl_ms_p99": pct(itl, .99),
    "ttft_ms_p50": pct(ttft, .5), "peak_memory_bytes": s["peak_memory_bytes"],
    "launches_per_decode_step": s["launches_per_decode_step"], "num_kv_blocks": s["num_kv_blocks"],
    "max_num_seqs": json.loads(json.dumps(s["engine_config"]))["max_num_seqs"],
    "enforce_eager": s["engine_config"]["enforce_eager"]}))
PY
}
for c in $CASES; do
  case $c in
    smollm-batch1) run "$c" smollm2-135m "$REQ/batch1.jsonl" "$(config g1 false 1)" --max-concurrency 1 ;;
    smollm-batch1-eager) run "$c" smollm2-135m "$REQ/batch1.jsonl" "$(config e1 true 1)" --max-concurrency 1 ;;
    smollm-offline) run "$c" smollm2-135m "$REQ/offline-smollm2-135m.jsonl" "$(config g false "$MAX_NUM_SEQS")" ;;
    smollm-offline-eager) run "$c" smollm2-135m "$REQ/offline-smollm2-135m.jsonl" "$(config e true "$MAX_NUM_SEQS")" ;;
    qwen3-offline) run "$c" qwen3-0.6b "$REQ/offline-qwen3-0.6b.jsonl" "$(config g false "$MAX_NUM_SEQS")" ;;
    qwen3-offline-eager) run "$c" qwen3-0.6b "$REQ/offline-qwen3-0.6b.jsonl" "$(config e true "$MAX_NUM_SEQS")" ;;
  esac
done
