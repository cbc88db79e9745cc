#!/usr/bin/env python3
"""Registers, spills and shared memory of the engine's kernels for sm_90,
without a GPU: NVRTC compiles engine/kernels/ as the engine does (the same
source order and the same -D options as engine/src/backend/cuda/nvrtc.rs),
then `ptxas -v` assembles the PTX and reports each kernel, so a change to a
kernel's register use (and with it the blocks an SM can hold) is seen
before a GPU session. On the H200, Nsight Compute reported the same 118
registers for `attention` as the driver's ptxas 13.0 (this tool with ptxas
12.9: 123).

Needs the pip packages nvidia-cuda-nvrtc-cu12 and nvidia-cuda-runtime-cu12
(NVRTC and cuda_bf16.h; CI installs them) and a `ptxas` (the toolkit's, or
the one inside the nvidia-cuda-nvcc-cu12 wheel:
`pip download --no-deps nvidia-cuda-nvcc-cu12` and unzip
`nvidia/cuda_nvcc/bin/ptxas`). From the repository root:

  python3 engine/scripts/kernel_registers.py --ptxas PATH [--kernel NAME]
      [--shape HEAD_DIM,GROUP,HIDDEN,QDIM,INTER] [-D NAME=VALUE ...]

e.g. `-D ATTN_KEYS_PER_ITER=1 -D ATTN_MIN_BLOCKS=5` (what
DYNO_CUDA_ATTN_KEYS / DYNO_CUDA_ATTN_MIN_BLOCKS compile in). The default
shape is smollm2-135m's. Prints one line per kernel: registers per thread,
the blocks of that kernel's size an SM's 65,536 registers hold, spill bytes
and shared memory.
"""
import argparse
import ctypes
import glob
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS_DIR = os.path.join(HERE, "..", "kernels")
# nvrtc.rs SOURCES, in order.
SOURCES = ["common.cuh", "norm.cu", "activation.cu", "rope_kv.cu", "attention_config.cuh",
           "attention_mma.cu", "attention.cu", "sampling.cu", "gemv.cu", "persistent.cu"]
# persistent.rs defines(): the persistent program (decode_layers) with --persistent.
PERSISTENT_DEFINES = ["DYNO_PERSISTENT=1", "PERSIST_MIN_BLOCKS=3", "LAYER_PTRS=7"] + [
    f"LAYER_PTR_{n}={i}" for i, n in enumerate(
        ["INPUT_NORM", "QKV", "QKV_BIAS", "O_PROJ", "POST_NORM", "GATE_UP", "DOWN"])]
# kernels.rs launch constants (nvrtc.rs launch_constants).
LAUNCH_CONSTANTS = {"GEMV_WARPS": 4, "GEMV_ROWS": 2, "GEMV_MAX_T": 8, "GEMV_MAX_HIDDEN": 3072,
                    "ATTN_MAX_SPLITS": 32, "ADD_RMSNORM_WARPS": 4}
# kernels.rs ATTN_MAX_GROUP_TILE: a block takes at most 8 query heads.
ATTN_MAX_GROUP_TILE = 8
REGISTERS_PER_SM = 65536
MAX_THREADS_PER_SM = 2048


class ToolError(Exception):
    pass


