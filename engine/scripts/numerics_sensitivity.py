#!/usr/bin/env python3
"""How well the engine-numerics reference separates bugs from bf16 noise.

  numerics_sensitivity.py DIR [N_PROMPTS]

DIR is a folder written by `gpu_golden.py make`. Prints, over prompts
0..N_PROMPTS-1 (default 4), the worst relative L2 per position between the
engine-numerics forward and
  - itself with f64 accumulation (the noise a correct engine summing in
    another order shows: NOISE), and
  - itself with one bug injected (BUG lines): the kernel mistakes a CUDA
    backend could make, each written as a change to engine_numerics.py's
    source. A bug whose number is not well above NOISE is one the golden
    test's implementation check cannot see (0 where the model has no such
    part).
Runs on the CPU unless DYNO_GOLDEN_DEVICE says otherwise.
"""
import json
import os
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import engine_numerics as en  # noqa: E402

# name: (text in engine_numerics.py, its buggy replacement)
BUGS = {
    "GQA heads tiled instead of interleaved": (
        "k = k.repeat_interleave(group, dim=0)\n        v = v.repeat_interleave(group, dim=0)",
        "k = k.repeat(group, 1, 1)\n        v = v.repeat(group, 1, 1)"),
    "RoPE position off by one": (
        "pos = torch.arange(n, dtype=torch.float64)", "pos = torch.arange(1, n + 1, dtype=torch.float64)"),
    "no RoPE on K": ("k = bf16(rope(k, cos, sin))", "k = bf16(k)"),
    "no q/k/v bias (Qwen2)": ("y = y + bias", "y = y"),
    "no per-head q/k RMSNorm (Qwen3)": ("y = rmsnorm(y, norm, eps)", "y = y"),
    "RMSNorm eps 10x": ('self.eps = c["rms_norm_eps"]', 'self.eps = c["rms_norm_eps"] * 10'),
    "softmax scale 1/d": ("/ math.sqrt(d)", "/ d"),
    "one future token visible": ("triu(1)", "triu(2)"),
    "silu on up instead of gate": ("torch.nn.functional.silu(gate) * up", "torch.nn.functional.silu(up) * gate"),
    # Not a bug: a rounding point the engine does not have.
    "q rounded to bf16 (not a bug)": ("q = rope(q, cos, sin)", "q = bf16(rope(q, cos, sin))"),
}


def variant(old, new):
    """engine_numerics with `old` replaced by `new` in its source."""
    with open(en.__file__) as f:
        src = f.read()
    if old not in src:
        sys.exit(f"numerics_sensitivity.py: {old!r} is no longer in {en.__file__}; update BUGS")
    module = types.ModuleType(f"engine_numerics_variant_{abs(hash(new))}")
    exec(compile(src.replace(old, new), en.__file__, "exec"), module.__dict__)
    return module


def worst(a, b):
    return max(float(((x.float() - y.float()).norm(dim=-1) / y.float().norm(dim=-1)).max()) for x, y in zip(a, b))


@torch.no_grad()
def main(out, n):
    en.exact_f32_matmuls()
    device = os.environ.get("DYNO_GOLDEN_DEVICE", "cpu")
    with open(os.path.join(out, "prompts.json")) as f:
        prompts = json.load(f)[:n]
    ckpt = en.Checkpoint(out, device)
    ref = [en.forward(ckpt, p) for p in prompts]
    noise = worst([en.forward(ckpt, p, dtype=torch.float64) for p in prompts], ref)
    print(f"NOISE {out}: f32 vs f64 accumulation worst rel L2 {noise:.2e}", flush=True)
    for name, (old, new) in BUGS.items():
        m = variant(old, new)
        buggy = m.Checkpoint(out, device)
        e = worst([m.forward(buggy, p) for p in prompts], ref)
        print(f"BUG {out}: {name}: worst rel L2 {e:.2e} ({e / noise:.1f}x noise)", flush=True)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 4)
