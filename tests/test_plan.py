"""``joyforge plan`` end to end against scripted models: counts, cache, pilot, prices, assumptions, CLI.

The planned first attempts are compared with what a real run through the executor sends (every request
counted by :mod:`joydataforge.engine.meter`); a run's requests then count as cached in the next plan; a pilot
measures and extrapolates; ``--json`` carries the totals scripts read.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from joydataforge.cli import cli
from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.fanout import Assumptions
from joydataforge.engine.local import LocalExecutor
from joydataforge.engine.meter import CallMeter, MeteredGateway, meter_steps
from joydataforge.engine.plan import Plan, known_assumptions, make_plan
from joydataforge.engine.registry import build_step
from joydataforge.errors import ConfigError
from joydataforge.models.cache import CallCache
from joydataforge.models.config import ModelRegistry
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, registry_of, write_jsonl

RECORDS = [{"id": f"r{i}", "input": f"question number {i} " + "word " * i} for i in range(6)]


def never_approves(messages, schema):
    if schema is not None and "verdict" in schema.get("properties", {}):
        return json.dumps({"issues": ["too short"], "verdict": "revise", "score": 2})
    if schema is not None and "best" in schema.get("properties", {}):
        return json.dumps({"best": 1, "reason": "first"})
    if schema is not None:
        label = schema.get("properties", {}).get("label", {}).get("enum", ["x"])[0]
        return json.dumps({"label": label, "reason": "r"})
    return "an answer " + messages[-1]["content"][:30]


def pipeline_of(tmp_path: Path, steps: list, cache: bool = True, **run) -> Pipeline:
    write_jsonl(tmp_path / "in.jsonl", RECORDS)
    return make_pipeline(tmp_path, steps, run={"cache": str(tmp_path / "cache.sqlite") if cache else None, **run})


STEPS = [
    {"vote": {"models": ["a", "b", "c"], "prompt": "vote_label", "options": {"labels": ["x", "y"]}}},
    {"joint": {"drafters": ["a", "a", "b"], "fuser": "c", "mode": "pick", "draft_prompt": "answer"}},
    {"critique_revise": {"model": "a", "critic": "c", "rounds": 2, "draft_prompt": "zh/answer"}},
    {"generate": {"model": "b", "prompt": "answer", "output_field": "final", "params": {"max_tokens": 99}}},
]
MODELS = ["a", "b", "c"]


def distinct(names: list[str], **fields) -> ModelRegistry:
    """Scripted models with their own ids: two models of one identity would share cache entries."""
    registry = registry_of(names, **fields)
    for name, config in registry.models.items():
        registry.models[name] = config.model_copy(update={"model": fields.get("model", name)})
    return registry


def backends(reply=never_approves) -> dict[str, ScriptedBackend]:
    return {name: ScriptedBackend(reply) for name in MODELS}


def run_metered(pipeline: Pipeline, registry: ModelRegistry, served: dict) -> CallMeter:
    steps = meter_steps([build_step(config) for config in pipeline.step_configs])
    cache_path = pipeline.resolve(pipeline.run.cache) if pipeline.run.cache else None
    cache = CallCache(cache_path) if cache_path else None
    meter = CallMeter()
    gateway = MeteredGateway(registry, cache, backends=served, meter=meter)
    try:
        LocalExecutor(
            pipeline.model_copy(update={"steps": steps}), registry=registry, gateway=gateway, overwrite=True
        ).run_sync()
    finally:
        if cache is not None:
            cache.close()
    return meter


def first_attempts(plan: Plan) -> dict[tuple[str, str], float]:
    return {(line.step, line.model): line.calls - line.re_asks for line in plan.lines}


def test_planned_calls_equal_the_runs_calls_step_by_step(tmp_path):
    registry = distinct(MODELS)
    pipeline = pipeline_of(tmp_path, STEPS)
    plan = asyncio.run(make_plan(pipeline, registry))
    assert plan.records == len(RECORDS)
    expected = {
        ("vote", "a"): 6,
        ("vote", "b"): 6,
        ("vote", "c"): 6,
        ("joint", "a"): 12,  # listed twice: two samples
        ("joint", "b"): 6,
        ("joint", "c"): 6,
        ("critique_revise", "a"): 6 * (1 + 2),  # draft + 2 revisions (never approved)
        ("critique_revise", "c"): 6 * 2,
        ("generate", "b"): 6,
    }
    assert first_attempts(plan) == expected
    # Every count is exact but the critique rounds, which end early when the critic approves (a reply).
    assert {line.step for line in plan.lines if not line.exact} == {"critique_revise"}
    assert plan.totals()["cached_calls"] == 0

    meter = run_metered(pipeline_of(tmp_path, STEPS), registry, backends())
    measured = {key: t.requests - t.re_asks for key, t in meter.totals.items()}
    assert measured == expected

    # Every request of that run is in the cache now: the next plan of the same pipeline pays for none.
    again = asyncio.run(make_plan(pipeline_of(tmp_path, STEPS), registry))
    assert again.totals()["cached_calls"] == again.totals()["calls"]
    assert again.totals()["paid_calls"] == 0


def test_a_partly_cached_input_pays_for_the_rest(tmp_path):
    registry = distinct(MODELS)
    steps = [{"generate": {"model": "a", "prompt": "answer"}}]
    run_metered(pipeline_of(tmp_path, steps).model_copy(), registry, backends())  # all 6 records
    write_jsonl(tmp_path / "in.jsonl", RECORDS + [{"id": "new", "input": "a new question"}])
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "in.jsonl")},
            "steps": steps,
            "output": {"dir": str(tmp_path / "out2")},
            "run": {"cache": str(tmp_path / "cache.sqlite"), "progress": False},
        }
    )
    plan = asyncio.run(make_plan(pipeline, registry))
    line = plan.lines[0]
    assert (line.calls, line.cached_calls, line.paid_calls) == (7, 6, 1)


def test_prompt_tokens_are_the_rendered_prompts_and_completion_the_max_tokens(tmp_path):
    registry = registry_of(["a"], params={"max_tokens": 100})
    steps = [{"generate": {"model": "a", "prompt": "answer", "params": {"max_tokens": 40}}}]
    plan = asyncio.run(make_plan(pipeline_of(tmp_path, steps, cache=False), registry))
    line = plan.lines[0]
    assert line.completion_tokens == 6 * 40  # the step's max_tokens over the model's
    # The estimate (no tokenizer for a model without an id): about four characters a token, + 4 per message.
    from joydataforge.engine.plan import _context
    from joydataforge.models.gateway import Gateway
    from joydataforge.models.tokens import estimate_text_tokens

    step = build_step(pipeline_of(tmp_path, steps, cache=False).step_configs[0])
    ctx = _context(pipeline_of(tmp_path, steps, cache=False), Gateway(registry))
    rendered = [step.template(ctx).render(r) for r in RECORDS]
    expected = sum(sum(estimate_text_tokens(m["content"]) + 4 for m in messages) for messages in rendered)
    assert line.prompt_tokens == expected
    fill = asyncio.run(
        make_plan(
            pipeline_of(tmp_path, steps, cache=False),
            registry,
            Assumptions(known_assumptions(), {"completion.fill": 0.5}),
        )
    )
    assert fill.lines[0].completion_tokens == 6 * 20


def test_json_re_asks_come_from_the_assumption_and_the_models_json_retries(tmp_path):
    registry = registry_of(["a"], json_retries=2)
    steps = [{"label": {"model": "a", "prompt": "label", "options": {"labels": ["x", "y"]}}}]
    assume = Assumptions(known_assumptions(), {"json.invalid_rate": 0.5})
    plan = asyncio.run(make_plan(pipeline_of(tmp_path, steps, cache=False), registry, assume))
    line = plan.lines[0]
    assert line.calls - line.re_asks == 6
    assert line.re_asks == pytest.approx(6 * (0.5 + 0.25))
    assert line.exact  # the first attempts do not depend on replies; re-asks are counted apart


def test_ranges_swing_each_assumption_over_its_plausible_values(tmp_path):
    registry = distinct(["a", "b", "c"])
    steps = [
        {"vote": {"models": ["a", "b"], "prompt": "vote_label", "options": {"labels": ["x", "y"]}}},
        {"cascade": {"model": "c", "gate_labels": ["x"], "options": {"labels": ["x", "y"]}}},
    ]
    plan = asyncio.run(make_plan(pipeline_of(tmp_path, steps, cache=False), registry))
    cascade = next(line for line in plan.lines if line.step == "cascade")
    assert cascade.calls == 3 and not cascade.exact  # half the records at the default gate rate
    low, high = cascade.calls_range
    assert low == 0 and high >= 6  # no record gated .. every record gated (and re-asks)
    names = {a["name"] for a in plan.assumptions}
    assert {"cascade.gate_rate", "json.invalid_rate", "completion.fill"} <= names


def test_a_pilot_measures_and_extrapolates_and_its_calls_are_cached(tmp_path):
    registry = distinct(MODELS)
    served = backends()
    plan = asyncio.run(make_plan(pipeline_of(tmp_path, STEPS), registry, pilot=2, backends=served))
    assert plan.pilot == 2 and plan.records == 6
    assert first_attempts(plan)[("joint", "a")] == pytest.approx(12)
    assert first_attempts(plan)[("critique_revise", "c")] == pytest.approx(12)
    assert all(line.measured for line in plan.lines)
    cached = sum(line.cached_calls for line in plan.lines)
    assert cached == pytest.approx(sum(line.calls for line in plan.lines) / 3)  # 2 of 6 records ran
    # The backends answered fewer: a request repeated within the pilot (critique's draft is joint's first
    # draft of model a) was answered from the cache already.
    assert sum(len(b.calls) for b in served.values()) <= cached

    # The real run afterwards pays only for the 4 records the pilot did not run.
    fresh = backends()
    meter = run_metered(pipeline_of(tmp_path, STEPS), registry, fresh)
    assert sum(t.cached for t in meter.totals.values()) == pytest.approx(cached)
    actual_tokens = sum(t.prompt_tokens + t.completion_tokens for t in meter.totals.values())
    planned_tokens = plan.totals()["prompt_tokens"] + plan.totals()["completion_tokens"]
    assert planned_tokens == pytest.approx(actual_tokens, rel=0.25)
    assert plan.totals()["calls"] == pytest.approx(sum(t.requests for t in meter.totals.values()), rel=0.10)


def test_a_pilot_measures_reply_dependent_rates(tmp_path):
    """Every cascade is gated in the scripted run (the label is always the gate label): the pilot finds that
    out, where the plan without one assumed half."""
    registry = distinct(["a", "b", "c"])

    def always_x(messages, schema):
        return json.dumps({"label": "x", "reason": "r"})

    steps = [
        {"vote": {"models": ["a", "b"], "prompt": "vote_label", "options": {"labels": ["x", "y"]}}},
        {"cascade": {"model": "c", "gate_labels": ["x"], "options": {"labels": ["x", "y"]}}},
    ]
    served = {name: ScriptedBackend(always_x) for name in ("a", "b", "c")}
    plan = asyncio.run(make_plan(pipeline_of(tmp_path, steps), registry, pilot=3, backends=served))
    cascade = next(line for line in plan.lines if line.step == "cascade")
    assert cascade.calls == pytest.approx(6)
    assert cascade.calls_range == pytest.approx((6, 6))  # no spread between the pilot's records


def test_cost_of_paid_calls_at_the_configured_and_the_batch_price(tmp_path):
    registry = registry_of(
        ["a"],
        model="gpt-4o-mini",
        params={"max_tokens": 1000},
        pricing={"input_per_mtok": 1.0, "output_per_mtok": 2.0, "batch_output_per_mtok": 1.0},
    )
    steps = [{"generate": {"model": "a", "prompt": "answer"}}]
    plan = asyncio.run(make_plan(pipeline_of(tmp_path, steps, cache=False), registry))
    line = plan.lines[0]
    assert line.cost == pytest.approx((line.prompt_tokens * 1.0 + line.completion_tokens * 2.0) / 1e6)
    info = plan.models["a"]
    assert info.price is not None and info.price.source.startswith("pricing:")
    # Only the output batch price given: the input's comes from the table's discount for this model.
    assert info.price.batch_output_per_mtok == 1.0
    assert info.price.batch_input_per_mtok == pytest.approx(0.5)
    assert line.batch_cost == pytest.approx((line.prompt_tokens * 0.5 + line.completion_tokens * 1.0) / 1e6)


def test_time_at_the_models_concurrency_and_rate_limits(tmp_path):
    steps = [{"generate": {"model": "a", "prompt": "answer", "params": {"max_tokens": 50}}}]
    slow = registry_of(["a"], max_concurrency=1, requests_per_minute=6)
    plan = asyncio.run(make_plan(pipeline_of(tmp_path, steps, cache=False, concurrency=4), slow))
    assert plan.lines[0].seconds == pytest.approx(60)  # 6 requests at 6 a minute
    fast = registry_of(["a"], max_concurrency=2)
    plan = asyncio.run(make_plan(pipeline_of(tmp_path, steps, cache=False, concurrency=4), fast))
    assert plan.lines[0].seconds == pytest.approx(6 * (1.0 + 50 / 50) / 2)  # latency 1s + 50 tokens at 50/s


def test_unknown_and_out_of_range_assumptions_are_one_line_errors(tmp_path):
    known = known_assumptions()
    with pytest.raises(ConfigError, match="did you mean 'cascade.gate_rate'"):
        Assumptions.parse(known, ["cascade.gate=0.3"])
    with pytest.raises(ConfigError, match="between 0 and 1"):
        Assumptions.parse(known, ["cascade.gate_rate=2"])
    with pytest.raises(ConfigError, match="not a number"):
        Assumptions.parse(known, ["cascade.gate_rate=half"])
    file = tmp_path / "assume.yaml"
    file.write_text("cascade:\n  gate_rate: 0.25\njson.invalid_rate: 0.1\n", "utf-8")
    parsed = Assumptions.parse(known, ["json.invalid_rate=0.2"], str(file))
    assert parsed["cascade.gate_rate"] == 0.25 and parsed["json.invalid_rate"] == 0.2
    assert parsed.source("cascade.gate_rate") == "set"


def test_meter_attributes_concurrent_calls_to_their_step_and_record(tmp_path):
    registry = distinct(MODELS)
    meter = run_metered(pipeline_of(tmp_path, STEPS[:2], cache=False, concurrency=6), registry, backends())
    assert set(meter.per_record[("vote", "a")]) == {r["id"] for r in RECORDS}
    assert all(t.requests == 2 for t in meter.per_record[("joint", "a")].values())


def test_cli_plan_json_and_table(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", RECORDS)
    (tmp_path / "models.yaml").write_text(
        "models:\n  m:\n    backend: openai\n    model: gpt-4o-mini\n    base_url: https://api.openai.com/v1\n"
        "    api_key_env: NO_SUCH_KEY_SET\n    params: {max_tokens: 64}\n",
        "utf-8",
    )
    (tmp_path / "p.yaml").write_text(
        "input: {path: in.jsonl}\nmodels: models.yaml\nsteps:\n"
        "  - vote: {models: [m], prompt: vote_label, options: {labels: [x, y]}}\n"
        "  - cascade: {model: m, gate_labels: [x], options: {labels: [x, y]}}\n"
        "output: {dir: out}\nrun: {cache: null}\n",
        "utf-8",
    )
    runner = CliRunner()
    result = runner.invoke(cli, ["plan", str(tmp_path / "p.yaml"), "--json", "--assume", "cascade.gate_rate=0.5"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    totals = data["totals"]
    assert totals["calls"] == 9 and totals["first_attempts"] == 9
    assert totals["prompt_tokens"] > 0 and totals["completion_tokens"] == 9 * 64
    assert totals["cost"] > 0 and totals["batch_cost"] == pytest.approx(totals["cost"] / 2, rel=1e-3)
    assert [s["step"] for s in data["steps"]] == ["vote", "cascade"]
    assert data["models"]["m"]["price"]["source"].startswith("genai-prices")
    assert not (tmp_path / "out").exists()  # a plan without a pilot writes nothing

    table = runner.invoke(cli, ["plan", str(tmp_path / "p.yaml")])
    assert table.exit_code == 0 and "cascade.gate_rate = 0.5 (default)" in table.output
    wrong = runner.invoke(cli, ["plan", str(tmp_path / "p.yaml"), "--assume", "gate=1"])
    assert wrong.exit_code != 0
    listed = runner.invoke(cli, ["plan", str(tmp_path / "p.yaml"), "--list-assumptions"])
    assert "evol.valid_rate" in listed.output


def test_a_pilot_that_saw_no_gated_record_still_gives_a_range(tmp_path):
    registry = distinct(["a", "b", "c"])

    def always_y(messages, schema):
        return json.dumps({"label": "y", "reason": "r"})

    steps = [
        {"vote": {"models": ["a", "b"], "prompt": "vote_label", "options": {"labels": ["x", "y"]}}},
        {"cascade": {"model": "c", "gate_labels": ["x"], "options": {"labels": ["x", "y"]}}},
    ]
    served = {name: ScriptedBackend(always_y) for name in ("a", "b", "c")}
    plan = asyncio.run(make_plan(pipeline_of(tmp_path, steps), registry, pilot=3, backends=served))
    cascade = next(line for line in plan.lines if line.step == "cascade")
    assert cascade.calls == 0 and not served["c"].calls
    # 0 gated of 3: the rate is likely below 1 in 3, not surely 0 (planned: 1.5 at the default gate rate).
    assert cascade.calls_range[0] == 0 and cascade.calls_range[1] == pytest.approx(1.5)


def judge_reply(messages, schema):
    props = (schema or {}).get("properties", {})
    if "winner" in props:
        return json.dumps({"rationale": "r", "winner": "A"})
    return json.dumps({name: {"rationale": "r", "score": 3} for name in props})


@pytest.mark.parametrize("scorer", ["pointwise", "pairwise"])
def test_dpo_with_the_records_candidates_is_exact_and_then_cached(tmp_path, scorer):
    registry = distinct(["j1", "j2"])
    records = [
        {"id": "q1", "input": "capital of France?", "response_candidates": ["Paris.", "Lyon.", "Paris.", " "]},
        {"id": "q2", "input": "a colour?", "response_candidates": ["Red.", "Blue."]},
    ]
    write_jsonl(tmp_path / "in.jsonl", records)
    step = {"dpo": {"judges": ["j1", "j2"], "scorer": scorer, "aspects": ["helpfulness"], "rule": "all_pairs"}}

    def pipeline() -> Pipeline:
        return Pipeline.from_dict(
            {
                "input": {"path": str(tmp_path / "in.jsonl")},
                "steps": [step],
                "output": {"dir": str(tmp_path / "out")},
                "run": {"cache": str(tmp_path / "cache.sqlite"), "progress": False},
            }
        )

    plan = asyncio.run(make_plan(pipeline(), registry))
    # Usable: 2 (q1: a repeat and a blank left out) + 2; pointwise: each once per judge; pairwise: 1 pair each,
    # both orders, per judge.
    per_judge = 4 if scorer == "pointwise" else 2 * 2
    assert first_attempts(plan) == {("dpo", "j1"): per_judge, ("dpo", "j2"): per_judge}
    meter = run_metered(pipeline(), registry, {name: ScriptedBackend(judge_reply) for name in ("j1", "j2")})
    assert {key: t.requests - t.re_asks for key, t in meter.totals.items()} == first_attempts(plan)
    again = asyncio.run(make_plan(pipeline(), registry))
    assert again.totals()["paid_calls"] == 0


def test_seedless_topics_are_planned_call_by_call_and_then_cached(tmp_path):
    registry = distinct(["w"])
    topics = [{"id": "t1", "topic": "cooking", "subtopics": ["bread", "soup"], "n": 3}, {"id": "t2", "topic": "tax"}]
    write_jsonl(tmp_path / "in.jsonl", topics)

    numbers = iter(range(1000))

    def distinct_questions(messages, schema):  # never a near-duplicate: no top-up call
        return json.dumps({"records": [{"input": f"question number {next(numbers)} on {messages[-1]['content'][:9]}"}]})

    step = {"seedless": {"model": "w", "n_per_topic": 2, "per_call": 1, "personas": ["a", "b"], "dedup": "exact"}}

    def pipeline() -> Pipeline:
        return Pipeline.from_dict(
            {
                "input": {"path": str(tmp_path / "in.jsonl")},
                "steps": [step],
                "output": {"dir": str(tmp_path / "out")},
                "run": {"cache": str(tmp_path / "cache.sqlite"), "progress": False},
            }
        )

    plan = asyncio.run(make_plan(pipeline(), registry))
    assert first_attempts(plan) == {("seedless", "w"): 3 + 2}  # the topic's own n, else n_per_topic
    meter = run_metered(pipeline(), registry, {"w": ScriptedBackend(distinct_questions)})
    assert meter.totals[("seedless", "w")].requests == 5
    assert asyncio.run(make_plan(pipeline(), registry)).totals()["paid_calls"] == 0


def dialogue_reply(messages, schema):
    items = schema["properties"]["turns"]["prefixItems"]
    turns = []
    for item in items:
        props = item["properties"]
        content = props["content"].get("const", "")
        turns.append(
            {"index": props["index"]["const"], "label": props["label"]["enum"][0], "reason": "r", "content": content}
        )
    return json.dumps({"turns": turns}, ensure_ascii=False)


def test_a_dialogue_is_labelled_once_also_when_a_pilot_labelled_it(tmp_path):
    registry = distinct(["m"])
    dialog = "用户: 你好\n助手: 您好\n用户: 我头疼"
    records = [
        {"did": "d1", "dialogs": dialog, "n": 1},
        {"did": "d1", "dialogs": dialog, "n": 2},  # the same dialogue again: no call
        {"did": "d2", "dialogs": "用户: 在吗\n助手: 在的\n用户: 药怎么吃"},
    ]
    write_jsonl(tmp_path / "in.jsonl", records)
    step = {"dialogue_intent": {"model": "m", "labels": ["a", "b"], "dialog_id_field": "did"}}
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "in.jsonl")},
            "steps": [step],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": str(tmp_path / "cache.sqlite"), "progress": False},
        }
    )
    static = asyncio.run(make_plan(pipeline, registry))
    assert first_attempts(static) == {("dialogue_intent", "m"): 2}
    served = {"m": ScriptedBackend(dialogue_reply)}
    piloted = asyncio.run(make_plan(pipeline, registry, pilot=1, backends=served))
    assert piloted.totals()["calls"] == pytest.approx(2)
    assert len(served["m"].calls) == 1


def test_the_gateways_public_cache_key_is_the_key_its_calls_are_stored_under(tmp_path):
    """``ModelClient.cache_key`` (what the plan looks requests up with) against what calls really store."""
    from joydataforge.models.gateway import Gateway

    registry = distinct(["a"], params={"temperature": 0.5, "max_tokens": 9})
    messages = [{"role": "user", "content": "hello"}]
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["x"]}}, "required": ["label"]}

    async def calls() -> list[bool]:
        cache = CallCache(tmp_path / "cache.sqlite")
        client = Gateway(registry, cache, backends={"a": ScriptedBackend()}).model("a")
        await client.chat(messages, sample=1, temperature=0.9)
        await client.chat_json(messages, schema)
        await client.complete_n("once upon", 3)
        keys = [
            client.cache_key("chat", messages, {"temperature": 0.9}, sample=1),
            client.cache_key("chat", messages, schema=schema),
            client.cache_key("complete", "once upon", n=3),
            client.cache_key("chat", messages, {"temperature": 0.9}),  # another sample: not asked
        ]
        found = [await cache.get(key) is not None for key in keys]
        cache.close()
        return found

    assert asyncio.run(calls()) == [True, True, True, False]
