#!/usr/bin/env python3
"""Reference side of the CUDA backend's golden test (runs on the GPU machine;
falls back to the CPU where there is no GPU, or set DYNO_GOLDEN_DEVICE).

  gpu_golden.py make PRESET DIR   run `$DYNO_ENGINE_BIN synth --preset PRESET
                                  --seed 0 --out DIR`, then write 64 prompts
                                  (prompts.json), the transformers f32 logits
                                  of prompts 0..3 (ref_logits.bin) and those
                                  of the engine-numerics forward
                                  (ref_logits_engine_numerics.bin), and its
                                  measured floor and noise (numerics.json)
  gpu_golden.py check DIR         read gpu_generated.json (greedy continuations
                                  written by the Rust test) and report the
                                  teacher-forced top-1 agreement with
                                  transformers in f32 and with the
                                  engine-numerics forward, batch 1 and 64

The .bin files hold the prompts' positions back to back, `vocab` little-endian
f32 logits each. The engine-numerics forward (engine_numerics.py) rounds to
bf16 exactly where the engine does: the engine's logits must sit close to it
(an implementation check), while its distance to transformers f32 is the bf16
floor that no engine with these rounding points can beat (NUMERICS_FLOOR).
"Close" is measured, not assumed: the same forward with f64 accumulation
differs from the f32 one by NUMERICS_NOISE, bf16-noise sized (see make()).
`make` first proves the mirror implements the architecture: with rounding
off it must match transformers f32 on prompt 0 (SELF_CHECK).

Exit status of `check`: 0 only if the issue's criterion holds (top-1
agreement ≥ 0.99 with transformers f32 at batch 1 and batch 64).
"""
import json
import os
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

import engine_numerics as en

# With rounding off the mirror is the architecture in f64; transformers f32
# differs from it by f32 accumulation noise only (~1e-6).
SELF_CHECK_MAX_REL_L2 = 1e-4
# Issue 4: greedy top-1 agreement with transformers f32.
MIN_AGREEMENT = 0.99
# A mismatch where the reference scores the engine's token within this of
# its own top-1 is a near-tie (counted separately in the report).
NEAR_TIE = 0.05


def rel_l2(got, want):
    """Relative L2 error per row of [n, vocab] tensors."""
    return (got - want).norm(dim=-1) / want.norm(dim=-1)


def synth(preset, out):
    engine = os.environ.get("DYNO_ENGINE_BIN")
    if not engine:
        sys.exit("gpu_golden.py make: set DYNO_ENGINE_BIN to the `engine` binary "
                 "(cargo build --release -p engine: target/release/engine)")
    if not (os.path.isfile(engine) and os.access(engine, os.X_OK)):
        sys.exit(f"gpu_golden.py make: DYNO_ENGINE_BIN={engine} is not an executable file")
    # PRESET:N keeps the first N layers (the largest shapes' Python
    # references would be slow at full depth).
    name, _, layers = preset.partition(":")
    cmd = [engine, "synth", "--preset", name, "--seed", "0", "--out", out]
    if layers:
        cmd += ["--layers", layers]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def make_prompts(vocab):
    g = torch.Generator().manual_seed(1)
    prompts = []
    for _ in range(64):
        n = int(torch.randint(16, 65, (1,), generator=g))
        prompts.append(torch.randint(0, vocab, (n,), generator=g).tolist())
    return prompts


def load_hf(path, dtype, device):
    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype,
                                                attn_implementation="eager").to(device).eval()


@torch.no_grad()
def hf_logits(model, tokens, device):
    return model(torch.tensor([tokens], device=device)).logits[0].float()


def write_bin(rows, path):
    torch.cat([r.float().cpu() for r in rows]).numpy().astype("<f4").tofile(path)


