"""Magpie steps through the real executor and gateway, with a scripted backend (exact, fast)."""

import json
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.errors import ConfigError
from joydataforge.methods.magpie.slots import write_slots
from joydataforge.models.backends.base import Completion, Usage
from joydataforge.models.cache import CallCache
from joydataforge.models.chat_template import ChatTemplateSource
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from tests.scripted_backend import ScriptedBackend

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
SMOL_PRE_QUERY = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n"
)

REGISTRY = ModelRegistry.from_dict(
    {
        "models": {
            "m": {"backend": "llamacpp", "model": "scripted", "max_concurrency": 1},
            "judge": {"backend": "llamacpp", "model": "scripted-judge"},
            "server": {"backend": "openai", "model": "gpt-4o-mini", "base_url": "http://127.0.0.1:9/v1"},
        }
    },
    "test",
)


class MagpieBackend(ScriptedBackend):
    """Completions from a list (one per call, in order), chats from a function; SmolLM2's template."""

    def __init__(
        self,
        completions: list[str | tuple[str, str]] | None = None,
        reply=None,
        template: bool = True,
        native_n: bool = False,
    ):
        super().__init__(reply or (lambda messages, schema: f"answer to: {messages[-1]['content']}"), native_n=native_n)
        self.completions = list(completions or [])
        self.template = template

    def sample(self, prompt: str, seed: int | None) -> Completion:
        item = self.completions.pop(0) if self.completions else "What is the tallest mountain on Earth?"
        text, finish = item if isinstance(item, tuple) else (item, "stop")
        return Completion(text=text, usage=Usage(10, 5), finish_reason=finish)

    async def chat_template(self):
        if not self.template:
            return None
        return ChatTemplateSource(
            (FIXTURES / "smollm2.jinja").read_text("utf-8"), "<|im_start|>", "<|im_end|>", origin="scripted gguf"
        )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()] if path.exists() else []


def run(
    tmp_path: Path, steps: list, backends: dict, n: int = 3, out: str = "out", seed: int = 0, cache: str | None = None
):
    write_slots(tmp_path / "slots.jsonl", n)
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "slots.jsonl")},
            "steps": steps,
            "output": {"dir": str(tmp_path / out)},
            "run": {"cache": cache, "progress": False, "concurrency": 1, "seed": seed},
        }
    )
    call_cache = CallCache(cache) if cache else None  # a given gateway brings its own cache
    try:
        gateway = Gateway(REGISTRY, call_cache, backends=backends)
        summary = LocalExecutor(pipeline, registry=REGISTRY, gateway=gateway).run_sync()
    finally:
        if call_cache is not None:
            call_cache.close()
    return summary, read_jsonl(tmp_path / out / "data.jsonl"), read_jsonl(tmp_path / out / "failures.jsonl")


def test_instructions_from_the_derived_pre_query(tmp_path):
    backend = MagpieBackend(
        [
            "What is the capital of France?",
            "**Question:** How do I bake bread?",
            "Write a haiku about rain.<|im_end|>\n<|im_start|>assistant\nRain falls",
        ]
    )
    summary, data, failures = run(tmp_path, [{"magpie": {"model": "m", "params": {"max_tokens": 64}}}], {"m": backend})
    assert failures == [] and summary.records_out == 3
    assert [r["input"] for r in data] == [
        "What is the capital of France?",
        "How do I bake bread?",
        "Write a haiku about rain.",
    ]
    assert [r["id"] for r in data] == ["magpie-000001", "magpie-000002", "magpie-000003"]
    first = data[0]
    assert first["language"] == "en" and "system" not in first
    assert first["magpie"]["pre_query"] == SMOL_PRE_QUERY
    assert first["magpie"]["template_origin"] == "scripted gguf"
    assert "<|im_end|>" in first["magpie"]["stops"]
    assert data[1]["magpie"]["edits"] == ["strip_prefix"] and data[1]["magpie"]["raw"].startswith("**Question")
    call = backend.calls[0]
    assert call["prompt"] == SMOL_PRE_QUERY
    assert call["params"]["stop"] == first["magpie"]["stops"]
    assert call["params"]["max_tokens"] == 64 and call["params"]["temperature"] == 1.0
    assert len({c["seed"] for c in backend.calls}) == 3  # each slot its own sample
    assert summary.steps["magpie"]["instructions"] == 3
    assert summary.steps["magpie"]["edited:cut_special_tokens"] == 1


