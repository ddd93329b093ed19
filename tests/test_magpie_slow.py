"""Magpie end to end on the embedded SmolLM2, and through the openai backend against llama_cpp.server
serving the same GGUF (raw completions through /v1/completions). Slow: loads the model, starts a server."""

import json
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.methods.magpie.slots import write_slots
from joydataforge.methods.magpie.templates import JinjaChatFormat, resolve_format
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from tests.test_llama_server import llama_server  # noqa: F401  (the module-scoped server fixture)

pytestmark = pytest.mark.slow

SMOL_PRE_QUERY = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n"
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()] if path.exists() else []


def magpie_pipeline(
    tmp_path: Path, model: str, out: str, n: int = 3, models: str | None = None, cache: str | None = None, **magpie
) -> Pipeline:
    write_slots(tmp_path / "slots.jsonl", n)
    data = {
        "input": {"path": str(tmp_path / "slots.jsonl")},
        "steps": [
            {"magpie": {"model": model, "attempts": 2, "params": {"max_tokens": 48}, **magpie}},
            {"magpie_response": {"model": model, "params": {"max_tokens": 32}}},
        ],
        "output": {"dir": str(tmp_path / out)},
        "run": {"cache": cache, "progress": False, "concurrency": 2},
    }
    if models:
        data["models"] = models
    return Pipeline.from_dict(data)


async def test_embedded_model_template_comes_from_the_gguf():
    gateway = Gateway(ModelRegistry.load())
    source = await gateway.model("smollm2").chat_template()
    await gateway.close()
    assert source is not None and "gguf metadata" in source.origin
    assert source.bos_token == "<|im_start|>" and source.eos_token == "<|im_end|>"
    fmt = resolve_format("auto", source)
    assert isinstance(fmt, JinjaChatFormat)
    assert fmt.pre_query() == SMOL_PRE_QUERY
    assert fmt.stops[0] == "<|im_end|>"


def test_end_to_end_on_the_embedded_model_resumes_and_caches(tmp_path):
    cache = str(tmp_path / "calls.sqlite")
    summary = LocalExecutor(magpie_pipeline(tmp_path, "smollm2", "a", cache=cache)).run_sync()
    assert summary.records_in == 3 and summary.inputs_done + summary.filtered + summary.failed == 3
    data = read_jsonl(tmp_path / "a" / "data.jsonl")
    assert data, summary.steps  # a 135M model still writes usable questions from its template
    for record in data:
        assert record["input"].strip() and record["target"].strip()
        assert record["magpie"]["pre_query"] == SMOL_PRE_QUERY
        assert "gguf metadata" in record["magpie"]["template_origin"]
        assert record["messages"][-1] == {"role": "assistant", "content": record["target"]}
        assert "<|im_end|>" not in record["input"] and "<|im_start|>" not in record["input"]
    calls = summary.models["smollm2"]["calls"]
    again = LocalExecutor(magpie_pipeline(tmp_path, "smollm2", "a", cache=cache)).run_sync()
    assert again.skipped == 3 and again.models.get("smollm2", {}).get("calls", 0) == 0
    fresh = LocalExecutor(magpie_pipeline(tmp_path, "smollm2", "b", cache=cache)).run_sync()
    assert fresh.cache_hits == calls  # same slots, same seed: the same questions, answered by the cache

    def content(records):
        return [{k: v for k, v in r.items() if k != "_meta"} for r in records]

    cached = read_jsonl(tmp_path / "b" / "data.jsonl")
    assert content(cached) == content(data)
    assert all(call["cached"] for r in cached for call in r["_meta"]["calls"])


