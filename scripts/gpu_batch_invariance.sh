#!/usr/bin/env bash
# Issue 15, batch invariance (`batch_invariant = true`) on the GPU machine
# (no cargo there): prebuilt `xtask` and `engine` binaries, results into OUT.
#
#   scripts/gpu_batch_invariance.sh XTASK ENGINE OUT [tests] [hashes] [cost] [splits]
#   (default: tests hashes cost)
#
#   tests   the GPU tests of engine/tests/cuda_batch_invariance.rs through
#           engine/scripts/gpu_batch_invariance.sh, from the test binary named
#           by BI_TEST_BIN (built with `cargo test --release -p engine --test
#           cuda_batch_invariance --no-run`); skipped when unset (~1-2 min)
#   hashes  the `pr` serving workload (pr-smollm2-serving: Poisson 16 req/s,
#           256 requests, greedy): an interleaved A/B session, side A
#           batch_invariant=false, side B true, 3 trials each; then a second
#           session with the knob on on both sides (2 + 2 trials). Every
#           trial's output hash is listed: with the knob on there must be one
#           hash across all 7 trials of both sessions (~4 min)
#   cost    the knob's throughput cost, interleaved A/B (A off, B on), 2
#           trials a side: smollm2-135m offline 1,000 x (256 -> 1,024) and
#           batch 1 (pr-smollm2-batch1), then qwen3-0.6b offline and batch 1
#           (presets-batch1) (~6-7 min; run `cost` on its own if the command
#           limit is 10 minutes; `cost-smollm2` and `cost-qwen3` run one half)
#   gemv    not in the default: the knob with DYNO_INVARIANT_PRODUCTS=gemv
#           (every step through the small-batch kernels in tiles of 8
#           tokens): smollm2 offline and batch 1 against the knob off, then
#           pr-smollm2-serving with it on both sides, 2 trials a side (~4 min)
#   splits  not in the default: the knob on on both sides, side B with
#           other attention splits (DYNO_CUDA_SPLIT_KEYS=$BI_SPLIT_KEYS,
#           default 256; the engine's default is 512, and the least it
#           accepts is max_model_len / 32 rounded up to 64, i.e. 64 for
#           these workloads' max_model_len 1536), smollm2 offline and
#           batch 1, 2 trials a side (~3 min)
#
# Run from the repository root. Writes OUT/summary.txt (hashes per side and
# session; per workload and side: output tok/s and TPOT p50, mean +- stdev
# over the trials, and the relative change B vs A), each session's JSON, and
# the logs. Set DYNO_GIT_COMMIT to the commit the binaries were built from.
set -uo pipefail
USAGE="usage: gpu_batch_invariance.sh XTASK ENGINE OUT [tests] [hashes] [cost] [splits]"
X=$(realpath "${1:?$USAGE}")
E=$(realpath "${2:?$USAGE}")
OUT=$(realpath -m "${3:?$USAGE}")
shift 3
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(tests hashes cost)
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
LOG="$OUT/gpu_batch_invariance.log"
export DYNO_ROOT=$PWD
export LD_LIBRARY_PATH=${CUDA_HOME:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}
run() { echo "+ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; echo "exit ${PIPESTATUS[0]}" | tee -a "$LOG"; }
"$E" info --json > "$OUT/engine-info.json" 2>&1
# One interleaved A/B session; both sides' run records are fetched from the
# store into OUT/NAME-A.json and OUT/NAME-B.json (`--json` holds side B only).
ab() {  # ab NAME A_VALUE B_VALUE TRIALS XTASK_ARGS...
    local name=$1 a=$2 b=$3 trials=$4 ids
    shift 4
    run "$X" bench --engine-bin "$E" --engine-profile release --device cuda \
        --results "$OUT/results" --trials "$trials" \
        --ab --a-set "batch_invariant=$a" --b-set "batch_invariant=$b" \
        --a-label "batch_invariant=$a" --b-label "batch_invariant=$b" \
        "$@" | tee "$OUT/$name.log"
    ids=$(grep -oE "stored side A as run [0-9a-f]+, side B as run [0-9a-f]+" "$OUT/$name.log" | tail -1)
    [ -n "$ids" ] || { echo "$name: no stored runs (see $OUT/$name.log)" | tee -a "$LOG"; return; }
    read -r _ _ _ _ _ a_id _ _ _ _ b_id <<<"$ids"
    "$X" store --results "$OUT/results" show "${a_id%,}" --json > "$OUT/$name-A.json"
    "$X" store --results "$OUT/results" show "$b_id" --json > "$OUT/$name-B.json"
}
for part in "${PARTS[@]}"; do
  case "$part" in
    tests)
      if [ -n "${BI_TEST_BIN:-}" ]; then
        run "$HERE/../engine/scripts/gpu_batch_invariance.sh" "$BI_TEST_BIN" "$OUT/tests"
      else
        echo "tests: BI_TEST_BIN not set, skipped" | tee -a "$LOG"
      fi
      ;;
    hashes)
      ab hashes-off-on false true 3 --workload pr-smollm2-serving
      ab hashes-on-on true true 2 --workload pr-smollm2-serving
      ;;
    cost | cost-smollm2 | cost-qwen3)
      [ "$part" = cost-qwen3 ] ||
        ab cost-smollm2 false true 2 --workload nightly-smollm2-throughput --workload pr-smollm2-batch1
      [ "$part" = cost-smollm2 ] ||
        ab cost-qwen3 false true 2 --model qwen3-0.6b \
          --workload nightly-qwen3-0.6b-throughput --workload presets-batch1
      ;;
    gemv)
      # The knob's products through the small-batch kernels in tiles
      # (DYNO_INVARIANT_PRODUCTS=gemv): its cost against the knob off, then
      # the serving workload's hash with it on both sides.
      ab cost-gemv-smollm2 false true 2 --b-env DYNO_INVARIANT_PRODUCTS=gemv \
        --workload nightly-smollm2-throughput --workload pr-smollm2-batch1
      ab hashes-gemv true true 2 --a-env DYNO_INVARIANT_PRODUCTS=gemv \
        --b-env DYNO_INVARIANT_PRODUCTS=gemv --workload pr-smollm2-serving
      ;;
    splits)
      ab cost-splitkeys-smollm2 true true 2 --b-env "DYNO_CUDA_SPLIT_KEYS=${BI_SPLIT_KEYS:-256}" \
        --workload nightly-smollm2-throughput --workload pr-smollm2-batch1
      ;;
    *) echo "unknown part $part (tests, hashes, cost, cost-smollm2, cost-qwen3, gemv, splits)" >&2; exit 2 ;;
  esac
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import glob, json, os, statistics, sys
out = sys.argv[1]

