#!/usr/bin/env python3
"""Golden logits and greedy continuations from transformers, for the engine's tests.

Usage:
  hf_reference.py --model DIR --out golden.json [--preset NAME --seed N]
                  [--prompt-lens 6,17,41] [--new-tokens 64] [--device cpu] [--no-full]
  hf_reference.py --model DIR --check-only

It first asserts that transformers loads DIR unchanged: no missing,
unexpected or mismatched weights, and the config transformers builds has the
values written in config.json. Then, in float32, for each prompt it records:
  - `top`: at every position the 16 largest logits (ids and values),
  - `full`: full-vocabulary logits at the first, middle and last position,
    hex-encoded little-endian f32 (8 hex digits per value) to keep files small
    (`--no-full` leaves them out, for presets with a large vocabulary),
  - `greedy`: the next `--new-tokens` argmax tokens (no EOS stop), and the
    smallest top-1/top-2 logit gap seen along the way, so a test failure on a
    near-tie can be told apart from a real divergence.
Prompts are deterministic: bos followed by tokens from a fixed LCG.
"""

import argparse
import json
import struct
import sys

import torch
import transformers
from safetensors import safe_open


def lcg_tokens(n, vocab, state):
    out = []
    for _ in range(n):
        state = (state * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append(3 + (state >> 33) % (vocab - 3))
    return out, state


def load_unchanged(model_dir, device):
    with open(f"{model_dir}/config.json") as f:
        raw = json.load(f)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True
    )
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(key), f"{model_dir}: transformers reports {key}: {info[key]}"
    cfg = model.config
    assert type(model).__name__ == raw["architectures"][0], type(model).__name__
    for field in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
        "max_position_embeddings", "tie_word_embeddings",
    ):
        assert getattr(cfg, field) == raw[field], f"{field}: {getattr(cfg, field)} != {raw[field]}"
    # Weights transformers holds are the file's bytes, upcast.
    import glob
    for path in glob.glob(f"{model_dir}/*.safetensors"):
        with safe_open(path, framework="pt") as f:
            for name in list(f.keys())[:4] + ["model.norm.weight"]:
                if name in f.keys():
                    want = f.get_tensor(name).float()
                    got = model.get_parameter(name).detach().float()
                    assert torch.equal(want, got), f"{name} differs after load"
    if raw["tie_word_embeddings"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model.to(device).eval(), raw


def hex_f32(values):
    return struct.pack(f"<{len(values)}f", *values).hex()


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out")
    ap.add_argument("--preset", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-lens", default="6,17,41")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--top", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--no-full", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(0)
    model, raw = load_unchanged(args.model, args.device)
    print(f"{args.model}: transformers {transformers.__version__} loads it unchanged "
          f"({sum(p.numel() for p in model.parameters())} parameters)")
    if args.check_only:
        return
    vocab = raw["vocab_size"]
    bos = raw.get("bos_token_id") or 0

    def logits_of(ids):
        x = torch.tensor([ids], device=args.device)
        return model(input_ids=x, use_cache=False).logits[0].float().cpu()

    prompts = []
    state = 0x5EED
    for n in (int(s) for s in args.prompt_lens.split(",")):
        tokens, state = lcg_tokens(n - 1, vocab, state)
        ids = [bos] + tokens
        logits = logits_of(ids)
        top_vals, top_ids = logits.topk(args.top, dim=-1)
        full_positions = [] if args.no_full else sorted({0, len(ids) // 2, len(ids) - 1})
        seq = list(ids)
        min_gap = float("inf")
        for _ in range(args.new_tokens):
            last = logits_of(seq)[-1]
            two = last.topk(2).values
            min_gap = min(min_gap, float(two[0] - two[1]))
            seq.append(int(last.argmax()))
        prompts.append({
            "tokens": ids,
            "top_ids": top_ids.tolist(),
            "top_logits": top_vals.tolist(),
            "full": [{"position": p, "logits_f32_hex": hex_f32(logits[p].tolist())}
                     for p in full_positions],
            "greedy": seq[len(ids):],
            "greedy_min_top2_gap": min_gap,
        })
        print(f"  prompt len {len(ids)}: greedy {seq[len(ids):len(ids) + 8]}..., "
              f"min top-2 gap {min_gap:.2e}")
    golden = {
        "preset": args.preset,
        "seed": args.seed,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": args.device,
        "dtype": "float32",
        "vocab_size": vocab,
        "prompts": prompts,
    }
    with open(args.out, "w") as f:
        json.dump(golden, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
