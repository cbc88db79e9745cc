"""Per point of a sweep run twice into two stores (OUT/store-two-gpus and
OUT/store-one-gpu): output tok/s mean and stdev across trials on both
sides, the difference against two standard errors of it, the GPU each
point ran on, and the two wall times (OUT/wall.txt). Writes compare.md and
compare.json into OUT.
    compare_two_gpus.py OUT [SWEEP] [DEVICE]"""
import json, os, statistics, sys
out = sys.argv[1]
sweep = sys.argv[2] if len(sys.argv) > 2 else "two-gpus"
device = sys.argv[3] if len(sys.argv) > 3 else "cuda"
def store_points(name):
    root = f"{out}/store-{name}"
    ledger = f"{root}/sweeps/{sweep}/{device}"
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
rows, lines = [], ["| point | label | 2-GPU run: tok/s (GPU) | 1-GPU run: tok/s | diff | ±2 standard errors of the difference |", "|---|---|---|---|---|---|"]
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
