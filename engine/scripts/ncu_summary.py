#!/usr/bin/env python3
"""Where a decode step's GPU time goes: Nsight Compute's per-launch numbers
grouped by kernel, against the bandwidth bound (issue 15). Standard library
only; engine/scripts/gpu_profile.sh runs it, and it runs on its own:

  ncu_summary.py --csv RAW.csv --steps N --batch B --context C --model DIR
                 [--step-log graphs=STEPS.jsonl ...] [--time-window SKIP:COUNT]
                 [--graph-log RUN.log ...]
                 [--kernels-dir engine/kernels] [--title TEXT] [--out FILE.md]

RAW.csv is `ncu --import R.ncu-rep --csv --page raw --print-units base` of a
report holding exactly N decode steps (the engine's DYNO_PROFILE_DECODE_STEPS
window) with the metrics in METRICS. Per kernel group and per decode step it
gives launches, µs, DRAM bytes, achieved GB/s and % of the achievable peak;
the step total; the weights- and KV-bound floor from the checkpoint's shapes;
and, with step logs of runs without the profiler (`engine bench`
--step-log), the measured step time and the time between kernels = measured
step time − the sum of kernel durations. With the stderr logs of the runs
with graphs (--graph-log), also the graph those steps replayed: a batch
between two buckets runs the larger one, padded, and the padded rows' work
is part of the graphs' step time (qwen3-0.6b at 856 sequences ran the
1,024-row graph, 0.56 ms a step more than eager on the H200).
"""
import argparse
import csv
import glob
import json
import os
import re
import statistics
import struct
import sys
from dataclasses import dataclass, field

# The H200's HBM3e is specified at 4.8 TB/s (NVIDIA H200 datasheet); a
# streaming kernel reaches about 90 % of that, ~4.3 TB/s, which is the bound
# issue 15 measures against. Bytes per second, decimal (1 TB = 1e12 B).
ACHIEVABLE_DRAM_BYTES_PER_S = 4.3e12

# The metrics gpu_profile.sh asks ncu for (and this script reads).
METRIC_DURATION = "gpu__time_duration.sum"
METRIC_DRAM_READ = "dram__bytes_read.sum"
METRIC_DRAM_WRITE = "dram__bytes_write.sum"
METRIC_DRAM_PCT = "dram__throughput.avg.pct_of_peak_sustained_elapsed"
METRIC_SM_PCT = "sm__throughput.avg.pct_of_peak_sustained_elapsed"
METRICS = [METRIC_DURATION, METRIC_DRAM_READ, METRIC_DRAM_WRITE, METRIC_DRAM_PCT, METRIC_SM_PCT]

# Every kernel that is not the engine's own and looks like cuBLAS's (its
# GEMM/GEMV kernels on Hopper are nvjet_*, sm90_xmma_*, cutlass*, gemv*,
# plus split-K reductions) is one group.
CUBLAS_GROUP = "cublas gemm"
CUBLAS_NAME = re.compile(r"nvjet|gemm|gemv|xmma|cutlass|cublas|splitk", re.IGNORECASE)