def parse_ptxas(text):
    """`ptxas -v` output → {kernel: {"registers", "spill_stores", "spill_loads", "smem"}}."""
    kernels, name = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
            kernels[name] = {"registers": None, "spill_stores": 0, "spill_loads": 0, "smem": 0}
            continue
        if name is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            kernels[name]["spill_stores"] = int(m.group(1))
            kernels[name]["spill_loads"] = int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            kernels[name]["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            kernels[name]["smem"] = int(s.group(1)) if s else 0
    missing = [k for k, v in kernels.items() if v["registers"] is None]
    if missing:
        raise ToolError(f"ptxas output has no register count for {', '.join(missing)}")
    return kernels


def blocks_per_sm(registers, threads):
    """Blocks of `threads` threads the register file holds (allocation in
    warps of 256-register granules, as the occupancy calculator does)."""
    per_warp = -(-registers * 32 // 256) * 256
    warps = -(-threads // 32)
    by_registers = REGISTERS_PER_SM // (per_warp * warps) if per_warp else MAX_THREADS_PER_SM
    return min(by_registers, MAX_THREADS_PER_SM // threads)


# kernels.rs KvLayout::default_for(16), the engine's default block size:
# the KV layout follows the attention loop. A -D of the same name replaces it.
DEFAULT_DEFINES = {"KV_HEAD_MAJOR": 2, "KV_BLOCK_SIZE": 16}


def defines(shape, extra):
    hd, group, hidden, qdim, inter = shape
    chunks = -(-group // ATTN_MAX_GROUP_TILE)
    d = [f"-DDYNO_HEAD_DIM={hd}", f"-DDYNO_GROUP={group}", f"-DDYNO_GROUP_CHUNKS={chunks}",
         f"-DDYNO_HIDDEN={hidden}", f"-DDYNO_QDIM={qdim}", f"-DDYNO_INTER={inter}"]
    d += [f"-D{k}={v}" for k, v in LAUNCH_CONSTANTS.items()]
    named = {x.split("=", 1)[0] for x in extra}
    d += [f"-D{k}={v}" for k, v in DEFAULT_DEFINES.items() if k not in named]
    # kernels.rs mma_t_shared_bytes: the transposed loop's staging per block.
    if "ATTN_MMA_T_SHARED" not in named:
        d.append(f"-DATTN_MMA_T_SHARED={4 * 2 * 2 * 16 * (hd + 8) * 2}")
    return d + [f"-D{x}" for x in extra]


def nvidia_dir():
    try:
        import nvidia
    except ImportError as e:
        raise ToolError("the pip packages nvidia-cuda-nvrtc-cu12 and nvidia-cuda-runtime-cu12 "
                        "are not installed") from e
    return list(nvidia.__path__)[0]


def compile_ptx(source, options):
    libs = glob.glob(os.path.join(nvidia_dir(), "cuda_nvrtc", "lib", "libnvrtc.so*"))
    if not libs:
        raise ToolError("libnvrtc not found: pip install nvidia-cuda-nvrtc-cu12")
    lib = ctypes.CDLL(libs[0])
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"dyno_kernels.cu", 0, None,
                                None)
    if rc:
        raise ToolError(f"nvrtcCreateProgram returned {rc}")
    argv = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    rc = lib.nvrtcCompileProgram(prog, len(options), argv)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc:
        raise ToolError(f"NVRTC could not compile the kernels ({rc}):\n{log.value.decode()}")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    return ptx.value.decode()


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ptxas", required=True, help="path to ptxas")
    ap.add_argument("-D", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--shape", default="64,3,576,576,1536",
                    help="HEAD_DIM,GROUP,HIDDEN,QDIM,INTER (default: smollm2-135m)")
    ap.add_argument("--kernel", help="only kernels whose name contains this")
    ap.add_argument("--persistent", action="store_true",
                    help="build the persistent program (decode_layers) instead")
    ap.add_argument("--threads", type=int, default=128,
                    help="threads per block for the blocks-per-SM column (attention: 128)")
    a = ap.parse_args(argv)
    try:
        shape = [int(x) for x in a.shape.split(",")]
        if len(shape) != 5 or min(shape) < 1:
            raise ValueError
    except ValueError:
        raise ToolError(f"--shape {a.shape}: expected five positive integers")
    if not os.access(a.ptxas, os.X_OK):
        raise ToolError(f"--ptxas {a.ptxas}: not an executable file")
    source = "".join(f"// ---- {n}\n" + open(os.path.join(KERNELS_DIR, n)).read() + "\n"
                     for n in SOURCES)
    include = os.path.join(nvidia_dir(), "cuda_runtime", "include")
    options = ["--gpu-architecture=compute_90", "--std=c++17", f"-I{include}"]
    extra = a.D + (PERSISTENT_DEFINES if a.persistent else [])
    ptx = compile_ptx(source, options + defines(shape, extra))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernels.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([a.ptxas, "-v", "--gpu-name", "sm_90", path, "-o",
                              os.path.join(tmp, "kernels.cubin")], capture_output=True, text=True)
    if out.returncode:
        raise ToolError(f"ptxas failed:\n{out.stderr}")
    for name, k in sorted(parse_ptxas(out.stderr).items()):
        if a.kernel and a.kernel not in name:
            continue
        print(f"{name}: {k['registers']} registers ({blocks_per_sm(k['registers'], a.threads)} "
              f"blocks of {a.threads} threads per SM), spills {k['spill_stores']} B stored / "
              f"{k['spill_loads']} B loaded, {k['smem']} B shared")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ToolError as e:
        print(f"kernel_registers: {e}", file=sys.stderr)
        sys.exit(2)
