#!/usr/bin/env bash
# Where a decode step's GPU time goes (issue 15): Nsight Compute numbers per
# kernel against the ~4.3 TB/s the H200's HBM3e achieves, and the time
# between kernels. Prebuilt engine binary, no cargo; from the repository root:
#   engine/scripts/gpu_profile.sh ENGINE OUT [PRESET...]
# (default presets: smollm2-135m qwen3-0.6b). For each preset and each batch
# in DYNO_PROFILE_BATCHES (default "1 256"), with the preset's synthetic
# checkpoint (`engine synth --seed 0`, kept in $DYNO_GPU_MODELS, default
# /tmp/dyno-gpu-models):
#   1. `engine bench` closed loop at that batch: B requests, prompt 128
#      (batch 1) or 256 (larger batches), greedy, ignore_eos, long enough for
#      SKIP + TIMED decode steps at full batch. DYNO_PROFILE_REPEATS (3) runs
#      with CUDA graphs and as many eager (`enforce_eager`), no profiler: the
#      step log's pure decode steps SKIP .. SKIP+TIMED-1 are the measured
#      step time (median, min, max).
#   2. The same run under `ncu --profile-from-start off`, the engine told by
#      DYNO_PROFILE_DECODE_STEPS=SKIP:STEPS to bracket decode steps
#      SKIP .. SKIP+STEPS-1 with cuProfilerStart/Stop, so only those steps'
#      kernels are profiled (no load, capture, prefill or warm-up). Eager by
#      default (every kernel a plain launch; the same kernels as the graph at
#      batch 1 and at max_num_seqs); DYNO_PROFILE_GRAPHS=1 profiles the graph's
#      kernel nodes instead (--graph-profiling node). Clocks are not locked
#      (--clock-control none: the durations are the run's own) and caches are
#      flushed before each kernel (--cache-control all: a decode step streams
#      more weights than the 50 MB L2 holds, so each kernel finds its weights
#      in DRAM, as in the real loop).
#   3. ncu_summary.py: per kernel group (cuBLAS kernels as "cublas gemm") and
#      per decode step: launches, µs, DRAM bytes, GB/s, % of 4.3 TB/s; the
#      weights + KV floor at 4.3 TB/s against the measured step; the time
#      between kernels = measured step − sum of kernel durations; the decode
#      graph the timed steps replayed and its padded rows.
#   4. With DYNO_PROFILE_DETAIL_KERNEL=REGEX (e.g. "^attention$"): one more
#      run under `ncu --set full` of the first launch in the window whose
#      name matches, and ncu's own details page for it (occupancy, warp
#      stall reasons, memory and L2 traffic: why a kernel sits below the
#      bandwidth) in OUT/profile.md and the case's detail_*.txt.
# Knobs: DYNO_PROFILE_SKIP (16), DYNO_PROFILE_STEPS (4 profiled decode steps),
# DYNO_PROFILE_TIMED_STEPS (64), DYNO_PROFILE_REPEATS (3), NCU (path to ncu),
# DYNO_PROFILE_ENGINE_TOML (lines added to every run's engine.toml, e.g.
# "batch_invariant = true"), DYNO_PROFILE_DETAIL_KERNEL (above),
# DYNO_PROFILE_MAX_POOL_GIB (32: a case whose KV pool would be larger is
# refused before it runs, since ncu copies the pool for every replayed kernel).
# Writes OUT/profile.md (every case's tables) and OUT/gpu_profile.tar.gz
# (per case: profile_PRESET_bBATCH.md, the raw ncu CSV, the .ncu-rep report,
# the step logs and every log). Exits non-zero if ncu is missing or a case
# failed (the others still run).
set -uo pipefail
USAGE="usage: engine/scripts/gpu_profile.sh ENGINE OUT [PRESET...]"
[ $# -ge 2 ] || { echo "$USAGE" >&2; exit 2; }
if [ ! -f "$1" ] || [ ! -x "$1" ]; then
  echo "gpu_profile: $1 is not an executable file ($USAGE)" >&2; exit 2
fi
ENGINE=$(realpath "$1")
OUT=$(realpath -m "$2")
shift 2
PRESETS=${*:-smollm2-135m qwen3-0.6b}
HERE=$(cd "$(dirname "$0")" && pwd)
KERNELS_DIR=$(cd "$HERE/../kernels" && pwd) \
  || { echo "gpu_profile: engine/kernels not found next to $HERE" >&2; exit 2; }
BATCHES=${DYNO_PROFILE_BATCHES:-1 256}
SKIP=${DYNO_PROFILE_SKIP:-16}
STEPS=${DYNO_PROFILE_STEPS:-4}
TIMED=${DYNO_PROFILE_TIMED_STEPS:-64}
REPEATS=${DYNO_PROFILE_REPEATS:-3}
MODELS=${DYNO_GPU_MODELS:-/tmp/dyno-gpu-models}
MAX_POOL_GIB=${DYNO_PROFILE_MAX_POOL_GIB:-32}
for v in SKIP STEPS TIMED REPEATS MAX_POOL_GIB; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "gpu_profile: DYNO_PROFILE_$v=${!v} is not a whole number" >&2; exit 2; }
done
if [ "$STEPS" -lt 1 ] || [ "$TIMED" -lt 1 ] || [ "$REPEATS" -lt 1 ]; then
  echo "gpu_profile: DYNO_PROFILE_STEPS, _TIMED_STEPS and _REPEATS must be at least 1" >&2; exit 2