def test_drops_are_counted_by_reason(tmp_path):
    backend = MagpieBackend(
        [
            ("What is the best way to", "length"),
            "Hello! How can I assist you today?",
            "I like cats.",
            "",
            "Why is the sky blue?",
        ]
    )
    summary, data, _ = run(tmp_path, [{"magpie": {"model": "m"}}], {"m": backend}, n=5)
    assert [r["input"] for r in data] == ["Why is the sky blue?"]
    stats = summary.steps["magpie"]
    assert stats["dropped:truncated"] == stats["dropped:assistant_voice"] == stats["dropped:not_a_request"] == 1
    assert stats["dropped:empty"] == 1 and stats["calls"] == 5
    assert summary.filtered == 4


def test_attempts_draw_again_with_a_new_sample(tmp_path):
    backend = MagpieBackend(["Hi", "What is a black hole?"])
    summary, data, _ = run(tmp_path, [{"magpie": {"model": "m", "attempts": 3}}], {"m": backend}, n=1)
    assert data[0]["input"] == "What is a black hole?" and data[0]["magpie"]["attempt"] == 1
    assert backend.calls[0]["seed"] != backend.calls[1]["seed"]
    assert summary.steps["magpie"]["dropped:too_short"] == 1


def test_on_drop_keep_passes_dropped_ones_on_marked(tmp_path):
    backend = MagpieBackend(["I like cats.", "What is DNA?"])
    _, data, _ = run(tmp_path, [{"magpie": {"model": "m", "on_drop": "keep"}}], {"m": backend}, n=2)
    assert data[0]["magpie"]["drop"] == "not_a_request" and "drop" not in data[1]["magpie"]


def test_samples_fan_out_with_stable_ids(tmp_path):
    backend = MagpieBackend(["What is DNA?", "What is RNA?"])
    _, data, _ = run(tmp_path, [{"magpie": {"model": "m", "samples": 2}}], {"m": backend}, n=1)
    assert [(r["id"], r["input"]) for r in data] == [
        ("magpie-000001:0", "What is DNA?"),
        ("magpie-000001:1", "What is RNA?"),
    ]


def test_samples_of_a_slot_draw_at_the_same_time_with_order_free_seeds(tmp_path):
    import asyncio as aio

    class Slow(MagpieBackend):
        def __init__(self):
            super().__init__()
            self.in_flight = self.peak = 0

        async def complete(self, prompt, params, *, seed=None):
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            await aio.sleep(0.05)
            self.in_flight -= 1
            return Completion(text=f"What is item {seed % 1000}?", usage=Usage(1, 1), finish_reason="stop")

    backend = Slow()
    _, data, _ = run(tmp_path, [{"magpie": {"model": "judge", "samples": 3}}], {"judge": backend}, n=1)
    assert backend.peak == 3 and len(data) == 3
    again = Slow()
    _, data2, _ = run(tmp_path, [{"magpie": {"model": "judge", "samples": 3}}], {"judge": again}, n=1, out="again")
    assert [r["input"] for r in data] == [r["input"] for r in data2]  # each sample keeps its own seed


def test_same_seed_same_questions_other_seed_other_questions(tmp_path):
    seeds = []
    for out, seed in (("a", 0), ("b", 0), ("c", 1)):
        backend = MagpieBackend()
        run(tmp_path, [{"magpie": {"model": "m"}}], {"m": backend}, n=3, out=out, seed=seed)
        seeds.append([c["seed"] for c in backend.calls])
    assert seeds[0] == seeds[1] and seeds[0] != seeds[2]


