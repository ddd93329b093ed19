"""Provenance on every record (issue 14): each ``_meta.calls[]`` entry names the prompt (and hashes it), the
model and the id its backend answered with, the sampling parameters as sent, the sample and the attempt;
``_meta`` names the pipeline, the kind of step that made the record and where its input was read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from joydataforge.engine.prompted import call_meta, prompt_hash
from joydataforge.methods.joint.step import Joint
from joydataforge.models.backends.base import Completion, Usage
from joydataforge.models.cache import CallCache
from joydataforge.models.config import ModelConfig, ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.prompts.renderer import PromptLibrary, PromptTemplate
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, registry_of, run_pipeline, run_records, run_step, write_jsonl

PROMPTS = PromptLibrary()
CALL_KEYS = {"step", "model", "model_id", "prompt", "prompt_hash", "params", "sample", "attempt"}


def answer(messages: Any, schema: Any) -> str:
    if schema is not None:
        return json.dumps({"label": schema["properties"]["label"].get("enum", ["x"])[0], "reason": "because"})
    return "Boil it for eight minutes."


def test_calls_name_prompt_model_params_sample_and_attempt(tmp_path: Path):
    registry = registry_of(["m"], params={"temperature": 0.7, "max_tokens": 64})
    steps = [
        {"generate": {"model": "m", "prompt": "en/answer", "params": {"max_tokens": 32}}},
        {"label": {"model": "m", "prompt": "en/label", "name": "intent", "options": {"labels": ["x", "y"]}}},
    ]
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "input": "How do I boil an egg?"}])
    pipeline = make_pipeline(tmp_path, steps)
    pipeline.name = "eggs"
    backend = ScriptedBackend(answer)
    [record] = run_pipeline(pipeline, {"m": backend}, registry=registry).data
    generate, label = record["_meta"]["calls"]
    assert CALL_KEYS <= set(generate) and CALL_KEYS <= set(label)
    assert generate["step"] == "generate" and label["step"] == "intent"
    assert generate["prompt"] == "en/answer" and label["prompt"] == "en/label"
    assert generate["prompt_hash"] == prompt_hash(PROMPTS.get("en/answer")) != label["prompt_hash"]
    assert generate["model"] == "m" and generate["model_id"] == "scripted"  # the id the backend answered with
    # the model's parameters under the step's, and the seed: exactly what the backend was sent
    sent = backend.calls[0]
    assert generate["params"] == {**sent["params"], "seed": sent["seed"]}
    assert generate["params"]["temperature"] == 0.7 and generate["params"]["max_tokens"] == 32
    assert (generate["sample"], generate["attempt"]) == (0, 0)
    assert record["_meta"]["pipeline"] == "eggs"
    assert record["_meta"]["task"] == "label"  # the kind of the step whose call made the record last
    assert record["_meta"]["from"] == "in.jsonl:1"
    assert record["_meta"]["source_id"] == "a"


def test_the_attempt_of_a_reasked_json_reply_is_recorded():
    replies = iter(["not json at all", json.dumps({"label": "x", "reason": "r"})])
    backend = ScriptedBackend(lambda messages, schema: next(replies))
    from joydataforge.methods.generate.step import Label

    out = run_step(Label("m", "en/label", options={"labels": ["x"]}), {"input": "q"}, {"m": backend})
    [call] = out["_meta"]["calls"]
    assert call["attempt"] == 1 and call["sample"] == 0
    assert backend.calls[1]["seed"] == call["params"]["seed"] != backend.calls[0]["seed"]


def test_samples_of_a_repeated_drafter_are_recorded():
    a = ScriptedBackend(lambda messages, schema: f"draft {len(a.calls)}")
    fuser = ScriptedBackend(lambda messages, schema: "The fused answer.")
    out = run_step(Joint(["a", "a"], "fuser", draft_prompt="en/answer"), {"input": "q"}, {"a": a, "fuser": fuser})
    calls = out["_meta"]["calls"]
    assert [c["sample"] for c in calls] == [0, 1, 0]
    assert [c["prompt"] for c in calls] == ["en/answer", "en/answer", "en/joint_fuse"]


async def test_a_cached_call_records_the_same_provenance(tmp_path: Path):
    messages = [{"role": "user", "content": "q"}]
    metas = []
    for _ in range(2):
        cache = CallCache(tmp_path / "cache.sqlite")
        gateway = Gateway(registry_of(["m"]), cache, backends={"m": ScriptedBackend(answer)})
        completion = await gateway.model("m").chat(messages, sample=3, temperature=0.1)
        await gateway.close()
        metas.append(call_meta("s", "m", completion, PROMPTS.get("en/answer")))
    one, two = metas
    assert one["cached"] is False and two["cached"] is True
    assert {k: v for k, v in one.items() if k != "cached"} == {k: v for k, v in two.items() if k != "cached"}
    assert one["sample"] == 3 and one["params"]["temperature"] == 0.1


def test_prompt_hash_follows_the_words_not_the_name():
    base = PROMPTS.get("en/answer")
    same = PromptTemplate("other/name", "x", base.user, base.system, base.schema, base.include_history)
    changed = PromptTemplate("en/answer", "x", base.user + " Be brief.", base.system, None, base.include_history)
    assert prompt_hash(same) == prompt_hash(base) != prompt_hash(changed)
    completion = Completion("t", Usage(1, 2), model="served")
    meta = call_meta("s", "m", completion, ("pre_query:chatml", "<|im_start|>user\n"))
    assert meta["prompt"] == "pre_query:chatml" and len(meta["prompt_hash"]) == 16
    assert "prompt" not in call_meta("s", "m", completion)


@pytest.mark.timeout(30)
async def test_the_served_model_id_comes_from_the_server(mock_server):
    body = {"backend": "openai", "model": "configured-name", "base_url": mock_server.url, "params": {"top_p": 0.9}}
    gateway = Gateway(ModelRegistry.from_dict({"models": {"m": body}}, "test"))
    try:
        completion = await gateway.model("m").chat([{"role": "user", "content": "hi"}], temperature=0.2)
    finally:
        await gateway.close()
    sent = next(r["body"] for r in mock_server.stats()["last_requests"] if r["endpoint"] == "/v1/chat/completions")
    assert completion.model == "configured-name"  # what the mock answered ("model" of its reply)
    assert completion.params == {"top_p": 0.9, "temperature": 0.2, "seed": sent["seed"]}
    assert {k: sent[k] for k in ("top_p", "temperature", "seed")} == completion.params


def test_the_embedded_backend_labels_replies_with_its_model_or_gguf_name():
    from joydataforge.models.backends.llamacpp import LlamaCppBackend

    labelled = LlamaCppBackend(ModelConfig(name="x", backend="llamacpp", model="SmolLM2-135M", model_path="smollm2"))
    unnamed = LlamaCppBackend(ModelConfig(name="x", backend="llamacpp", model_path="smollm2"))
    assert labelled.label == "SmolLM2-135M"
    assert unnamed.label == Path(unnamed.path).stem and unnamed.label


def test_fan_out_records_each_get_the_stamps(tmp_path: Path):
    def reply(messages: Any, schema: Any) -> str:
        cases = [
            {"type": "paraphrase", "input": "How long do I boil an egg?"},
            {"type": "tone", "input": "Egg: boil how?"},
        ]
        return json.dumps({"cases": cases})

    result = run_records(
        tmp_path,
        [{"id": "p", "input": "How do I boil an egg?"}],
        [{"rewrite": {"model": "m", "types": ["paraphrase", "tone"]}}],
        {"m": ScriptedBackend(reply)},
    )
    assert len(result.data) == 2
    for record in result.data:
        meta = record["_meta"]
        assert (meta["pipeline"], meta["task"], meta["from"], meta["source_id"]) == (
            "pipeline",
            "rewrite",
            "in.jsonl:1",
            "p",
        )
        assert meta["calls"][0]["prompt"] == "en/rewrite"
