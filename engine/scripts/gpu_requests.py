#!/usr/bin/env python3
"""Writes requests.jsonl files (workloads::Request lines) for the CUDA
benchmarks of docs/CUDA.md, without the pipeline:

  gpu_requests.py OUT_DIR

  offline-<model>.jsonl  1,000 requests, prompt 256, output 1,024, ignore_eos,
                         16 warm-up requests first (issue 4's throughput shape)
  batch1.jsonl           8 requests, prompt 128, output 512, ignore_eos, 2
                         warm-up (run with --max-concurrency 1)

Prompts are seeded random token ids below each model's vocabulary.
"""
import json
import os
import random
import sys

VOCAB = {"smollm2-135m": 49152, "qwen3-0.6b": 151936}


def request(i, vocab, prompt, output, warmup, rng):
    return {
        "id": i,
        "arrival_s": 0.0,
        "warmup": warmup,
        "prompt_token_ids": [rng.randrange(vocab) for _ in range(prompt)],
        "sampling": {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": i,
                     "max_tokens": output, "ignore_eos": True, "stop_token_ids": []},
    }


def write(path, reqs):
    with open(path, "w") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")


def main(out):
    os.makedirs(out, exist_ok=True)
    for model, vocab in VOCAB.items():
        rng = random.Random(301)
        reqs = [request(i, vocab, 256, 1024, i < 16, rng) for i in range(1016)]
        write(os.path.join(out, f"offline-{model}.jsonl"), reqs)
    rng = random.Random(202)
    write(os.path.join(out, "batch1.jsonl"),
          [request(i, VOCAB["smollm2-135m"], 128, 512, i < 2, rng) for i in range(10)])


if __name__ == "__main__":
    main(sys.argv[1])