def test_rerun_resumes_and_cache_answers(tmp_path):
    steps = [{"magpie": {"model": "m"}}]
    cache = str(tmp_path / "calls.sqlite")
    backend = MagpieBackend()
    run(tmp_path, steps, {"m": backend}, n=2, cache=cache)
    assert len(backend.calls) == 2
    again = MagpieBackend()
    summary, data, _ = run(tmp_path, steps, {"m": again}, n=3, cache=cache)  # one new slot
    assert len(again.calls) == 1 and summary.skipped == 2 and len(data) == 3


def sent_n(backend: ScriptedBackend) -> list[int]:
    return [call.get("n", 1) for call in backend.calls]


def test_samples_per_call_draws_a_slot_in_groups(tmp_path):
    backend = MagpieBackend([f"What is element {i}?" for i in range(5)], native_n=True)
    summary, data, _ = run(
        tmp_path, [{"magpie": {"model": "m", "samples": 5, "samples_per_call": 2}}], {"m": backend}, n=1
    )
    assert sent_n(backend) == [2, 2, 1]  # one request per group; the last group of one is a plain complete()
    assert [(r["id"], r["input"]) for r in data] == [(f"magpie-000001:{k}", f"What is element {k}?") for k in range(5)]
    meta = [r["magpie"] for r in data]
    assert [(m["n"], m["choice"], m["attempt"], m["samples_per_call"]) for m in meta] == [
        (2, 0, 0, 2),
        (2, 1, 0, 2),
        (2, 0, 0, 2),
        (2, 1, 0, 2),
        (1, 0, 0, 2),
    ]
    assert meta[0]["sample"] == meta[1]["sample"] != meta[2]["sample"] == meta[3]["sample"] != meta[4]["sample"]
    assert [m["raw"] for m in meta] == [r["input"] for r in data]
    stats = summary.steps["magpie"]
    assert (stats["calls"], stats["requests"], stats["instructions"]) == (5, 3, 5)
    # usage as the server reports it: the prompt once per request, each sample its own completion
    assert [[c["prompt_tokens"] for c in r["_meta"]["calls"]] for r in data] == [[10], [0], [10], [0], [10]]
    assert summary.models["m"]["calls"] == 3


def test_samples_per_call_without_a_native_n_falls_back_to_one_call_per_sample(tmp_path):
    backend = MagpieBackend([f"What is element {i}?" for i in range(3)])
    _, data, _ = run(tmp_path, [{"magpie": {"model": "m", "samples": 3, "samples_per_call": 3}}], {"m": backend}, n=1)
    seeds = [c["seed"] for c in backend.calls]
    assert len(data) == 3 and seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]


def test_grouped_draws_redraw_dropped_samples_in_the_next_round(tmp_path):
    backend = MagpieBackend(
        [
            "What is DNA?",
            "Hi",
            "What is RNA?",
            "I like cats.",  # round 0: samples 0-3
            "Hello! How can I assist you today?",
            "What is a gene?",  # round 1: samples 1, 3
            "What is a cell?",
        ],
        native_n=True,
    )  # round 2: sample 1
    summary, data, _ = run(
        tmp_path, [{"magpie": {"model": "m", "samples": 4, "samples_per_call": 4, "attempts": 3}}], {"m": backend}, n=1
    )
    assert sent_n(backend) == [4, 2, 1]
    assert len({c["seed"] for c in backend.calls}) == 3  # each round a new sample
    assert [(r["id"], r["input"], r["magpie"]["attempt"], r["magpie"]["n"], r["magpie"]["choice"]) for r in data] == [
        ("magpie-000001:0", "What is DNA?", 0, 4, 0),
        ("magpie-000001:1", "What is a cell?", 2, 1, 0),
        ("magpie-000001:2", "What is RNA?", 0, 4, 2),
        ("magpie-000001:3", "What is a gene?", 1, 2, 1),
    ]
    stats = summary.steps["magpie"]
    assert (stats["calls"], stats["requests"], stats["instructions"]) == (7, 3, 4)
    assert stats["dropped:too_short"] == stats["dropped:not_a_request"] == stats["dropped:assistant_voice"] == 1


