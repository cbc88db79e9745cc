#!/usr/bin/env python3
"""Table of run_matrix.sh's runs: per prompt set, load and config, the
output throughput (output tokens / measured duration, from the engine's
summary; mean ± sample standard deviation over trials), the speedup over
"off" (ratio of the mean throughputs), the mean TPOT over requests (vLLM's
definition, pooled over trials), speculative decoding's acceptance rate and
mean accepted length (vLLM's definitions, pooled over requests), and how
many requests' greedy outputs equal the "off" run's of the same trial.

    scripts/spec_decode/summarize.py OUT
"""
import collections
import json
import pathlib
import re
import statistics
import sys


def main():
    out = pathlib.Path(sys.argv[1])
    runs = collections.defaultdict(list)
    for path in sorted(out.glob("*.records.jsonl")):
        m = re.match(r"(\w+)-(b1|high)-(\w+)-t(\d+)\.records\.jsonl$", path.name)
        if not m:
            continue
        kind, load, cfg, trial = m.groups()
        # engine bench's default summary path: <stem>.summary.json
        summary = json.loads(path.with_name(path.name[: -len(".jsonl")] + ".summary.json").read_text())
        records = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        runs[(kind, load, cfg)].append((int(trial), summary, records))

    print("| prompts | load | config | trials | output tok/s | speedup | mean TPOT ms | acceptance | mean accepted len | outputs = off |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (kind, load, cfg) in sorted(runs, key=lambda k: (k[0], k[1], k[2] != "off", k[2])):
        trials = sorted(runs[(kind, load, cfg)], key=lambda t: t[0])
        tput = [s["output_tokens"] / s["measured_duration_s"] for _, s, _ in trials]
        off = runs.get((kind, load, "off"), [])
        off_tput = [s["output_tokens"] / s["measured_duration_s"] for _, s, _ in off]
        speedup = statistics.mean(tput) / statistics.mean(off_tput) if off_tput else float("nan")
        tpots, drafts, draft_tokens, accepted = [], 0, 0, 0
        same = total = 0
        off_outputs = {t: {r["id"]: r["output_token_ids"] for r in recs} for t, _, recs in off}
        for t, _, recs in trials:
            for r in recs:
                times = r.get("token_times_s") or []
                if r.get("status", {}).get("kind", "ok") != "ok" or len(times) < 2:
                    continue
                tpots.append((times[-1] - times[0]) / (len(times) - 1) * 1e3)
                spec = r.get("spec_decode")
                if spec:
                    drafts += spec["num_drafts"]
                    draft_tokens += spec["num_draft_tokens"]
                    accepted += spec["num_accepted_tokens"]
                if t in off_outputs:
                    total += 1
                    same += off_outputs[t].get(r["id"]) == r["output_token_ids"]
        sd = statistics.stdev(tput) if len(tput) > 1 else float("nan")
        acc = f"{accepted / draft_tokens:.1%}" if draft_tokens else "-"
        mal = f"{1 + accepted / drafts:.2f}" if drafts else "-"
        print(f"| {kind} | {load} | {cfg} | {len(trials)} | {statistics.mean(tput):.1f} ± {sd:.1f} | "
              f"{speedup:.2f}× | {statistics.mean(tpots):.2f} | {acc} | {mal} | {same}/{total} |")


if __name__ == "__main__":
    main()
