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
cat >"$SWEEP" <<'TOML'
name = "two-gpus"
description = "4 engine settings on smollm2-135m, offline 1000 x (256 -> 512): the local launcher on 2 GPUs vs 1"
trials = 3
device = "cuda"

[fixed]
model = "smollm2-135m"
seed = 13
requests = 1000
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

python3 - "$OUT" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
def store_points(name):
    root = f"{out}/store-{name}"
    ledger = f"{root}/sweeps/two-gpus/cuda"
    points = {}
    for f in sorted(os.listdir(ledger)):
        if not f.endswith(".json"):
            continue
        rec = json.load(open(f"{ledger}/{f}"))
        run_id = rec.get("run_id")
        tps, gpu = [], None
        if run_id:
            run = json.load(open(f"{root}/objects/{run_id[:2]}/{run_id[2:]}"))
            gpus = run["fingerprint"]["gpus"]
            gpu = gpus[0]["uuid"] if gpus else None
            for w in run["workloads"]:
                for t in w["trials"]:
                    if t["status"]["kind"] == "ok":
                        tps.append(t["metrics"]["output_throughput"])
        points[rec["point_id"]] = dict(label=rec["label"], state=rec["status"]["state"], tps=tps, gpu=gpu, wall_s=rec["wall_s"])
    return points
walls = dict(l.split() for l in open(f"{out}/wall.txt"))
two, one = store_points("two-gpus"), store_points("one-gpu")
rows, lines = [], ["| point | label | 2-GPU run: tok/s (GPU) | 1-GPU run: tok/s | diff | noise (2 sd of the difference) |", "|---|---|---|---|---|---|"]
for pid in sorted(set(two) | set(one)):
    a, b = two.get(pid), one.get(pid)
    def ms(x): return (statistics.mean(x), statistics.stdev(x) if len(x) > 1 else 0.0) if x else (float("nan"), float("nan"))
    (ma, sa), (mb, sb) = ms(a["tps"] if a else []), ms(b["tps"] if b else [])
    diff = (ma - mb) / mb * 100 if mb == mb and mb else float("nan")
    na = len(a["tps"]) if a else 0; nb = len(b["tps"]) if b else 0
    noise = 2 * ((sa**2 / max(na, 1) + sb**2 / max(nb, 1)) ** 0.5) / mb * 100 if mb == mb and mb else float("nan")
    rows.append(dict(point=pid, label=(a or b)["label"], two_gpu_mean=ma, two_gpu_sd=sa, gpu=a and a["gpu"], one_gpu_mean=mb, one_gpu_sd=sb, diff_pct=diff, noise_pct=noise))
    lines.append(f"| {pid} | {(a or b)['label']} | {ma:.0f} ± {sa:.0f} ({(a and a['gpu'] or '?')[:12]}) | {mb:.0f} ± {sb:.0f} | {diff:+.2f} % | ±{noise:.2f} % |")
gpus_used = sorted({r["gpu"] for r in rows if r["gpu"]})
lines += ["", f"wall time: 2 GPUs {float(walls['two-gpus']):.1f} s, 1 GPU {float(walls['one-gpu']):.1f} s, ratio {float(walls['one-gpu'])/float(walls['two-gpus']):.2f}x", f"GPUs used by the 2-GPU run: {', '.join(gpus_used)}"]
open(f"{out}/compare.md", "w").write("\n".join(lines) + "\n")
json.dump(dict(points=rows, wall_s=walls, gpus_used=gpus_used), open(f"{out}/compare.json", "w"), indent=2)
print("\n".join(lines))
PY