def test_grouped_draws_give_up_after_attempts(tmp_path):
    backend = MagpieBackend(["What is DNA?", "Hi", "Hey"], native_n=True)
    steps = [{"magpie": {"model": "m", "samples": 2, "samples_per_call": 2, "attempts": 2, "on_drop": "keep"}}]
    _, data, _ = run(tmp_path, steps, {"m": backend}, n=1)
    assert sent_n(backend) == [2, 1]
    assert [(r["input"], r["magpie"]["attempt"], r["magpie"].get("drop")) for r in data] == [
        ("What is DNA?", 0, None),
        ("Hey", 1, "too_short"),
    ]


def test_grouped_draws_are_deterministic_and_resume_from_the_cache(tmp_path):
    steps = [{"magpie": {"model": "m", "samples": 3, "samples_per_call": 2}}]
    cache = str(tmp_path / "calls.sqlite")
    seeds = []
    for out, seed in (("a", 0), ("b", 0), ("c", 1)):
        backend = MagpieBackend(native_n=True)
        run(tmp_path, steps, {"m": backend}, n=2, out=out, seed=seed)
        seeds.append([(c["seed"], c.get("n", 1)) for c in backend.calls])
    assert seeds[0] == seeds[1] and seeds[0] != seeds[2] and [n for _, n in seeds[0]] == [2, 1, 2, 1]
    first = MagpieBackend([f"What is thing {i}?" for i in range(6)], native_n=True)
    _, data, _ = run(tmp_path, steps, {"m": first}, n=2, out="d", cache=cache)
    again = MagpieBackend(native_n=True)
    summary, replayed, _ = run(tmp_path, steps, {"m": again}, n=2, out="e", cache=cache)
    assert again.calls == [] and summary.cache_hits == 4
    assert [(r["id"], r["input"]) for r in replayed] == [(r["id"], r["input"]) for r in data]
    assert len({r["input"] for r in data}) == 6


def test_a_group_of_one_is_the_plain_call(tmp_path):
    """samples: 1 leaves nothing to group: samples_per_call changes neither the calls nor the cache keys."""
    cache = str(tmp_path / "calls.sqlite")
    plain = MagpieBackend(native_n=True)
    run(tmp_path, [{"magpie": {"model": "m"}}], {"m": plain}, n=2, out="a", cache=cache)
    grouped = MagpieBackend(native_n=True)
    summary, data, _ = run(
        tmp_path, [{"magpie": {"model": "m", "samples_per_call": 4}}], {"m": grouped}, n=2, out="b", cache=cache
    )
    assert sent_n(plain) == [1, 1] and grouped.calls == [] and summary.cache_hits == 2
    assert data[0]["magpie"]["samples_per_call"] == 4 and data[0]["magpie"]["n"] == 1


def test_samples_per_call_sends_n_to_an_openai_server(tmp_path, mock_server):
    registry = ModelRegistry.from_dict(
        {"models": {"srv": {"backend": "openai", "model": "mock-model", "base_url": mock_server.url}}}, "test"
    )
    write_slots(tmp_path / "slots.jsonl", 1)
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "slots.jsonl")},
            "steps": [
                {
                    "magpie": {
                        "model": "srv",
                        "template": "chatml",
                        "system": "[[mock:reply=What is DNA?]]",
                        "samples": 3,
                        "samples_per_call": 3,
                    }
                }
            ],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False},
        }
    )
    summary = LocalExecutor(pipeline, registry=registry).run_sync()
    data = read_jsonl(tmp_path / "out" / "data.jsonl")
    requests = mock_server.stats()["last_requests"]
    assert len(requests) == 1 and requests[0]["body"]["n"] == 3
    assert [r["input"] for r in data] == ["What is DNA?"] * 3 and [r["magpie"]["choice"] for r in data] == [0, 1, 2]
    assert summary.models["srv"]["calls"] == 1