def runs(pattern):
    """(session, run record) for every OUT/SESSION-{A,B}.json matching."""
    for path in sorted(glob.glob(os.path.join(out, pattern))):
        yield os.path.basename(path)[:-7], json.load(open(path))["run"]

def knob(run):
    inter = run.get("interleaved") or {}
    side = inter.get("side", "?")
    value = (inter.get("engine_overrides") or {}).get("batch_invariant", "unset")
    return side, f"batch_invariant={value}"

def stat(values):
    if not values:
        return "-", None
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:,.4g} +- {sd:,.2g} (n={len(values)})", mean

print("== output hashes (pr-smollm2-serving)")
# The two ways of computing the products give different (each invariant)
# numerics, so their hashes are judged apart.
on_hashes = {}
for session, run in runs("hashes-*-[AB].json"):
    side, setting = knob(run)
    products = "gemv" if session.startswith("hashes-gemv") else "cublaslt"
    for w in run.get("workloads", []):
        hashes = [t.get("output_hash") or "none" for t in w.get("trials", [])]
        distinct = sorted(set(hashes))
        if setting == "batch_invariant=true":
            on_hashes.setdefault(products, set()).update(hashes)
        print(f"{session} side {side} {setting} {w.get('name')}: {len(hashes)} trials, "
              f"{len(distinct)} distinct hash(es): {', '.join(h[:16] for h in distinct)}")
for products, hashes in sorted(on_hashes.items()):
    verdict = "PASS" if len(hashes) == 1 and "none" not in hashes else "FAIL"
    print(f"batch_invariant=true, products {products}, all trials of all sessions: "
          f"{len(hashes)} distinct hash(es): {verdict}")

print()
print("== throughput cost (B vs A; cost-splitkeys: both on, B with DYNO_CUDA_SPLIT_KEYS)")
table = {}
for session, run in runs("cost-*-[AB].json"):
    side, setting = knob(run)
    for w in run.get("workloads", []):
        ok = [t for t in w.get("trials", []) if t.get("metrics")]
        for metric in ("output_throughput", "p50_tpot_ms"):
            vals = [t["metrics"][metric] for t in ok if metric in t["metrics"]]
            table.setdefault((session, w.get("name"), metric), {})[side] = (setting, vals)
for (session, name, metric), sides in sorted(table.items()):
    line = [f"{session} {name} {metric}:"]
    means = {}
    for side in sorted(sides):
        setting, vals = sides[side]
        text, mean = stat(vals)
        means[side] = mean
        line.append(f"{side} ({setting}) {text}")
    if means.get("A") and means.get("B") is not None:
        line.append(f"B vs A {100.0 * (means['B'] / means['A'] - 1.0):+.2f}%")
    print("  ".join(line))

print()
print("== the pipeline's paired verdicts (B vs A), per session")
for path in sorted(glob.glob(os.path.join(out, "*.log"))):
    name = os.path.basename(path)[:-4]
    if not name.startswith(("hashes-", "cost-")):
        continue
    for line in open(path, errors="replace"):
        if "regressed ·" in line or line.strip().startswith("outputs ") or "candidate run" in line:
            print(f"{name}: {line.strip()}")
PY