def test_through_the_openai_backend_against_llama_cpp_server(llama_server, tmp_path):  # noqa: F811
    """Raw completions over HTTP: template from the table (guessed from the model id), then derived from a
    tokenizer_config.json written from the GGUF's own template."""
    import llama_cpp

    from joydataforge.models.backends.smollm2 import bundled_gguf_path

    llama = llama_cpp.Llama(model_path=str(bundled_gguf_path()), n_ctx=256, verbose=False, vocab_only=True)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": llama.metadata["tokenizer.chat_template"],
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
            }
        ),
        "utf-8",
    )
    (tmp_path / "models.yaml").write_text(
        f"models:\n  peer:\n    backend: openai\n    model: smollm2\n    base_url: {llama_server}\n"
        "    max_concurrency: 2\n    timeout: 120\n    params: {temperature: 0.8}\n"
        f"  peer-with-template:\n    backend: openai\n    model: smollm2\n    base_url: {llama_server}\n"
        f"    chat_template: {tmp_path / 'tokenizer_config.json'}\n    max_concurrency: 2\n    timeout: 120\n",
        "utf-8",
    )
    for model, origin in (("peer", "built-in table 'smollm2'"), ("peer-with-template", "tokenizer config")):
        summary = LocalExecutor(
            magpie_pipeline(tmp_path, model, model, models=str(tmp_path / "models.yaml"))
        ).run_sync()
        assert summary.models[model]["errors"] == 0, summary.models
        assert summary.steps["magpie"]["calls"] >= 3
        data = read_jsonl(tmp_path / model / "data.jsonl")
        assert data, summary.steps
        for record in data:
            assert record["magpie"]["pre_query"] == SMOL_PRE_QUERY
            assert record["magpie"]["template_origin"].startswith(origin)
            assert record["input"].strip() and record["target"].strip()


def test_cli_runs_both_stages_and_exports(tmp_path):
    from click.testing import CliRunner

    from joydataforge.cli.magpie import magpie_command

    out = tmp_path / "magpie"
    result = CliRunner().invoke(
        magpie_command,
        [
            "-n",
            "3",
            "-o",
            str(out),
            "--max-tokens",
            "48",
            "--response-max-tokens",
            "32",
            "--attempts",
            "2",
            "--no-progress",
            "--export",
            "sharegpt",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    for name in (
        "slots.jsonl",
        "magpie-instructions.yaml",
        "magpie-conversations.yaml",
        "instructions/summary.json",
        "conversations/summary.json",
    ):
        assert (out / name).exists(), name
    conversations = read_jsonl(out / "conversations" / "data.jsonl")
    exported = read_jsonl(out / "export.sharegpt.jsonl")
    assert len(exported) == len(conversations)
    for row, record in zip(exported, conversations):
        assert row["conversations"][-2] == {"from": "human", "value": record["input"]}
        assert row["conversations"][-1] == {"from": "gpt", "value": record["target"]}
    # The written pipeline files are real pipelines: `joyforge run` accepts them.
    Pipeline.from_yaml(out / "magpie-conversations.yaml")


def test_example_pipeline_runs_on_the_embedded_model(tmp_path):
    example = Path(__file__).parent.parent / "examples" / "magpie.yaml"
    pipeline = Pipeline.from_yaml(example, overrides={"input.limit": 2, "run.cache": None})
    pipeline.output.dir = str(tmp_path / "out")
    summary = LocalExecutor(pipeline, progress=False).run_sync()
    assert summary.records_in == 2 and summary.inputs_done + summary.filtered + summary.failed == 2
    failures = read_jsonl(tmp_path / "out" / "failures.jsonl")
    assert len(failures) == summary.failed and all(f["raw"] is not None or f["error"] for f in failures)
    for record in read_jsonl(tmp_path / "out" / "data.jsonl"):
        assert record["input"] and record["target"] and record["messages"][-1]["content"] == record["target"]
        assert record["task_category"] in {
            "Information seeking",
            "Reasoning",
            "Planning",
            "Editing",
            "Coding & Debugging",
            "Math",
            "Role playing",
            "Data analysis",
            "Creative writing",
            "Advice seeking",
            "Brainstorming",
            "Others",
        }
        assert record["input_quality"] in {"very poor", "poor", "average", "good", "excellent"}