def test_control_task_and_language(tmp_path):
    backend = MagpieBackend(["How do I solve x^2 = 4?", "如何解方程 x^2 = 4？"])
    summary, data, _ = run(
        tmp_path, [{"magpie": {"model": "m", "control_task": "math", "language": "zh"}}], {"m": backend}, n=2
    )
    assert [r["input"] for r in data] == ["如何解方程 x^2 = 4？"]
    assert summary.steps["magpie"]["dropped:language"] == 1
    assert data[0]["system"].startswith("你是一个帮助用户逐步解决数学问题") and data[0]["language"] == "zh"
    assert backend.calls[0]["prompt"].startswith("<|im_start|>system\n你是一个帮助用户逐步解决数学问题")
    assert backend.calls[0]["prompt"].endswith("<|im_end|>\n<|im_start|>user\n")


def test_explicit_table_template_and_fallback_by_model_name(tmp_path):
    backend = MagpieBackend(template=False)
    _, data, _ = run(tmp_path, [{"magpie": {"model": "m", "template": "llama3"}}], {"m": backend}, n=1)
    assert backend.calls[0]["prompt"] == "<|start_header_id|>user<|end_header_id|>\n\n"
    assert data[0]["magpie"]["template"] == "llama3"


def test_auto_without_any_clue_fails_before_the_run(tmp_path):
    with pytest.raises(ConfigError, match="cannot tell the chat template of model 'server'.*template:"):
        run(tmp_path, [{"magpie": {"model": "server"}}], {"server": MagpieBackend(template=False)})


def test_unknown_table_template_fails_before_the_run(tmp_path):
    with pytest.raises(ConfigError, match="unknown chat template 'vicuna'"):
        run(tmp_path, [{"magpie": {"model": "m", "template": "vicuna"}}], {"m": MagpieBackend()})


@pytest.mark.parametrize(
    "settings,message",
    [
        (
            {"system": "x", "control_task": "math"},
            "control_task: give system or control_task, not both (control_task is a built-in system prompt)",
        ),
        ({"control_task": "poetry"}, "control_task: must be one of 'math', 'code' or 'translation' (got 'poetry')"),
        ({"on_drop": "tag"}, "on_drop: must be one of 'drop' or 'keep' (got 'tag')"),
        ({"samples": 0}, "samples: must be >= 1 (got 0)"),
        ({"samples_per_call": 0}, "samples_per_call: must be >= 1 (got 0)"),
        ({"samples_per_call": 2.5}, "samples_per_call: must be an integer (got 2.5)"),
        ({"params": {"stop": ["x"]}}, "params.stop: is set from the chat template's end-of-turn markers; remove it"),
        (
            {"cleaning": {"min_len": 2}},
            "cleaning.min_len: unknown setting (did you mean 'min_units'? known: languages, "
            "max_units, min_units, require_request)",
        ),
    ],
)
def test_bad_settings_are_config_errors(tmp_path, settings, message):
    with pytest.raises(ConfigError) as error:
        run(tmp_path, [{"magpie": {"model": "m", **settings}}], {"m": MagpieBackend()})
    assert str(error.value) == f"<pipeline>: steps[0] (magpie).{message}"


def test_responses_single_turn(tmp_path):
    inst = MagpieBackend(["What is DNA?"])
    resp = ScriptedBackend(lambda messages, schema: "A molecule.")
    _, data, _ = run(
        tmp_path,
        [{"magpie": {"model": "m", "system": "Be brief."}}, {"magpie_response": {"model": "judge"}}],
        {"m": inst, "judge": resp},
        n=1,
    )
    record = data[0]
    assert record["input"] == "What is DNA?" and record["target"] == "A molecule." and record["turns"] == 1
    assert record["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is DNA?"},
        {"role": "assistant", "content": "A molecule."},
    ]
    assert resp.calls[0]["messages"] == record["messages"][:2]
    assert [c["model"] for c in record["_meta"]["calls"]] == ["m", "judge"]


