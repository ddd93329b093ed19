"""A real OpenAI-compatible peer: llama-cpp-python's own server serving the bundled GGUF on 127.0.0.1."""

import json
import urllib.request
from pathlib import Path

import pytest

from tests.support.harness import assert_run_finished
from tests.support.llama_server import llama_server as start_llama_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]")
    with start_llama_server(tmp_path_factory.mktemp("llama_server") / "server.log") as url:
        yield url


def test_pipeline_through_openai_backend(llama_server, tmp_path: Path):
    from click.testing import CliRunner

    from joydataforge.cli import cli

    (tmp_path / "in.jsonl").write_text(
        "".join(
            json.dumps({"id": f"q{i}", "input": text}, ensure_ascii=False) + "\n"
            for i, text in enumerate(["How do I boil an egg?", "What is 2 + 2?", "孕期可以吃布洛芬吗？"])
        ),
        "utf-8",
    )
    (tmp_path / "models.yaml").write_text(
        f"models:\n  peer:\n    backend: openai\n    model: smollm2\n    base_url: {llama_server}\n"
        "    max_concurrency: 2\n    timeout: 120\n    params: {max_tokens: 48, temperature: 0.0}\n",
        "utf-8",
    )
    (tmp_path / "pipeline.yaml").write_text(
        "input: {path: in.jsonl}\nmodels: models.yaml\n"
        "steps:\n  - generate: {model: peer, prompt: en/answer}\n"
        "  - label: {model: peer, prompt: en/label, options: {labels: [cooking, math, medicine]}}\n"
        "output: {dir: out}\nrun: {concurrency: 2, cache: cache.sqlite}\n",
        "utf-8",
    )
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "pipeline.yaml"), "--no-progress"], catch_exceptions=False)
    assert_run_finished(result, tmp_path / "out")
    out = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text("utf-8").splitlines()]
    failures = (tmp_path / "out" / "failures.jsonl").read_text("utf-8").splitlines()
    assert len(out) + len(failures) == 3 and len(out) >= 2
    for record in out:
        assert record["target"].strip()
        assert record["label"] in {"cooking", "math", "medicine"}
        assert record["_meta"]["calls"][0]["prompt_tokens"] > 0
    # A second run into a new folder is served from the call cache: no tokens spent.
    again = CliRunner().invoke(
        cli,
        ["run", str(tmp_path / "pipeline.yaml"), "-o", str(tmp_path / "out2"), "--no-progress"],
        catch_exceptions=False,
    )
    assert_run_finished(again, tmp_path / "out2")
    summary = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert summary["cache_hits"] >= 2 * len(out)
    assert summary["models"]["peer"]["calls"] <= 3 * len(failures)  # only earlier failures may be asked again


def test_complete_n_gives_n_samples_whether_or_not_the_server_honours_n(llama_server):
    """llama_cpp.server accepts ``n`` on /v1/completions but drops it (app.py excludes it from the call): one
    choice comes back. The openai backend asks for the rest one by one, so complete_n still gives n samples."""
    import asyncio

    from joydataforge.models.config import ModelRegistry
    from joydataforge.models.gateway import Gateway

    prompt = "<|im_start|>user\n"
    params = {"max_tokens": 16, "temperature": 1.0, "stop": ["<|im_end|>"]}
    request = urllib.request.Request(
        llama_server + "/completions",
        method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"prompt": prompt, "n": 3, "seed": 1, **params}).encode(),
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        honoured = len(json.loads(response.read())["choices"])
    assert honoured in (1, 3)
    registry = ModelRegistry.from_dict(
        {"models": {"peer": {"backend": "openai", "model": "smollm2", "base_url": llama_server, "timeout": 120}}},
        "test",
    )

    async def go():
        gateway = Gateway(registry)
        samples = await gateway.model("peer").complete_n(prompt, 3, **params)
        await gateway.close()
        return samples

    samples = asyncio.run(go())
    assert len(samples) == 3 and len({s.text for s in samples}) == 3  # distinct seeds, distinct samples
    assert all(s.usage.completion_tokens > 0 for s in samples)
