#!/usr/bin/env bash
# Speculative decoding on vs off with `engine bench`, on a real checkpoint
# and the tokenized chat prompts of engine/fixtures/spec_decode/ (copy.jsonl:
# prompts that invite copying; open.jsonl: prompts that do not).
#
#   scripts/spec_decode/run_matrix.sh ENGINE MODEL OUT DEVICE TRIALS HIGH_LOAD_REQUESTS [MAX_TOKENS [B1_REQUESTS]]
#
# For each prompt set and each load — batch 1 (`--max-concurrency 1`, the
# first B1_REQUESTS (default all 32) measured requests of the fixture, which
# cycle through its 8 prompts) and high load (HIGH_LOAD_REQUESTS
# requests at once, max_num_seqs 512) — runs TRIALS trials of each config
# (off; ngram k=6 with vLLM's default n-grams 5..5, seed 004's
# "ngram_6"; ngram k=4 with n-grams 2..4), interleaved within a trial so
# that drift hits every config alike. Then summarize.py writes the table.
set -euo pipefail
E=${1:?engine binary}
MODEL=${2:?model (GGUF file or checkpoint dir)}
OUT=${3:?output folder}
DEVICE=${4:?cpu or cuda}
TRIALS=${5:?trials}
HIGH=${6:?requests at high load}
MAX_TOKENS=${7:-256}
B1=${8:-32}
HERE=$(cd "$(dirname "$0")" && pwd)
FIXTURES=$HERE/../../engine/fixtures/spec_decode
mkdir -p "$OUT"

write_config() { # name max_num_seqs method k min max
  cat > "$OUT/$1.toml" <<EOF
max_num_seqs = $2
max_num_batched_tokens = 32768
speculative_method = "$3"
num_speculative_tokens = $4
prompt_lookup_min = $5
prompt_lookup_max = $6
EOF
  "$E" check-config --config "$OUT/$1.toml"
}
for load in b1 high; do
  seqs=$([ $load = b1 ] && echo 1 || echo 512)
  write_config "$load-off" "$seqs" off 0 5 5
  write_config "$load-ngram6" "$seqs" ngram 6 5 5
  write_config "$load-ngram4" "$seqs" ngram 4 2 4
done

# Request files: the fixture's prompts, max_tokens set, and for high load
# cycled up to HIGH measured requests.
for kind in copy open; do
  python3 - "$FIXTURES/$kind.jsonl" "$OUT" "$kind" "$HIGH" "$MAX_TOKENS" "$B1" <<'EOF'
import json, sys
src, out, kind = sys.argv[1], sys.argv[2], sys.argv[3]
high, max_tokens, b1 = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
reqs = [json.loads(l) for l in open(src) if l.strip()]
for r in reqs:
    r["sampling"]["max_tokens"] = max_tokens
warm = [r for r in reqs if r["warmup"]]
meas = [r for r in reqs if not r["warmup"]]
def write(path, rs):
    with open(path, "w") as f:
        for i, r in enumerate(rs):
            f.write(json.dumps(dict(r, id=i)) + "\n")
write(f"{out}/{kind}-b1.requests.jsonl", warm + meas[:b1])
write(f"{out}/{kind}-high.requests.jsonl", warm + [meas[i % len(meas)] for i in range(high)])
EOF
done

for kind in copy open; do
  for load in b1 high; do
    for t in $(seq 1 "$TRIALS"); do
      for cfg in off ngram6 ngram4; do
        name="$kind-$load-$cfg-t$t"
        extra=()
        [ $load = b1 ] && extra=(--max-concurrency 1)
        echo "+ $name"
        "$E" bench --model "$MODEL" --device "$DEVICE" --config "$OUT/$load-$cfg.toml" \
          --requests "$OUT/$kind-$load.requests.jsonl" --out "$OUT/$name.records.jsonl" "${extra[@]}"
      done
    done
  done
done
python3 "$HERE/summarize.py" "$OUT" | tee "$OUT/summary.md"