def test_multi_turn_continues_with_the_user_turn_prefix(tmp_path):
    inst = MagpieBackend(["What is DNA?", "And what is RNA?"])
    _, data, _ = run(
        tmp_path, [{"magpie": {"model": "m"}}, {"magpie_response": {"model": "m", "turns": 2}}], {"m": inst}, n=1
    )
    record = data[0]
    assert record["turns"] == 2
    assert record["history"] == [
        {"role": "user", "content": "What is DNA?"},
        {"role": "assistant", "content": "answer to: What is DNA?"},
    ]
    assert record["input"] == "And what is RNA?" and record["target"] == "answer to: And what is RNA?"
    follow_up_prompt = inst.calls[2]["prompt"]  # calls: instruction, answer 1, follow-up, answer 2
    assert follow_up_prompt == (
        SMOL_PRE_QUERY + "What is DNA?<|im_end|>\n<|im_start|>assistant\n"
        "answer to: What is DNA?<|im_end|>\n<|im_start|>user\n"
    )
    assert "<|im_end|>" in inst.calls[2]["params"]["stop"]


def test_multi_turn_drops_conversations_whose_follow_up_fails_cleaning(tmp_path):
    inst = MagpieBackend(["What is DNA?", "Sure! Here is more."])
    summary, data, _ = run(
        tmp_path, [{"magpie": {"model": "m"}}, {"magpie_response": {"model": "m", "turns": 2}}], {"m": inst}, n=1
    )
    assert data == [] and summary.steps["magpie_response"]["followup_dropped:assistant_voice"] == 1


def test_empty_response_is_a_failure_with_raw_text(tmp_path):
    inst = MagpieBackend(["What is DNA?"])
    summary, data, failures = run(
        tmp_path,
        [{"magpie": {"model": "m"}}, {"magpie_response": {"model": "judge"}}],
        {"m": inst, "judge": ScriptedBackend(lambda m, s: "  ")},
        n=1,
    )
    assert data == [] and failures[0]["step"] == "magpie_response" and "empty reply" in failures[0]["error"]


def judge_reply(messages, schema):
    props = schema["properties"]
    if "primary_tag" in props:
        return json.dumps({"primary_tag": "Math", "other_tags": ["Reasoning"]})
    if "input_quality" in props:
        question = messages[-1]["content"]
        return json.dumps({"explanation": "ok", "input_quality": "poor" if "Something" in question else "good"})
    return json.dumps({"intent": "The user wants x", "knowledge": "y", "difficulty": "easy"})


def test_tags_become_fields_and_keep_filters(tmp_path):
    inst = MagpieBackend(["What is 2+2?", "Something vague maybe?"])
    judge = ScriptedBackend(judge_reply)
    summary, data, _ = run(
        tmp_path,
        [{"magpie": {"model": "m"}}, {"magpie_tag": {"model": "judge", "keep": {"input_quality": ["good"]}}}],
        {"m": inst, "judge": judge},
        n=2,
    )
    assert len(data) == 1
    record = data[0]
    assert (record["task_category"], record["other_task_categories"]) == ("Math", ["Reasoning"])
    assert (record["input_quality"], record["input_quality_explanation"]) == ("good", "ok")
    assert (record["difficulty"], record["intent"]) == ("easy", "The user wants x")
    assert summary.steps["magpie_tag"]["dropped:input_quality=poor"] == 1
    assert all(call["schema"] is not None for call in judge.calls)
    assert "What is 2+2?" in judge.calls[0]["messages"][-1]["content"]


def test_tagging_judges_the_first_user_turn_of_a_conversation(tmp_path):
    inst = MagpieBackend(["What is DNA?", "And what about RNA?"])
    judge = ScriptedBackend(judge_reply)
    run(
        tmp_path,
        [
            {"magpie": {"model": "m"}},
            {"magpie_response": {"model": "m", "turns": 2}},
            {"magpie_tag": {"model": "judge", "tags": ["difficulty"]}},
        ],
        {"m": inst, "judge": judge},
        n=1,
    )
    assert "What is DNA?" in judge.calls[0]["messages"][-1]["content"]
    assert "RNA" not in judge.calls[0]["messages"][-1]["content"]


def test_invalid_judge_json_is_a_failure_not_an_empty_tag(tmp_path):
    inst = MagpieBackend(["What is DNA?"])
    _, data, failures = run(
        tmp_path,
        [{"magpie": {"model": "m"}}, {"magpie_tag": {"model": "judge"}}],
        {"m": inst, "judge": ScriptedBackend(lambda m, s: "not json")},
        n=1,
    )
    assert data == [] and failures[0]["error_type"] == "ValidationFailed" and failures[0]["raw"] == "not json"


