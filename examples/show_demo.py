"""Print what ``make demo`` made (``out/demo/data.jsonl``), and how to get Chinese answers from a real model.

python examples/show_demo.py out/demo
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

NEXT = """\
SmolLM2-135M writes fluent English and picks a label from a list (the reply can be nothing else), but it
knows little medicine: read the answers as a demonstration of the pipeline, not as advice. It cannot write
Chinese, so it answered the English rendering of each query.

--- Chinese answers: the same pipeline on a real model ---
1. Serve a model with an OpenAI-compatible API, for example
     vllm serve Qwen/Qwen2.5-7B-Instruct --served-model-name default --port 8000
   (or llama.cpp's llama-server or Ollama on port 8000), or use a hosted one:
   export OPENAI_API_KEY=... (model `openai`) or DEEPSEEK_API_KEY=... (model `deepseek`).
2. In examples/demo.yaml, change the generate step to
     model: local-openai      # the server on 127.0.0.1:8000; or openai, deepseek (docs/models.md)
     prompt: zh/answer        # answers the Chinese query (`input`) itself
     output_field: target
3. joyforge run examples/demo.yaml -o out/demo-zh
"""


def wrapped(text: str, indent: str) -> str:
    return textwrap.fill(" ".join(str(text).split()), 100, initial_indent=indent, subsequent_indent=" " * len(indent))


def main(folder: str) -> None:
    data = Path(folder) / "data.jsonl"
    records = [json.loads(line) for line in data.read_text("utf-8").splitlines() if line.strip()]
    print(f"--- {data}: {len(records)} records (all fields in the file; main ones here) ---")
    for record in records:
        print(f"{record.get('input', '').strip()}  ->  label: {record.get('label')}")
        print(wrapped(record.get("input_en", ""), "  Q: "))
        print(wrapped(record.get("answer_en", ""), "  A: "))
    failures = Path(folder) / "failures.jsonl"
    failed = len(failures.read_text("utf-8").splitlines()) if failures.exists() else 0
    if failed:
        print(f"({failed} record(s) failed: {failures}; `joyforge run examples/demo.yaml -o {folder} --retry-failed`)")
    print()
    print(NEXT, end="")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/demo")
