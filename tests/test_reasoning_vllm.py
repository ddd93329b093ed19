"""The vLLM backend's reasoning traces (issue 17, part 1) against the test double tests/fake_vllm: with
``engine_args.reasoning_parser`` the reply is split by vLLM's own parser (``vllm.reasoning.ReasoningParserManager``,
``extract_reasoning``, or ``extract_reasoning_content`` in older vLLM), as ``vllm serve --reasoning-parser`` splits
it; without one, ``<think>`` tags are the fallback. Trace tokens are counted with the served model's tokenizer.
A prompt containing ``THINK_IN_VLLM`` gets a thinking reply from the double (``THINK_CLOSE_IN_VLLM``: only the
closing tag, as when the chat template opened the block).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from joydataforge.errors import ConfigError
from joydataforge.models.backends import vllm_offline
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway

FAKE = Path(__file__).parent / "fake_vllm"
MODULES = ("vllm", "vllm.sampling_params", "vllm.reasoning")


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(FAKE))
    for name in MODULES:
        sys.modules.pop(name, None)
    import vllm
    import vllm.reasoning

    assert vllm.__file__.startswith(str(FAKE))
    vllm.CALLS.clear()
    vllm.LOADS.clear()
    vllm.reasoning.CREATED.clear()
    monkeypatch.setattr(vllm_offline._Engine, "_engines", {})
    yield vllm
    for name in MODULES:
        sys.modules.pop(name, None)


def gateway(parser: str | None = None, model: str = "Qwen/QwQ-32B", **fields: Any) -> Gateway:
    engine_args: dict[str, Any] = {"max_model_len": 4096}
    if parser:
        engine_args["reasoning_parser"] = parser
    body = {"backend": "vllm", "model": model, "engine_args": engine_args, **fields}
    return Gateway(ModelRegistry.from_dict({"models": {"v": body}}, "test models.yaml"))


async def ask(gw: Gateway, text: str) -> Any:
    return await gw.model("v").chat([{"role": "user", "content": text}])


@pytest.mark.parametrize(("parser", "prompt"), [("deepseek_r1", "THINK_IN_VLLM"), ("qwen3", "THINK_CLOSE_IN_VLLM")])
async def test_the_named_reasoning_parser_splits_the_reply(fake_vllm: Any, parser: str, prompt: str) -> None:
    gw = gateway(parser)
    reply = await ask(gw, f"why {prompt}")
    assert reply.reasoning.startswith("weighing ") and "think>" not in reply.reasoning
    assert reply.text and "think>" not in reply.text and "weighing" not in reply.text
    # counted with the served model's tokenizer (the double's: one token a word), not estimated
    assert reply.usage.reasoning_tokens == len(reply.reasoning.split()) and not reply.usage.reasoning_estimated
    assert fake_vllm.LOADS[0]["kwargs"]["reasoning_parser"] == parser  # vLLM gets it too (structured outputs)
    assert fake_vllm.reasoning.CREATED == [
        {
            "parser": {"deepseek_r1": "DeepSeekR1ReasoningParser", "qwen3": "Qwen3ReasoningParser"}[parser],
            "tokenizer": "Qwen/QwQ-32B",
        }
    ]
    await ask(gw, "again THINK_IN_VLLM")
    assert len(fake_vllm.reasoning.CREATED) == 1  # made once per model
    assert gw.usage["v"].reasoning_tokens > reply.usage.reasoning_tokens  # both calls counted


async def test_a_parser_of_an_older_vllm_is_called_by_its_old_name(fake_vllm: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(fake_vllm.reasoning, "LEGACY", True)
    reply = await ask(gateway("deepseek_r1"), "THINK_IN_VLLM")
    assert reply.reasoning.startswith("weighing ") and "weighing" not in reply.text


async def test_a_reply_without_the_closing_tag_is_all_trace_as_vllm_says(fake_vllm: Any) -> None:
    reply = await ask(gateway("deepseek_r1"), "a plain question")  # the double answers without thinking
    assert reply.text == "" and reply.reasoning  # vLLM's parser: no </think>, the model never stopped thinking


async def test_without_a_parser_think_tags_are_the_fallback(fake_vllm: Any) -> None:
    reply = await ask(gateway(), "THINK_IN_VLLM")
    assert reply.reasoning.startswith("weighing ") and "think>" not in reply.text
    assert not reply.usage.reasoning_estimated and fake_vllm.reasoning.CREATED == []
    plain = await ask(gateway(), "a plain question")
    assert plain.reasoning is None and plain.text


async def test_the_models_reasoning_mode_decides_whether_the_parser_is_read(fake_vllm: Any) -> None:
    whole = await ask(gateway("deepseek_r1", reasoning="none"), "THINK_IN_VLLM")
    assert whole.reasoning is None and whole.text.startswith("<think>\nweighing")
    tags = await ask(gateway("deepseek_r1", reasoning="tags"), "THINK_IN_VLLM")
    assert tags.reasoning.startswith("weighing") and "think>" not in tags.text
    plain = await ask(gateway("deepseek_r1", reasoning="tags"), "a plain question")
    assert plain.reasoning is None and plain.text  # tags only: the parser's "all trace" is not read
    assert fake_vllm.reasoning.CREATED == []  # `none` and `tags` never read a parser: none is made
    field = await ask(gateway(reasoning="field"), "THINK_IN_VLLM")  # no parser, no tags read: kept whole
    assert field.reasoning is None and "</think>" in field.text
    parsed = await ask(gateway("qwen3", reasoning="field"), "THINK_IN_VLLM")  # the parser is the field
    assert parsed.reasoning.startswith("weighing") and "think>" not in parsed.text


async def test_an_unknown_parser_or_one_that_does_not_fit_the_model_is_a_config_error(fake_vllm: Any) -> None:
    with pytest.raises(ConfigError) as unknown:
        await ask(gateway("deepseek-r1"), "THINK_IN_VLLM")
    message = str(unknown.value)
    assert "vLLM has no reasoning parser 'deepseek-r1' (engine_args.reasoning_parser)" in message
    assert "Available parsers: deepseek_r1, qwen3" in message and "\n" not in message
    with pytest.raises(ConfigError, match="reasoning parser 'deepseek_r1' does not fit this model.*could not locate"):
        await ask(gateway("deepseek_r1", model="Qwen/Qwen2.5-7B-no-think-tokens"), "THINK_IN_VLLM")