@pytest.mark.parametrize(
    "settings,message",
    [
        (
            {"tags": ["sentiment"]},
            "tags[0]: must be one of 'task_category', 'input_quality' or 'difficulty' (got 'sentiment')",
        ),
        (
            {"keep": {"mood": ["good"]}},
            "keep: names fields ['mood'] that the tags ['task_category', 'input_quality', "
            "'difficulty'] do not produce (they produce: difficulty, input_quality, "
            "input_quality_explanation, intent, knowledge, other_task_categories, "
            "task_category)",
        ),
    ],
)
def test_bad_tag_settings(tmp_path, settings, message):
    with pytest.raises(ConfigError) as error:
        run(
            tmp_path,
            [{"magpie": {"model": "m"}}, {"magpie_tag": {"model": "judge", **settings}}],
            {"m": MagpieBackend(), "judge": ScriptedBackend()},
        )
    assert str(error.value) == f"<pipeline>: steps[1] (magpie_tag).{message}"


def test_dedup_between_instructions_and_responses(tmp_path):
    """What `joyforge magpie` does: instructions first, then dedup + responses over their output."""
    inst = MagpieBackend(["What is DNA?", "what is dna", "Explain how vaccines train the immune system."])
    run(tmp_path, [{"magpie": {"model": "m"}}], {"m": inst}, n=3, out="instructions")
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "instructions" / "data.jsonl")},
            "steps": [{"minhash_dedup": {"fields": "input"}}, {"magpie_response": {"model": "judge"}}],
            "output": {"dir": str(tmp_path / "final")},
            "run": {"cache": None, "progress": False},
        }
    )
    responder = ScriptedBackend(lambda m, s: "ok")
    gateway = Gateway(REGISTRY, backends={"judge": responder})
    summary = LocalExecutor(pipeline, registry=REGISTRY, gateway=gateway).run_sync()
    assert [r["input"] for r in read_jsonl(tmp_path / "final" / "data.jsonl")] == [
        "What is DNA?",
        "Explain how vaccines train the immune system.",
    ]
    assert len(responder.calls) == 2 and summary.filtered == 1


def test_cli_builds_two_valid_pipelines(tmp_path):
    from joydataforge.methods.magpie.command import build_pipelines

    instructions, conversations = build_pipelines(
        tmp_path,
        model="smollm2",
        n=5,
        language="zh",
        control_task="math",
        turns=2,
        response_model="smollm2-greedy",
        min_quality="good",
        instruction_params={"temperature": 0.9},
        seed=7,
    )
    assert instructions["steps"] == [
        {
            "magpie": {
                "model": "smollm2",
                "template": "auto",
                "samples": 1,
                "attempts": 1,
                "params": {"temperature": 0.9},
                "control_task": "math",
                "language": "zh",
            }
        }
    ]
    assert instructions["input"] == {"path": str(tmp_path.resolve() / "slots.jsonl"), "limit": 5}
    kinds = [next(iter(step)) for step in conversations["steps"]]
    assert kinds == ["minhash_dedup", "magpie_response", "magpie_tag"]
    assert conversations["steps"][1]["magpie_response"] == {
        "model": "smollm2-greedy",
        "turns": 2,
        "instruction_model": "smollm2",
        "params": {},
    }
    assert conversations["steps"][2]["magpie_tag"]["keep"] == {"input_quality": ["good", "excellent"]}
    assert conversations["run"]["language"] == "zh" and conversations["run"]["seed"] == 7
    for data in (instructions, conversations):
        Pipeline.from_dict(data)  # validates like a YAML file would
    _, none = build_pipelines(tmp_path, model="smollm2", n=1, responses=False)
    assert none is None
    grouped, _ = build_pipelines(tmp_path, model="smollm2", n=1, samples=8, samples_per_call=4)
    assert grouped["steps"][0]["magpie"]["samples_per_call"] == 4
    Pipeline.from_dict(grouped)
    _, plain = build_pipelines(tmp_path, model="smollm2", n=1, dedup_threshold=None)
    assert [next(iter(step)) for step in plain["steps"]] == ["magpie_response"]


