"""A torch forward pass of a Llama / Qwen2 / Qwen3 checkpoint that rounds to
bf16 exactly where the dyno CUDA backend does, and computes everything else
in f32 (or f64).

Why: on flat random-weight logits, any bf16 engine disagrees with an f32
reference at some near-tie positions, so "matches transformers f32" cannot
separate a bug from bf16 noise. This forward has the engine's rounding
points, so the engine's logits differ from it only through summation order.
That is not ~1e-6: one flipped bf16 rounding perturbs every output of the
next matmul, which flips more roundings, so after a layer or two two
correct runs differ by bf16 noise. `gpu_golden.py make` measures that noise
(this forward in f32 vs f64) and the Rust test bounds the GPU by a multiple
of it; wrong kernels (GQA mapping, RoPE, bias, norm, scale, mask, MLP) cost
far more (measured on CPU with qwen2.5-0.5b: noise 8e-3, such bugs 2e-2 to 1.4).

Rounding points (round-to-nearest-even to bf16, marked `bf16(.)`):
  res     = f32(embedding row)                     residual stream stays f32
  x1      = bf16(rmsnorm(res) * w_in)
  q, k, v = x1 @ Wᵀ (+ bias, Qwen2) (per-head RMSNorm of q, k: Qwen3)
  q, k    = rope(q), rope(k)        angles as transformers forms them (f32), cos/sin in f64 cast to f32
  K, V    = bf16(k), bf16(v)        the KV cache; q stays f32
  attn    = bf16(softmax(q·Kᵀ/√d, causal) · V)
  res    += attn @ Woᵀ
  x2      = bf16(rmsnorm(res) * w_post)
  act     = bf16(silu(x2 @ Wgᵀ) * (x2 @ Wuᵀ));  res += act @ Wdᵀ
  logits  = bf16(rmsnorm(res) * w_final) @ Eᵀ
With `rounding=False` it is a plain forward of the architecture, which
`gpu_golden.py make` checks against transformers.

Needs only torch and safetensors: it reads config.json and *.safetensors.
"""
import glob
import json
import math

import numpy as np
import os

import torch
from safetensors.torch import load_file


def pick_device():
    """`cuda` when available, else `cpu` (DYNO_GOLDEN_DEVICE overrides)."""
    want = os.environ.get("DYNO_GOLDEN_DEVICE")
    if want:
        return want
    return "cuda" if torch.cuda.is_available() else "cpu"


