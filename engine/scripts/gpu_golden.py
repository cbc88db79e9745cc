#!/usr/bin/env python3
"""Reference side of the CUDA backend's golden test (runs on the GPU machine).

  gpu_golden.py make PRESET DIR   write a seeded random HF checkpoint of the
                                  preset's shapes, 64 prompts, and the
                                  transformers f32 logits of prompts 0..3
  gpu_golden.py check DIR         read gpu_generated.json (greedy continuations
                                  written by the Rust test) and report the
                                  teacher-forced top-1 agreement with
                                  transformers in f32, batch 1 and batch 64

Weights (like `engine synth`): matrices and embeddings N(0, initializer_range
= 0.02); norm weights 1 + N(0, 0.05) and biases N(0, 0.02) so that they are
exercised. DYNO_GOLDEN_WEIGHTS=stress instead draws linear layers from
N(0, 1/fan_in), so that every layer moves the residual stream as much as the
embedding: a harsher test of bf16 error accumulation. `make` also prints how
far transformers' own bf16 forward is from its f32 forward, for scale.
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

PRESETS = {
    "smollm2-135m": (LlamaConfig, dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                       num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                       head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
                                       max_position_embeddings=8192, tie_word_embeddings=True)),
    "qwen3-0.6b": (Qwen3Config, dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                                     num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                                     head_dim=128, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                     max_position_embeddings=40960, tie_word_embeddings=True)),
    "qwen2.5-0.5b": (Qwen2Config, dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                       num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                       rms_norm_eps=1e-6, rope_theta=1000000.0,
                                       max_position_embeddings=32768, tie_word_embeddings=True)),
}


def make(preset, out):
    cls, kw = PRESETS[preset]
    cfg = cls(**kw, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    stress = os.environ.get("DYNO_GOLDEN_WEIGHTS") == "stress"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.05 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn_like(p))
            elif "embed_tokens" in name or not stress:
                p.copy_(0.02 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(1)
    prompts = []
    for _ in range(64):
        n = int(torch.randint(16, 65, (1,), generator=g))
        prompts.append(torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist())
    json.dump(prompts, open(os.path.join(out, "prompts.json"), "w"))
    ref = load_f32(out)
    rows = []
    with torch.no_grad():
        for p in prompts[:4]:
            logits = ref(torch.tensor([p], device="cuda")).logits[0].float()
            rows.append(logits.cpu())
    torch.cat(rows).numpy().astype("<f4").tofile(os.path.join(out, "ref_logits.bin"))
    del ref
    hf16 = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.bfloat16).cuda().eval()
    worst = 0.0
    with torch.no_grad():
        for p, r in zip(prompts[:4], rows):
            got = hf16(torch.tensor([p], device="cuda")).logits[0].float().cpu()
            worst = max(worst, float(((got - r).norm(dim=-1) / r.norm(dim=-1)).max()))
    print(f"HF_BF16 {preset}: transformers bf16 vs f32 worst relative L2 per position {worst:.3e}")
    print(f"made {preset} in {out}")


def load_f32(path):
    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32,
                                                attn_implementation="eager").cuda().eval()


def check(out):
    ref = load_f32(out)
    prompts = json.load(open(os.path.join(out, "prompts.json")))
    gen = json.load(open(os.path.join(out, "gpu_generated.json")))
    report = {}
    for name, ps in (("batch1", prompts[:1]), ("batch64", prompts[:64])):
        agree = total = near_tie = 0
        for p, g in zip(ps, gen[name]):
            seq = torch.tensor([p + g[:-1]], device="cuda")
            with torch.no_grad():
                logits = ref(seq).logits[0].float()
            preds = logits[len(p) - 1:].argmax(-1).tolist()
            top2 = logits[len(p) - 1:].topk(2, -1).values
            for j, (want, got) in enumerate(zip(preds, g)):
                total += 1
                if want == got:
                    agree += 1
                elif float(top2[j, 0] - top2[j, 1]) < 0.05:
                    near_tie += 1
        report[name] = dict(agree=agree, total=total, rate=agree / total, mismatches_within_0_05=near_tie,
                            launches_per_decode_step=gen.get(f"{name}_launches_per_decode_step"))
        print(f"GREEDY {os.path.basename(out)} {name}: top-1 agreement {agree}/{total} = {agree / total:.4f}"
              f" (mismatches at near-ties <0.05: {near_tie})")
    json.dump(report, open(os.path.join(out, "greedy_report.json"), "w"))
    return all(r["rate"] >= 0.99 for r in report.values())


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        sys.exit(0 if check(sys.argv[2]) else 1)