def test_cli_refuses_options_that_need_responses(tmp_path):
    from click.testing import CliRunner

    from joydataforge.cli.magpie import magpie_command

    result = CliRunner().invoke(magpie_command, ["-n", "1", "-o", str(tmp_path), "--no-responses", "--tag"])
    assert result.exit_code == 2 and "need responses" in result.output
    result = CliRunner().invoke(magpie_command, ["-n", "0", "-o", str(tmp_path)])
    assert result.exit_code == 2
    result = CliRunner().invoke(magpie_command, ["-n", "1", "-o", str(tmp_path), "--samples-per-call", "0"])
    assert result.exit_code == 2 and "--samples-per-call" in result.output


def test_cli_says_what_to_change_when_most_draws_are_dropped():
    from joydataforge.methods.magpie.command import drop_hint

    assert "trained on that language" in drop_hint({"calls": 30, "instructions": 0, "dropped:language": 30})
    assert "raise --max-tokens" in drop_hint(
        {"calls": 10, "instructions": 2, "dropped:truncated": 6, "dropped:empty": 2}
    )
    assert drop_hint({"calls": 10, "instructions": 6, "dropped:language": 4}) is None  # most were kept
    no_one_cause = {"calls": 10, "instructions": 4, "dropped:language": 3, "dropped:empty": 3}
    assert drop_hint(no_one_cause) is None
    assert "dropped as repetitive" in drop_hint({"calls": 4, "instructions": 0, "dropped:repetitive": 4})


def test_command_takes_records_in_flight_and_penalty_name_from_the_model():
    from joydataforge.config.defaults import COMMAND_RECORDS_IN_FLIGHT
    from joydataforge.methods.magpie.command import instruction_params, records_in_flight

    models = ModelRegistry.from_dict(
        {
            "models": {
                "gguf": {"backend": "llamacpp", "model": "x", "model_path": "x.gguf"},
                "engine": {"backend": "vllm", "model": "org/x"},
                "narrow": {"backend": "vllm", "model": "org/x", "max_concurrency": 12},
                "server": {
                    "backend": "openai",
                    "model": "x",
                    "base_url": "http://127.0.0.1:9/v1",
                    "max_concurrency": 40,
                },
            }
        },
        "test",
    )
    assert records_in_flight(models.get("gguf"), None) == COMMAND_RECORDS_IN_FLIGHT
    assert records_in_flight(models.get("server"), None) == COMMAND_RECORDS_IN_FLIGHT  # a server: not its limit
    assert records_in_flight(models.get("engine"), None) == 256 and records_in_flight(models.get("narrow"), None) == 12
    assert records_in_flight(models.get("engine"), 3) == 3
    sampling = {"temperature": 0.9, "top_p": 0.95, "max_tokens": 64}
    assert instruction_params(models.get("gguf"), **sampling, repetition_penalty=1.1) == {
        **sampling,
        "repeat_penalty": 1.1,
    }
    for name in ("engine", "server"):
        assert instruction_params(models.get(name), **sampling, repetition_penalty=1.1) == {
            **sampling,
            "repetition_penalty": 1.1,
        }
    assert instruction_params(models.get("gguf"), **sampling) == sampling


def test_command_reports_outcomes_and_duplicates():
    from types import SimpleNamespace

    from joydataforge.methods.magpie.command import duplicates_removed, instruction_outcomes

    assert instruction_outcomes({"calls": 0}) == []
    assert instruction_outcomes({"calls": 5, "instructions": 2, "dropped:language": 2, "dropped:truncated": 1}) == [
        ("kept", 2),
        ("dropped: truncated", 1),
        ("dropped: language", 2),
    ]  # in the order the filters run
    assert duplicates_removed(SimpleNamespace(steps={"minhash_dedup": {"records_in": 4, "removed": 1}})) == (1, 4)
    assert duplicates_removed(SimpleNamespace(steps={"minhash_dedup": {"records_in": 0}})) is None
    assert duplicates_removed(SimpleNamespace(steps={})) is None
