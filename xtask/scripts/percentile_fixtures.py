#!/usr/bin/env python3
"""Writes xtask/tests/fixtures/percentiles.json: sample sets and the
percentiles numpy computes for them with its default (linear) method, the
way `vllm bench serve` reports TTFT/TPOT/ITL/E2EL (np.percentile of the
values in seconds, then times 1000).

The Rust side (xtask/tests/percentiles_vs_numpy.rs) must reproduce every
number. Re-run after changing the cases:

    python3 xtask/scripts/percentile_fixtures.py
"""
import json
import pathlib

import numpy as np

PERCENTS = [50.0, 90.0, 95.0, 99.0]


def cases():
    rng = np.random.default_rng(20261130)
    yield "one", [0.0123]
    yield "two", [0.001, 0.003]
    yield "three_ties", [0.002, 0.002, 0.005]
    yield "one_to_hundred_ms", [i / 1e3 for i in range(1, 101)]
    # batch-1 TTFT-like: tight around 1.8 ms with a slow tail
    ttft = rng.normal(1.8e-3, 0.05e-3, 127).tolist() + [2.6e-3, 3.1e-3, 9.8e-3]
    yield "ttft_batch1", ttft
    # serving latencies: lognormal, many values, heavy tail
    yield "e2el_lognormal_1000", rng.lognormal(np.log(0.8), 0.6, 1000).tolist()
    # ITL: pooled gaps of 0.6 ms with scheduler hiccups
    itl = rng.gamma(20.0, 0.6e-3 / 20.0, 4093).tolist()
    itl[::97] = [x * 25 for x in itl[::97]]
    yield "itl_gamma_4093", itl
    yield "uniform_17", rng.uniform(0.0, 1.0, 17).tolist()


def main():
    out = []
    for name, values in cases():
        arr = np.asarray(values, dtype=np.float64)
        out.append(
            {
                "name": name,
                "values_s": [float(v) for v in arr],
                "percents": PERCENTS,
                "percentiles_s": [float(v) for v in np.percentile(arr, PERCENTS)],
                "vllm_ms": [float(np.percentile(arr, p) * 1000) for p in PERCENTS],
                "mean_ms": float(np.mean(arr) * 1000),
                "median_ms": float(np.median(arr) * 1000),
                "std_ms": float(np.std(arr * 1000)),
            }
        )
    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "percentiles.json"
    path.write_text(json.dumps({"numpy": np.__version__, "cases": out}, indent=1) + "\n")
    print(f"wrote {path} ({len(out)} cases, numpy {np.__version__})")


if __name__ == "__main__":
    main()
