"""Renders prompts.json with the GGUF's chat template (jinja2, as
transformers' apply_chat_template does) into one JSON string per line.

usage: render_prompts.py MODEL.gguf PROMPTS.json GGUF_PY_DIR > rendered.txt
"""
import json
import sys

import jinja2

sys.path.insert(0, sys.argv[3])
import gguf  # noqa: E402  (llama.cpp's gguf-py, from the same sdist)

reader = gguf.GGUFReader(sys.argv[1])
template = reader.fields["tokenizer.chat_template"].contents()
env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
tmpl = env.from_string(template)
for messages in json.load(open(sys.argv[2])):
    text = tmpl.render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")
    print(json.dumps(text))