@torch.no_grad()
def make(preset, out):
    en.exact_f32_matmuls()
    device = en.pick_device()
    synth(preset, out)
    with open(os.path.join(out, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    prompts = make_prompts(vocab)
    with open(os.path.join(out, "prompts.json"), "w") as f:
        json.dump(prompts, f)

    hf = load_hf(out, torch.float32, device)
    ref = [hf_logits(hf, p, device).cpu() for p in prompts[:4]]
    write_bin(ref, os.path.join(out, "ref_logits.bin"))
    del hf

    ckpt = en.Checkpoint(out, device)
    plain = en.forward(ckpt, prompts[0], rounding=False, dtype=torch.float64).float().cpu()
    self_err = float(rel_l2(plain, ref[0]).max())
    print(f"SELF_CHECK {preset}: engine-numerics forward without rounding (f64) vs transformers f32 "
          f"worst relative L2 per position {self_err:.3e} (bound {SELF_CHECK_MAX_REL_L2:.0e})")
    if not self_err < SELF_CHECK_MAX_REL_L2:
        sys.exit(f"SELF_CHECK {preset} failed: the engine-numerics forward does not implement "
                 "the architecture transformers runs")
    num = [en.forward(ckpt, p).cpu() for p in prompts[:4]]
    write_bin(num, os.path.join(out, "ref_logits_engine_numerics.bin"))
    floor = max(float(rel_l2(n, r).max()) for n, r in zip(num, ref))
    same = sum(int((n.argmax(-1) == r.argmax(-1)).sum()) for n, r in zip(num, ref))
    total = sum(r.shape[0] for r in ref)
    print(f"NUMERICS_FLOOR {preset}: engine-numerics reference vs transformers f32 worst rel L2 "
          f"{floor:.3e}, top-1 agreement {same}/{total}")
    # The same roundings with f64 accumulation: how far summation order
    # alone moves this reference. Not ~1e-6: an order-level difference flips
    # a few bf16 roundings, each flip moves its element by up to one bf16
    # ulp, which flips more roundings downstream, and within a few layers
    # the two runs differ by bf16 noise. The GPU, summing in its own order,
    # is one more such run, so this is the scale of its expected distance
    # to the reference (the Rust test bounds it by a multiple of this).
    noise = max(float(rel_l2(en.forward(ckpt, p, dtype=torch.float64).float().cpu(), n).max())
                for p, n in zip(prompts[:4], num))
    print(f"NUMERICS_NOISE {preset}: engine-numerics f32 vs f64 accumulation (same bf16 roundings) "
          f"worst rel L2 {noise:.3e}")
    with open(os.path.join(out, "numerics.json"), "w") as f:
        json.dump(dict(self_check_rel_l2=self_err, floor_rel_l2=floor, floor_top1_agree=same,
                       floor_top1_total=total, accumulation_noise_rel_l2=noise), f, indent=1)
    del ckpt, num

    hf16 = load_hf(out, torch.bfloat16, device)
    worst = max(float(rel_l2(hf_logits(hf16, p, device).cpu(), r).max()) for p, r in zip(prompts[:4], ref))
    print(f"HF_BF16 {preset}: transformers bf16 vs f32 worst relative L2 per position {worst:.3e}")
    print(f"made {preset} in {out} (device {device})")


def agreement(logits_of, prompts, gens):
    """Teacher-forced top-1 agreement of greedy continuations `gens` with
    the reference whose logits `logits_of(tokens)` returns."""
    agree = total = near_tie = 0
    for p, g in zip(prompts, gens):
        logits = logits_of(p + g[:-1])[len(p) - 1:]
        preds = logits.argmax(-1).tolist()
        for j, (want, got) in enumerate(zip(preds, g)):
            total += 1
            if want == got:
                agree += 1
            elif float(logits[j, want] - logits[j, got]) < NEAR_TIE:
                near_tie += 1
    return dict(agree=agree, total=total, rate=agree / max(total, 1), mismatches_near_tie=near_tie)


@torch.no_grad()
def check(out):
    en.exact_f32_matmuls()
    device = en.pick_device()
    with open(os.path.join(out, "prompts.json")) as f:
        prompts = json.load(f)
    with open(os.path.join(out, "gpu_generated.json")) as f:
        gen = json.load(f)
    hf = load_hf(out, torch.float32, device)
    ckpt = en.Checkpoint(out, device)
    refs = {
        "transformers_f32": lambda toks: hf_logits(hf, toks, device),
        "engine_numerics": lambda toks: en.forward(ckpt, toks),
    }
    name = os.path.basename(os.path.normpath(out))
    report = {}
    for ref_name, logits_of in refs.items():
        report[ref_name] = {}
        for batch, ps in (("batch1", prompts[:1]), ("batch64", prompts[:64])):
            r = agreement(logits_of, ps, gen[batch])
            r["launches_per_decode_step"] = gen.get(f"{batch}_launches_per_decode_step")
            report[ref_name][batch] = r
            print(f"GREEDY {name} {batch} vs {ref_name}: top-1 agreement {r['agree']}/{r['total']} = "
                  f"{r['rate']:.4f} (mismatches at near-ties <{NEAR_TIE}: {r['mismatches_near_tie']})",
                  flush=True)
    with open(os.path.join(out, "greedy_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    failed = [b for b, r in report["transformers_f32"].items() if r["rate"] < MIN_AGREEMENT]
    if failed:
        print(f"GREEDY {name}: FAIL issue criterion (agreement >= {MIN_AGREEMENT} vs transformers f32) "
              f"at {', '.join(failed)}")
    else:
        print(f"GREEDY {name}: PASS issue criterion (agreement >= {MIN_AGREEMENT} vs transformers f32)")
    return not failed


def main(argv):
    if len(argv) == 4 and argv[1] == "make":
        make(argv[2], argv[3])
    elif len(argv) == 3 and argv[1] == "check":
        sys.exit(0 if check(argv[2]) else 1)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