def exact_f32_matmuls():
    """TF32 would round GEMM inputs to 10 mantissa bits: turn it off."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


class Checkpoint:
    """config.json + weights of a checkpoint folder, weights kept in their
    stored dtype (bf16) on `device`."""

    def __init__(self, path, device):
        with open(os.path.join(path, "config.json")) as f:
            self.config = json.load(f)
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"no *.safetensors in {path}")
        self.tensors = {}
        for file in files:
            self.tensors.update(load_file(file, device=str(device)))
        c = self.config
        self.model_type = c["model_type"]
        if self.model_type not in ("llama", "qwen2", "qwen3"):
            raise ValueError(f"{path}/config.json: model_type {self.model_type!r} is not llama, qwen2 or qwen3")
        self.layers = c["num_hidden_layers"]
        self.heads = c["num_attention_heads"]
        self.kv_heads = c.get("num_key_value_heads") or self.heads
        self.head_dim = c.get("head_dim") or c["hidden_size"] // self.heads
        self.eps = c["rms_norm_eps"]
        self.device = device
        self.inv_freq = inv_freq(c, self.head_dim)
        self.f32 = {}

    def weight(self, name, dtype):
        """Tensor `name` as `dtype`; f32 copies are kept (forward() runs
        many times in `check`), others converted on each use."""
        if dtype != torch.float32:
            return self.tensors[name].to(dtype)
        if name not in self.f32:
            self.f32[name] = self.tensors[name].to(dtype)
        return self.f32[name]

    def maybe(self, name, dtype):
        return self.weight(name, dtype) if name in self.tensors else None

    def lm_head(self, dtype):
        if "lm_head.weight" in self.tensors:
            return self.weight("lm_head.weight", dtype)
        return self.weight("model.embed_tokens.weight", dtype)


def inv_freq(config, head_dim):
    """1 / θ^(2j/d) in float32, llama3-scaled in float32 where config.json
    asks for it: the engine's backend/rope.rs (transformers' convention),
    operation for operation."""
    f32 = np.float32
    theta = f32(config.get("rope_theta", 10000.0))
    base = [f32(1.0) / np.power(theta, f32(2 * j) / f32(head_dim)) for j in range(head_dim // 2)]
    s = config.get("rope_scaling")
    if not s:
        return base
    kind = s.get("rope_type", s.get("type"))
    if kind != "llama3":
        raise ValueError(f"rope_scaling type {kind!r} is not supported (only llama3)")
    old = f32(s["original_max_position_embeddings"])
    low, high, factor = f32(s["low_freq_factor"]), f32(s["high_freq_factor"]), f32(s["factor"])
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for f in base:
        wavelen = f32(2.0 * math.pi) / f
        if wavelen < high_wavelen:
            out.append(f)
        elif wavelen > low_wavelen:
            out.append(f / factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append((f32(1.0) - smooth) * f / factor + smooth * f)
    return out


def cos_sin(ckpt, n, dtype):
    """[n, head_dim/2] cos and sin as the engine's backend/rope.rs forms
    them: the angle is the f32 product of position and f32 frequency, its
    cos and sin are taken in float64 and rounded to f32 (and on to `dtype`)."""
    pos = np.arange(n, dtype=np.float32)[:, None]
    angle = (pos * np.asarray(ckpt.inv_freq, dtype=np.float32)[None, :]).astype(np.float64)
    cos = torch.from_numpy(np.cos(angle).astype(np.float32)).to(dtype).to(ckpt.device)
    sin = torch.from_numpy(np.sin(angle).astype(np.float32)).to(dtype).to(ckpt.device)
    return cos, sin


def rope(x, cos, sin):
    """Rotate-half RoPE of x [heads, n, d] with cos, sin [n, d/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def forward(ckpt, tokens, rounding=True, dtype=torch.float32):
    """Logits [len(tokens), vocab] (in `dtype`) of one sequence, causal."""
    if rounding:
        def bf16(t):
            return t.to(torch.bfloat16).to(dtype)
    else:
        def bf16(t):
            return t
    n = len(tokens)
    nh, nkv, d, eps = ckpt.heads, ckpt.kv_heads, ckpt.head_dim, ckpt.eps
    ids = torch.tensor(tokens, device=ckpt.device)
    res = ckpt.tensors["model.embed_tokens.weight"][ids].to(dtype)
    cos, sin = cos_sin(ckpt, n, dtype)
    mask = torch.full((n, n), float("-inf"), dtype=dtype, device=ckpt.device).triu(1)
    w = ckpt.weight
    for i in range(ckpt.layers):
        p = f"model.layers.{i}."
        x1 = bf16(rmsnorm(res, w(p + "input_layernorm.weight", dtype), eps))
        qkv = []
        for name, heads in (("q", nh), ("k", nkv), ("v", nkv)):
            y = x1 @ w(p + f"self_attn.{name}_proj.weight", dtype).T
            bias = ckpt.maybe(p + f"self_attn.{name}_proj.bias", dtype)
            if bias is not None:
                y = y + bias
            y = y.view(n, heads, d).transpose(0, 1)
            norm = ckpt.maybe(p + f"self_attn.{name}_norm.weight", dtype)
            if norm is not None:
                y = rmsnorm(y, norm, eps)
            qkv.append(y)
        q, k, v = qkv
        q = rope(q, cos, sin)
        k = bf16(rope(k, cos, sin))
        v = bf16(v)
        group = nh // nkv
        k = k.repeat_interleave(group, dim=0)
        v = v.repeat_interleave(group, dim=0)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(d) + mask
        attn = torch.softmax(scores, dim=-1) @ v
        attn = bf16(attn.transpose(0, 1).reshape(n, nh * d))
        res = res + attn @ w(p + "self_attn.o_proj.weight", dtype).T
        x2 = bf16(rmsnorm(res, w(p + "post_attention_layernorm.weight", dtype), eps))
        gate = x2 @ w(p + "mlp.gate_proj.weight", dtype).T
        up = x2 @ w(p + "mlp.up_proj.weight", dtype).T
        act = bf16(torch.nn.functional.silu(gate) * up)
        res = res + act @ w(p + "mlp.down_proj.weight", dtype).T
    final = bf16(rmsnorm(res, w("model.norm.weight", dtype), eps))
    return final @ ckpt.lm_head(dtype).T