fi

# Nsight Compute: $NCU, else ncu on PATH, else the CUDA toolkit's.
NCU=${NCU:-$(command -v ncu || echo "${CUDA_HOME:-/usr/local/cuda}/bin/ncu")}
if [ ! -x "$NCU" ]; then
  echo "gpu_profile: Nsight Compute (ncu) not found: not on PATH, not at $NCU; install it or set NCU=/path/to/ncu" >&2
  exit 3
fi
command -v python3 >/dev/null || { echo "gpu_profile: python3 not found" >&2; exit 3; }
METRICS=$(python3 -c "import sys; sys.path.insert(0, sys.argv[1]); import ncu_summary; print(','.join(ncu_summary.METRICS))" "$HERE") \
  || { echo "gpu_profile: cannot read the metric list from $HERE/ncu_summary.py" >&2; exit 2; }

mkdir -p "$OUT" "$MODELS"
CASES="$OUT/gpu_profile"
rm -rf "$CASES" && mkdir -p "$CASES"
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
{
  echo "# Decode-step profiles (engine/scripts/gpu_profile.sh)"
  echo
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
  echo "- ncu: $("$NCU" --version 2>/dev/null | tail -1)"
  echo "- engine: $ENGINE ($(sha256sum "$ENGINE" | cut -c1-16))"
  echo "- profiled: decode steps $SKIP..$((SKIP + STEPS - 1)) of each run, $([ "${DYNO_PROFILE_GRAPHS:-0}" = 1 ] && echo "CUDA graph nodes" || echo "eager"), --clock-control none --cache-control all"
  [ -z "${DYNO_PROFILE_ENGINE_TOML:-}" ] || echo "- engine.toml adds: \`${DYNO_PROFILE_ENGINE_TOML//$'\n'/; }\`"
  echo "- timed without the profiler: decode steps $SKIP..$((SKIP + TIMED - 1)) of $REPEATS runs each with graphs and eager"
  echo
} > "$OUT/profile.md"

failed=""
fail() {  # message case: said on stderr and in profile.md
  echo "gpu_profile: $1" >&2
  printf '\n**failed**: %s\n' "$1" >> "$OUT/profile.md"
  failed="$failed $2"
}

# requests.jsonl: B greedy requests, prompt P (seeded ids below the vocab), N tokens out.
write_requests() {  # model_dir batch prompt output path
  python3 - "$@" <<'PY'
import json, random, sys
model, batch, prompt, output, path = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
vocab = json.load(open(f"{model}/config.json"))["vocab_size"]
rng = random.Random(15)
with open(path, "w") as f:
    for i in range(batch):
        f.write(json.dumps({"id": i, "arrival_s": 0.0, "warmup": False,
                            "prompt_token_ids": [rng.randrange(vocab) for _ in range(prompt)],
                            "sampling": {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": i,
                                         "max_tokens": output, "ignore_eos": True,
                                         "stop_token_ids": []}}) + "\n")
PY
}