# The engine's kernels are `extern "C"` in engine/kernels/*.cu.
OWN_KERNEL = re.compile(
    r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\('
)

# The engine launches this kernel once per step (sampling is a step's last
# kernel): its count checks that the report holds the steps it claims.
STEP_KERNEL = "sample_rows"

# Unit of each metric in the CSV's units row → factor to seconds / bytes.
TIME_UNITS = {"nsecond": 1e-9, "ns": 1e-9, "usecond": 1e-6, "us": 1e-6,
              "msecond": 1e-3, "ms": 1e-3, "second": 1.0, "s": 1.0}
BYTE_UNITS = {"byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "Tbyte": 1e12,
              "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
              "KiB": 1024.0, "MiB": 1024.0 ** 2, "GiB": 1024.0 ** 3}
PERCENT_UNITS = {"%": 1.0}
METRIC_UNITS = {METRIC_DURATION: TIME_UNITS, METRIC_DRAM_READ: BYTE_UNITS,
                METRIC_DRAM_WRITE: BYTE_UNITS, METRIC_DRAM_PCT: PERCENT_UNITS,
                METRIC_SM_PCT: PERCENT_UNITS}

# Bytes per weight and per cached K/V element on the device (the CUDA
# backend keeps both in bf16 whatever the checkpoint's dtype).
DEVICE_BYTES_PER_ELEMENT = 2


class InputError(Exception):
    """Bad input: the message names the file, line and field."""


@dataclass
class Launch:
    kernel: str
    duration_s: float
    dram_read: float
    dram_write: float
    dram_pct: float
    sm_pct: float
    # Thread blocks in the grid (ncu's "Grid Size" column), None where the
    # export lacks it.
    blocks: int = None


@dataclass
class Group:
    name: str
    launches: int = 0
    duration_s: float = 0.0
    dram_bytes: float = 0.0
    # Duration-weighted sums of ncu's percentages (divided by duration_s).
    dram_pct_time: float = 0.0
    sm_pct_time: float = 0.0
    kernels: set = field(default_factory=set)
    # (kernel, thread blocks) -> launches
    kernel_blocks: dict = field(default_factory=dict)

    def add(self, launch):
        self.launches += 1
        self.duration_s += launch.duration_s
        self.dram_bytes += launch.dram_read + launch.dram_write
        self.dram_pct_time += launch.dram_pct * launch.duration_s
        self.sm_pct_time += launch.sm_pct * launch.duration_s
        self.kernels.add(launch.kernel)
        key = (launch.kernel, launch.blocks)
        self.kernel_blocks[key] = self.kernel_blocks.get(key, 0) + 1

    def bytes_per_s(self):
        return self.dram_bytes / self.duration_s if self.duration_s > 0 else 0.0

    def dram_pct(self):
        return self.dram_pct_time / self.duration_s if self.duration_s > 0 else 0.0

    def sm_pct(self):
        return self.sm_pct_time / self.duration_s if self.duration_s > 0 else 0.0


def parse_number(text, where):
    """ncu's numbers may carry thousands separators ("1,234.5")."""
    cleaned = text.strip().replace(",", "")
    try:
        return float(cleaned)
    except ValueError:
        raise InputError(f"{where}: {text!r} is not a number") from None


def parse_grid(text, where):
    """Thread blocks of ncu's grid text "(x, y, z)"."""
    parts = text.strip().strip("()").split(",")
    try:
        dims = [int(p.strip()) for p in parts]
    except ValueError:
        raise InputError(f"{where}: {text!r} is not a grid \"(x, y, z)\"") from None
    if not dims or any(d < 1 for d in dims):
        raise InputError(f"{where}: {text!r} is not a grid \"(x, y, z)\"")
    blocks = 1
    for d in dims:
        blocks *= d
    return blocks


def read_raw_csv(path):
    """The launches of `ncu --csv --page raw`: a header row (identity columns,
    then one column per metric), a units row, then one row per launch. Lines
    before the header (==PROF== or application output) and ==WARNING== lines
    are skipped."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    rows = [(i + 1, row) for i, row in enumerate(csv.reader(lines))
            if row and not row[0].startswith("==")]
    header_at = next((k for k, (_, row) in enumerate(rows) if "Kernel Name" in row), None)
    if header_at is None:
        raise InputError(f"{path}: no header row with \"Kernel Name\": not the CSV of "
                         "`ncu --csv --page raw` (did ncu profile anything?)")
    header_line, header = rows[header_at]
    col = {name: i for i, name in enumerate(header)}
    missing = [m for m in METRICS if m not in col]
    if missing:
        raise InputError(f"{path}:{header_line}: missing metric column(s) {', '.join(missing)} "
                         f"(collect them with ncu --metrics {','.join(METRICS)})")
    if "ID" not in col:
        raise InputError(f"{path}:{header_line}: no \"ID\" column")
    body = rows[header_at + 1:]
    if not body or body[0][1][col["ID"]].strip():
        raise InputError(f"{path}:{header_line + 1}: expected the units row after the header "
                         "(an empty ID column, then each metric's unit)")
    units_line, units = body[0]
    factors = {}
    for metric in METRICS:
        unit = units[col[metric]].strip() if col[metric] < len(units) else ""
        table = METRIC_UNITS[metric]
        if unit not in table:
            raise InputError(f"{path}:{units_line}: {metric}: unit {unit!r} not one of "
                             f"{', '.join(sorted(table))}")
        factors[metric] = table[unit]
    launches = []
    for line, row in body[1:]:
        if len(row) < len(header):
            raise InputError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        values = {m: parse_number(row[col[m]], f"{path}:{line}: {m}") * factors[m]
                  for m in METRICS}
        blocks = (parse_grid(row[col["Grid Size"]], f"{path}:{line}: Grid Size")
                  if "Grid Size" in col else None)
        launches.append(Launch(kernel=row[col["Kernel Name"]], duration_s=values[METRIC_DURATION],
                               dram_read=values[METRIC_DRAM_READ],
                               dram_write=values[METRIC_DRAM_WRITE],
                               dram_pct=values[METRIC_DRAM_PCT], sm_pct=values[METRIC_SM_PCT],
                               blocks=blocks))
    if not launches:
        raise InputError(f"{path}: no kernel launches after the units row")
    return launches


def own_kernel_names(kernels_dir):
    """The engine's kernel names (`extern "C"` in kernels_dir/*.cu)."""
    names = set()
    for path in sorted(glob.glob(os.path.join(kernels_dir, "*.cu"))):
        with open(path, encoding="utf-8") as f:
            names.update(OWN_KERNEL.findall(f.read()))
    if not names:
        raise InputError(f"{kernels_dir}: no extern \"C\" __global__ kernels in *.cu")
    return names


def group_name(kernel, own):
    if kernel in own:
        return kernel
    if CUBLAS_NAME.search(kernel):
        return CUBLAS_GROUP
    return kernel


def group_launches(launches, own):
    groups = {}
    for launch in launches:
        name = group_name(launch.kernel, own)
        groups.setdefault(name, Group(name)).add(launch)
    return sorted(groups.values(), key=lambda g: (-g.duration_s, g.name))


def read_safetensors_header(path):
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise InputError(f"{path}: shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw_len)
            if n > 100 * 1024 * 1024:
                raise InputError(f"{path}: header length {n} is not plausible")
            return json.loads(f.read(n))
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: header is not JSON: {e}") from None


def load_config(model_dir):
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: line {e.lineno}: {e.msg}") from None


def weight_bytes_per_step(model_dir):
    """Device bytes of the weights one decode step reads: every parameter in
    bf16, except an untied input embedding (a step gathers only its tokens'
    rows; with tied embeddings the LM head reads the table in full)."""
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise InputError(f"{model_dir}: no *.safetensors files")
    elements = {}
    for path in files:
        for name, meta in read_safetensors_header(path).items():
            if name == "__metadata__":
                continue
            shape = meta.get("shape") if isinstance(meta, dict) else None
            if not isinstance(shape, list):
                raise InputError(f"{path}: tensor {name}: no shape")
            count = 1
            for d in shape:
                count *= int(d)
            elements[name] = count
    read = sum(elements.values())
    if "lm_head.weight" in elements:
        read -= elements.get("model.embed_tokens.weight", 0)
    return read * DEVICE_BYTES_PER_ELEMENT


def kv_bytes_per_token(config):
    """K and V of one cached token over all layers, bf16."""
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads", heads))
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"config.json: field {e} missing or not a number") from None
    return layers * 2 * kv_heads * head_dim * DEVICE_BYTES_PER_ELEMENT


def replay_pool_problem(model_dir, blocks, block_size, max_gib):
    """Why ncu's kernel replay would crawl through this run, or None.

    Nsight Compute replays each profiled kernel once per pass, saving and
    restoring the device memory the kernel may write first; with the KV
    cache as large as the run needs (gpu_profile.sh sizes it so), every
    replayed attention launch copies the whole pool. A qwen3-0.6b case at
    batch 856 with a 500-step skip (a ~70 GiB pool) ran past nine minutes
    without a report, so such runs are refused before they start (the
    ~17-18 GiB pools of smollm2-135m at batch 1,024 and qwen3-0.6b at 512
    were profiled)."""
    pool = kv_bytes_per_token(load_config(model_dir)) * block_size * blocks
    if pool <= max_gib * 2**30:
        return None
    return (f"the run's KV pool would be {pool / 2**30:.1f} GiB ({blocks} blocks of {block_size} "
            f"tokens), over DYNO_PROFILE_MAX_POOL_GIB={max_gib:g}: ncu saves and restores it for "
            f"every replayed kernel, which takes minutes a launch; profile a smaller batch or "
            f"DYNO_PROFILE_SKIP, or raise DYNO_PROFILE_MAX_POOL_GIB")


def parse_window(text):
    try:
        skip, count = (int(x) for x in text.split(":"))
    except ValueError:
        raise InputError(f"--time-window {text!r}: expected SKIP:COUNT") from None
    if skip < 0 or count < 1:
        raise InputError(f"--time-window {text!r}: SKIP ≥ 0 and COUNT ≥ 1")
    return skip, count


def decode_step_times(path, batch, window):
    """Durations (s) of the pure decode steps of batch `batch` whose ordinal
    among the run's pure decode steps is in the window."""
    skip, count = window
    times = []
    ordinal = 0
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    step = json.loads(line)
                    pure_decode = (step["prefill_tokens"] == 0 and step["decode_tokens"] > 0
                                   and step.get("spec_draft_tokens", 0) == 0)
                    size, duration = step["batch_size"], float(step["duration_s"])
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise InputError(f"{path}:{line_no}: not a step-log entry ({e})") from None
                if not pure_decode:
                    continue
                if skip <= ordinal < skip + count and size == batch:
                    times.append(duration)
                ordinal += 1
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    return times


GRAPH_BUCKET_LINE = re.compile(r"^cuda: decode graph bucket (\d+): (\d+) steps")


def graph_bucket(path, batch):
    """The rows of the decode graph that ran steps of `batch` sequences in
    the run whose stderr log is `path` (the backend prints a line per
    bucket that ran steps, at exit): the smallest such bucket ≥ batch, or
    None where no graph ran (an eager run)."""
    buckets = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = GRAPH_BUCKET_LINE.match(line)
                if m and int(m.group(2)) > 0:
                    buckets.append(int(m.group(1)))
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    fitting = [b for b in buckets if b >= batch]
    return min(fitting) if fitting else None


def graph_padding_row(graph_rows, batch):
    if graph_rows == batch:
        return f"| decode graph replayed, graphs | {graph_rows:,} rows: no padding |"
    padded = graph_rows - batch
    return (f"| decode graph replayed, graphs | {graph_rows:,} rows for {batch:,} sequences: "
            f"{padded:,} padded rows ({100 * padded / graph_rows:.1f} % of its rows), whose "
            "work is in the graphs' step time |")


@dataclass
class StepTime:
    label: str
    samples: list

    def median(self):
        return statistics.median(self.samples)


def fmt_ms(seconds):
    # 0.1 µs resolution: batch-1 steps are a few hundred µs, kernels a few.
    return f"{seconds * 1e3:.4f} ms"


# The products a layer of the engine's forward pass multiplies through
# cuBLAS, in launch order (backend/cuda/runner.rs), then the LM head once a
# step. Steps of the small-batch path run the layers' products as the
# engine's own kernels, so only the LM head is cuBLAS there.
LAYER_PRODUCTS = ("QKV", "O", "gate/up", "down")
LM_HEAD = "LM head"


def products_by_place(launches, own, steps, layers):
    """The cuBLAS launches grouped by their place in the step: a Group for
    each of a layer's products (summed over the layers) and one for the LM
    head. Returns (places, None), or (None, why) where the launches do not
    split into `layers` × k products plus one LM head per step."""
    gemms = [launch for launch in launches if group_name(launch.kernel, own) == CUBLAS_GROUP]
    if not gemms:
        return None, "no cuBLAS launches"
    if steps < 1 or len(gemms) % steps:
        return None, f"{len(gemms)} cuBLAS launches do not divide into {steps} steps"
    per_step = len(gemms) // steps
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        return None, f"num_hidden_layers {layers!r} is not a layer count"
    if (per_step - 1) % layers:
        return None, (f"{per_step} cuBLAS launches per step are not {layers} layers × k "
                      "products + the LM head")
    k = (per_step - 1) // layers
    names = (list(LAYER_PRODUCTS) if k == len(LAYER_PRODUCTS)
             else [f"product {i + 1} of {k} in a layer" for i in range(k)])
    places = [Group(n) for n in names] + [Group(LM_HEAD)]
    for i, launch in enumerate(gemms):
        at = i % per_step
        places[len(places) - 1 if at == per_step - 1 else at % k].add(launch)
    return places, None


def fmt_us(seconds):
    return f"{seconds * 1e6:,.1f}"


def fmt_mb(nbytes):
    return f"{nbytes / 1e6:,.2f}"


def summarize(launches, steps, batch, context, weight_bytes, kv_token_bytes, step_times, own,
              title, step_kernel=STEP_KERNEL, layers=None, graph_rows=None):
    if steps < 1:
        raise InputError("--steps must be at least 1")
    groups = group_launches(launches, own)
    kernel_s = sum(g.duration_s for g in groups) / steps
    if kernel_s <= 0:
        raise InputError("the launches' durations sum to zero")
    dram_bytes = sum(g.dram_bytes for g in groups) / steps
    kv_bytes = kv_token_bytes * batch * context
    floor_s = (weight_bytes + kv_bytes) / ACHIEVABLE_DRAM_BYTES_PER_S
    peak = ACHIEVABLE_DRAM_BYTES_PER_S
    out = [f"## {title}", ""]
    markers = sum(1 for launch in launches if launch.kernel == step_kernel)
    if step_kernel and markers != steps:
        warning = (f"**warning**: `{step_kernel}` (one launch per step) ran {markers} times, "
                   f"not {steps}: the report may not hold exactly {steps} decode steps, "
                   "so the per-step numbers are off by that ratio.")
        print(f"ncu_summary: {warning}", file=sys.stderr)
        out += [warning, ""]
    out.append(f"{len(launches)} kernel launches over {steps} profiled decode steps "
               f"({len(launches) / steps:.1f} per step); batch {batch}, mean context "
               f"{context} tokens. Bandwidth % are of {peak / 1e12:.1f} TB/s (achievable HBM3e "
               "on the H200; 4.8 TB/s nominal).")
    out.append("")
    out.append("| per decode step | value |")
    out.append("| --- | --- |")
    out.append(f"| weights read (bf16) | {fmt_mb(weight_bytes)} MB |")
    out.append(f"| KV read ({batch} seq × {context} tokens) | {fmt_mb(kv_bytes)} MB |")
    out.append(f"| bandwidth floor at {peak / 1e12:.1f} TB/s | {fmt_ms(floor_s)} |")
    out.append(f"| sum of kernel durations (ncu) | {fmt_ms(kernel_s)} |")
    out.append(f"| DRAM bytes (ncu, read + write) | {fmt_mb(dram_bytes)} MB, "
               f"{dram_bytes / kernel_s / 1e9:,.0f} GB/s over the kernels' time "
               f"({100 * dram_bytes / kernel_s / peak:.1f} % of peak) |")
    for st in step_times:
        med = st.median()
        spread = (f"min {fmt_ms(min(st.samples))}, max {fmt_ms(max(st.samples))}, "
                  f"n = {len(st.samples)}")
        out.append(f"| measured step time, {st.label} (median; {spread}) | {fmt_ms(med)} |")
        out.append(f"| floor vs measured, {st.label} | floor {fmt_ms(floor_s)} vs measured "
                   f"{fmt_ms(med)} ({med / floor_s:.1f}× the floor) |")
        out.append(f"| time between kernels, {st.label} (step − kernel sum) | "
                   f"{fmt_ms(med - kernel_s)} ({100 * (med - kernel_s) / med:.1f} % of the step) |")
    if graph_rows is not None:
        out.append(graph_padding_row(graph_rows, batch))
    out.append("")
    out.append("| kernel | launches/step | µs/step | % of kernel time | MB/step (DRAM r+w) "
               f"| GB/s | % of {peak / 1e12:.1f} TB/s | DRAM % of peak (ncu) "
               "| SM % of peak (ncu) |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    total_s = sum(g.duration_s for g in groups)
    for g in groups:
        bps = g.bytes_per_s()
        out.append(f"| {g.name} | {g.launches / steps:g} | {fmt_us(g.duration_s / steps)} | "
                   f"{100 * g.duration_s / total_s:.1f} | {fmt_mb(g.dram_bytes / steps)} | "
                   f"{bps / 1e9:,.0f} | {100 * bps / peak:.1f} | {g.dram_pct():.1f} | "
                   f"{g.sm_pct():.1f} |")
    out.append(f"| **all kernels** | {len(launches) / steps:g} | {fmt_us(kernel_s)} | 100.0 | "
               f"{fmt_mb(dram_bytes)} | {dram_bytes / kernel_s / 1e9:,.0f} | "
               f"{100 * dram_bytes / kernel_s / peak:.1f} | | |")
    cublas = next((g for g in groups if g.name == CUBLAS_GROUP), None)
    if cublas:
        out.append("")
        out.append(f"`{CUBLAS_GROUP}` is {len(cublas.kernels)} cuBLAS kernel(s): "
                   + ", ".join(f"`{k}`" for k in sorted(cublas.kernels)) + ".")
        places, why = products_by_place(launches, own, steps, layers)
        out.append("")
        if places is None:
            out.append(f"cuBLAS launches by product: not split ({why}).")
        else:
            out.append("cuBLAS launches by product (each layer's products summed over the "
                       f"{layers} layers; blocks = the launch's thread blocks):")
            out.append("")
            out.append("| product | launches/step | µs/step | µs/launch | GB/s (DRAM r+w) "
                       "| kernel (blocks) × launches |")
            out.append("| --- | ---: | ---: | ---: | ---: | --- |")
            for pl in places:
                bps = pl.bytes_per_s()
                kernels = ", ".join(
                    f"`{name}` ({'?' if blocks is None else blocks}) × {n}"
                    for (name, blocks), n in sorted(pl.kernel_blocks.items(),
                                                    key=lambda kv: (-kv[1], kv[0][0])))
                out.append(f"| {pl.name} | {pl.launches / steps:g} | "
                           f"{fmt_us(pl.duration_s / steps)} | "
                           f"{fmt_us(pl.duration_s / pl.launches)} | {bps / 1e9:,.0f} | "
                           f"{kernels} |")
    out.append("")
    return "\n".join(out)


def parse_step_log_arg(text):
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise InputError(f"--step-log {text!r}: expected LABEL=PATH (e.g. graphs=run.steps.jsonl)")
    return label, path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", required=True, help="ncu --csv --page raw export")
    p.add_argument("--steps", type=int, required=True, help="decode steps the report holds")
    p.add_argument("--batch", type=int, required=True, help="sequences per decode step")
    p.add_argument("--context", type=int, required=True,
                   help="mean context length (tokens) of a sequence in the profiled steps")
    p.add_argument("--model", required=True, help="checkpoint directory (config.json, *.safetensors)")
    p.add_argument("--step-log", action="append", default=[],
                   help="LABEL=STEPS.jsonl of a run without the profiler (repeatable; "
                        "the same label pools several runs)")
    p.add_argument("--graph-log", action="append", default=[],
                   help="stderr log of a run with graphs (repeatable): the decode graph "
                        "its steps of --batch sequences replayed, and its padded rows")
    p.add_argument("--time-window", default="16:64",
                   help="SKIP:COUNT of the pure decode steps timed in each step log")
    p.add_argument("--kernels-dir", default=None,
                   help="engine/kernels: names of the engine's own kernels (others that look "
                        "like cuBLAS are grouped)")
    p.add_argument("--title", default="decode step profile")
    p.add_argument("--out", default=None, help="markdown file to write (default: stdout)")
    args = p.parse_args(argv)
    try:
        launches = read_raw_csv(args.csv)
        own = own_kernel_names(args.kernels_dir) if args.kernels_dir else set()
        config = load_config(args.model)
        window = parse_window(args.time_window)
        pooled = {}
        for spec in args.step_log:
            label, path = parse_step_log_arg(spec)
            times = decode_step_times(path, args.batch, window)
            if not times:
                raise InputError(f"{path}: no pure decode steps of batch {args.batch} among "
                                 f"decode steps {window[0]}..{window[0] + window[1] - 1}")
            pooled.setdefault(label, []).extend(times)
        step_times = [StepTime(label, samples) for label, samples in pooled.items()]
        # The graph row is a diagnosis: where a log does not give one graph,
        # say why on stderr and leave the row out rather than the report.
        found = {}
        for path in args.graph_log:
            rows = graph_bucket(path, args.batch)
            if rows is None:
                print(f"ncu_summary: warning: {path}: no decode graph of at least {args.batch} "
                      "rows ran (no `cuda: decode graph bucket` line; an eager run?)",
                      file=sys.stderr)
            else:
                found.setdefault(rows, path)
        if len(found) > 1:
            print("ncu_summary: warning: the --graph-log runs replayed different graphs for "
                  f"batch {args.batch}: " + ", ".join(f"{r} rows ({p})" for r, p in found.items()),
                  file=sys.stderr)
        graph_rows = next(iter(found)) if len(found) == 1 else None
        text = summarize(launches, args.steps, args.batch, args.context,
                         weight_bytes_per_step(args.model), kv_bytes_per_token(config),
                         step_times, own, args.title,
                         layers=config.get("num_hidden_layers"), graph_rows=graph_rows)
    except InputError as e:
        print(f"ncu_summary: {e}", file=sys.stderr)
        return 1
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.out)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
