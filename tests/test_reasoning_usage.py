"""Reasoning tokens in a run's accounting (issue 17, part 1): each model's ``reasoning_tokens`` (part of its
completion tokens) in the gateway's usage and summary.json, their total beside ``tokens``, and both in the table
``joyforge run`` prints when there are any. Replies come from the real HTTP mock server, whose
``[[mock:think=field]]`` answers carry ``completion_tokens_details.reasoning_tokens`` (its word count)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from joydataforge.cli import cli
from joydataforge.cli.run import print_summary
from joydataforge.cli.terminal import make_console
from joydataforge.engine.local import LocalExecutor
from joydataforge.engine.summary import RunSummary
from joydataforge.models.cache import CallCache
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.models.usage import ModelUsage
from tests.support.harness import make_pipeline, write_jsonl


def registry(base_url: str) -> ModelRegistry:
    body = {"backend": "openai", "model": "mock-model", "base_url": base_url, "max_retries": 0}
    return ModelRegistry.from_dict({"models": {"thinker": body, "plain": dict(body)}}, "test")


def test_model_usage_counts_reasoning_tokens_apart() -> None:
    usage = ModelUsage()
    usage.record(10, 20, 0.5, None, reasoning_tokens=12)
    usage.record(5, 7, 0.5, None)
    data = usage.as_dict()
    assert (data["completion_tokens"], data["reasoning_tokens"]) == (27, 12)


def test_the_gateway_counts_paid_reasoning_tokens_not_cached_ones(mock_server: Any, tmp_path: Path) -> None:
    async def go() -> tuple[ModelUsage, ModelUsage]:
        cache = CallCache(tmp_path / "cache.sqlite")
        try:
            gateway = Gateway(registry(mock_server.url), cache=cache)
            messages = [{"role": "user", "content": "what is two plus two [[mock:think=field]]"}]
            await gateway.model("thinker").chat(messages)
            await gateway.model("thinker").chat(messages)  # a cache hit: nothing paid, nothing counted
            await gateway.model("plain").chat([{"role": "user", "content": "hello"}])
            await gateway.close()
            return gateway.usage["thinker"], gateway.usage["plain"]
        finally:
            cache.close()

    thinker, plain = asyncio.run(go())
    assert (thinker.calls, thinker.cache_hits, thinker.reasoning_tokens) == (1, 1, 7)  # the mock counts words
    assert thinker.completion_tokens >= thinker.reasoning_tokens and plain.reasoning_tokens == 0


def run_thinking(tmp_path: Path, base_url: str) -> RunSummary:
    records = [{"id": f"r{i}", "input": f"question {i} [[mock:think=field]]"} for i in range(3)]
    records.append({"id": "plain", "input": "no thinking here"})
    write_jsonl(tmp_path / "in.jsonl", records)
    pipeline = make_pipeline(tmp_path, [{"generate": {"model": "thinker", "prompt": "en/answer"}}])
    reg = registry(base_url)
    return LocalExecutor(pipeline, registry=reg, gateway=Gateway(reg)).run_sync()


def test_summary_json_has_reasoning_tokens_per_model_and_in_total(tmp_path: Path, mock_server: Any) -> None:
    summary = run_thinking(tmp_path, mock_server.url)
    written = json.loads((tmp_path / "out" / "summary.json").read_text("utf-8"))
    rows = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text("utf-8").splitlines()]
    per_call = sum(c.get("reasoning_tokens", 0) for row in rows for c in row["_meta"]["calls"])
    assert per_call > 0
    assert written["models"]["thinker"]["reasoning_tokens"] == per_call == written["reasoning_tokens"]
    assert summary.reasoning_tokens == per_call and written["tokens"] == summary.tokens  # still in the tokens


def printed(summary: RunSummary) -> str:
    console = make_console(width=100)
    console.file = io.StringIO()
    print_summary(summary, console)
    text = "".join(ch for ch in console.file.getvalue() if not "\u2500" <= ch <= "\u257f")  # no box lines
    return " ".join(text.split())


def test_the_printed_summary_shows_reasoning_tokens_only_when_there_are_some() -> None:
    thinking = ModelUsage()
    thinking.record(1000, 2500, 1.0, None, reasoning_tokens=1800)
    text = printed(RunSummary(models={"qwen3": thinking.as_dict(), "plain": ModelUsage().as_dict()}))
    assert "reasoning tokens 1,800" in text and "out 2,500 · reasoning 1,800" in text
    assert text.count("reasoning") == 2  # the plain model's row says nothing about it
    none = printed(RunSummary(models={"plain": ModelUsage().as_dict()}))
    assert "reasoning" not in none


def test_joyforge_run_prints_them(tmp_path: Path, mock_server: Any) -> None:
    (tmp_path / "models.yaml").write_text(
        f"models:\n  thinker:\n    backend: openai\n    base_url: {mock_server.url}\n    model: mock-model\n", "utf-8"
    )
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "two plus two [[mock:think=field]]"}])
    (tmp_path / "p.yaml").write_text(
        "models: models.yaml\ninput: {path: in.jsonl}\nsteps:\n  - generate: {model: thinker, prompt: en/answer}\n"
        "output: {dir: out}\nrun: {cache: null, progress: false}\n",
        "utf-8",
    )
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "p.yaml")])
    assert result.exit_code == 0, result.output
    flat = " ".join("".join(ch for ch in result.output if not "\u2500" <= ch <= "\u257f").split())
    assert "reasoning tokens 5" in flat and "reasoning 5" in flat  # "thinking about: two plus two"