# engine.toml: the engine's defaults (max_num_seqs derived from the GPU, chunked prefill,
# the model's max_model_len) but a KV pool sized to the run, so that ncu's
# kernel replay saves and restores megabytes, not 100 GB.
write_config() {  # path eager num_kv_blocks
  printf 'device = "cuda"\nenforce_eager = %s\nnum_kv_blocks = %s\n%s\n' "$2" "$3" \
    "${DYNO_PROFILE_ENGINE_TOML:-}" > "$1"
}

# The case's `engine bench` (model $d, case folder $w, batch $b), optionally
# under a profiler command given before `--`.
bench() {  # config_name run_name [PROFILER... --]
  local cfg=$1 run=$2 profiler=()
  shift 2
  if [ $# -gt 0 ]; then
    while [ "$1" != -- ]; do profiler+=("$1"); shift; done
  fi
  "${profiler[@]}" "$ENGINE" bench --model "$d" --config "$w/$cfg.toml" --requests "$w/requests.jsonl" \
    --out "$w/$run.records.jsonl" --step-log "$w/$run.steps.jsonl" \
    --summary "$w/$run.summary.json" --max-concurrency "$b" > "$w/$run.log" 2>&1
}

for p in $PRESETS; do
  d="$MODELS/$p"
  if [ ! -f "$d/config.json" ]; then
    "$ENGINE" synth --preset "$p" --seed 0 --out "$d" > "$CASES/synth-$p.log" 2>&1 \
      || { fail "synth $p failed: $(tail -1 "$CASES/synth-$p.log")" "$p"; continue; }
  fi
  for b in $BATCHES; do
    case_name="${p}_b${b}"
    w="$CASES/$case_name"
    mkdir -p "$w"
    echo "== $p batch $b"
    case_start=$SECONDS
    prompt=$([ "$b" = 1 ] && echo 128 || echo 256)
    # Chunked prefill admits the batch over ceil(b·prompt/8192) steps; the
    # sequences prefilled first finish that many steps early, so the output
    # covers SKIP + TIMED steps at full batch plus that slack.
    slack=$(( (b * prompt + 8191) / 8192 + 8 ))
    output=$(( SKIP + (TIMED > STEPS ? TIMED : STEPS) + slack ))
    blocks=$(( b * ((prompt + output + 15) / 16) + 16 ))
    # ncu saves and restores the KV pool for every replayed kernel: a pool
    # of tens of GiB makes the profile take hours, so refuse it up front.
    too_big=$(python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import ncu_summary as s
print(s.replay_pool_problem(sys.argv[2], int(sys.argv[3]), 16, int(sys.argv[4])) or "")' \
      "$HERE" "$d" "$blocks" "$MAX_POOL_GIB" 2>&1) \
      || { fail "$case_name: sizing the KV pool failed: $too_big" "$case_name"; continue; }
    [ -z "$too_big" ] || { fail "$case_name: $too_big" "$case_name"; continue; }
    write_requests "$d" "$b" "$prompt" "$output" "$w/requests.jsonl" \
      || { fail "$case_name: writing requests failed" "$case_name"; continue; }
    write_config "$w/graphs.toml" false "$blocks"
    write_config "$w/eager.toml" true "$blocks"
    step_logs=()
    ok=1
    for mode in graphs eager; do
      for r in $(seq 1 "$REPEATS"); do
        if bench "$mode" "$mode-$r"; then
          step_logs+=(--step-log "$mode=$w/$mode-$r.steps.jsonl")
          # The graph the timed steps replayed, and its padded rows.
          [ "$mode" = graphs ] && step_logs+=(--graph-log "$w/$mode-$r.log")
        else
          fail "$case_name: engine bench ($mode, run $r) failed: $(tail -1 "$w/$mode-$r.log")" "$case_name"
          ok=0
        fi
      done
    done
    [ "$ok" = 1 ] || continue
    profiled=$([ "${DYNO_PROFILE_GRAPHS:-0}" = 1 ] && echo graphs || echo eager)
    rm -f "$w/ncu.ncu-rep"
    DYNO_PROFILE_DECODE_STEPS="$SKIP:$STEPS" bench "$profiled" ncu \
      "$NCU" --target-processes all --profile-from-start off --metrics "$METRICS" \
      --clock-control none --cache-control all --graph-profiling node \
      --export "$w/ncu" --force-overwrite --
    rc=$?
    if grep -q "ERR_NVGPUCTRPERM" "$w/ncu.log"; then
      fail "$case_name: ncu may not read the GPU's performance counters (ERR_NVGPUCTRPERM): run as root or allow profiling (NVreg_RestrictProfilingToAdminUsers=0)" "$case_name"
      continue
    fi
    if [ ! -s "$w/ncu.ncu-rep" ]; then
      fail "$case_name: ncu wrote no report (exit $rc; $(grep -m1 -E "==(ERROR|WARNING)==" "$w/ncu.log")). If it profiled no kernel, the engine binary predates DYNO_PROFILE_DECODE_STEPS (engine/src/backend/cuda/profile_window.rs): rebuild it. Log: gpu_profile/$case_name/ncu.log" "$case_name"
      continue
    fi
    [ "$rc" = 0 ] || echo "gpu_profile: $case_name: ncu exited $rc but wrote a report; continuing (see ncu.log)" >&2
    csv="$w/ncu_${case_name}.csv"
    "$NCU" --import "$w/ncu.ncu-rep" --csv --page raw --print-units base > "$csv" 2> "$w/ncu-import.log" \
      || { fail "$case_name: ncu --import failed: $(tail -1 "$w/ncu-import.log")" "$case_name"; continue; }
    # Mean context in the window: decode step k attends over prompt + k + 1 tokens.
    context=$(( prompt + SKIP + (STEPS + 1) / 2 ))
    python3 "$HERE/ncu_summary.py" --csv "$csv" --steps "$STEPS" --batch "$b" --context "$context" \
      --model "$d" "${step_logs[@]}" --time-window "$SKIP:$TIMED" --kernels-dir "$KERNELS_DIR" \
      --title "$p, batch $b, prompt $prompt: decode steps $SKIP..$((SKIP + STEPS - 1)) ($profiled under ncu)" \
      --out "$w/profile_${case_name}.md" 2> "$w/summary.log" \
      || { fail "$case_name: ncu_summary.py failed: $(tail -1 "$w/summary.log")" "$case_name"; continue; }
    cat "$w/summary.log" >&2
    tee -a "$OUT/profile.md" < "$w/profile_${case_name}.md"
    if [ -n "${DYNO_PROFILE_DETAIL_KERNEL:-}" ]; then
      detail="$w/detail_${case_name}.txt"
      rm -f "$w/ncu-detail.ncu-rep"
      DYNO_PROFILE_DECODE_STEPS="$SKIP:$STEPS" bench "$profiled" ncu-detail \
        "$NCU" --target-processes all --profile-from-start off --set full \
        --kernel-name "regex:$DYNO_PROFILE_DETAIL_KERNEL" --launch-count 1 \
        --clock-control none --cache-control all --graph-profiling node \
        --export "$w/ncu-detail" --force-overwrite --
      if [ -s "$w/ncu-detail.ncu-rep" ] \
        && "$NCU" --import "$w/ncu-detail.ncu-rep" --page details > "$detail" 2>> "$w/ncu-import.log" \
        && [ -s "$detail" ]; then
        { printf '\n### Nsight Compute details: the first launch matching `%s` (--set full)\n\n```\n' \
            "$DYNO_PROFILE_DETAIL_KERNEL"
          cat "$detail"
          printf '```\n'; } >> "$OUT/profile.md"
      else
        fail "$case_name: no ncu details for a kernel matching '$DYNO_PROFILE_DETAIL_KERNEL' (no such launch in decode steps $SKIP..$((SKIP + STEPS - 1))?); log: gpu_profile/$case_name/ncu-detail.log" "$case_name"
      fi
    fi
    # Keep what explains the numbers; the records are large and not needed.
    rm -f "$w"/*.records.jsonl
    echo "($case_name took $((SECONDS - case_start)) s)"
  done
done

tar -czf "$OUT/gpu_profile.tar.gz" -C "$OUT" gpu_profile && rm -rf "$CASES"
if [ -n "$failed" ]; then
  echo "FAILED:$failed (details in $OUT/gpu_profile.tar.gz)" | tee -a "$OUT/profile.md"
  exit 1
fi
echo "wrote $OUT/profile.md and $OUT/gpu_profile.tar.gz"
