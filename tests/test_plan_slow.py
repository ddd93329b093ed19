"""``joyforge plan`` against the real run, on the example pipelines and the embedded model.

For the methods whose calls do not depend on replies (generate, label, vote, joint, critique with a fixed
number of rounds, dpo with fixed candidates), the plan made from the settings alone, without a pilot, must
say exactly how many first attempts the run makes, per step and model. Re-asks of invalid JSON replies do
depend on replies (the plan counts them from an assumption), so the comparison is of first attempts; a record
that failed at an earlier step never reaches a later one, so a later step is compared over the records that
reached it. Then every request of the run is in the call cache: a second plan must call all of them cached.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import yaml

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.engine.meter import CallMeter, MeteredGateway, meter_steps
from joydataforge.engine.plan import Plan, make_plan, registry_for
from joydataforge.engine.registry import build_step
from joydataforge.models.cache import CallCache

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# A critic that can only ask for a revision: every round runs, whatever the answers (critique with fixed rounds).
NEVER_APPROVES = {
    "system": "You review answers. Reply with JSON only.",
    "user": "Question: {{ input }}\n\nAnswer:\n{{ options.answer }}\n\nList issues.",
    "schema": {
        "type": "object",
        "properties": {
            "issues": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 2},
            "verdict": {"type": "string", "enum": ["revise"]},
            "score": {"type": "integer", "minimum": 1, "maximum": 1},
        },
        "required": ["issues", "verdict", "score"],
    },
}

# Fixed candidates: given in the records, none generated (dpo with fixed candidates).
FIXED_CANDIDATES = [
    {"id": "q1", "input": "What is the capital of France?", "response_candidates": ["Paris.", "Lyon.", "Marseille."]},
    {"id": "q2", "input": "Name a primary colour.", "response_candidates": ["Red.", "Green is one.", "Blue."]},
]


def workspace(tmp_path: Path) -> Path:
    work = tmp_path / "examples"
    shutil.copytree(EXAMPLES, work)
    (work / "never_approves.yaml").write_text(yaml.safe_dump(NEVER_APPROVES, allow_unicode=True), "utf-8")
    (work / "fixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in FIXED_CANDIDATES), "utf-8")
    return work


def load(work: Path, name: str, limit: int, edit: dict | None = None) -> Pipeline:
    data = yaml.safe_load((work / f"{name}.yaml").read_text("utf-8"))
    settings = next(iter(data["steps"][0].values()))
    for key, value in (edit or {}).items():
        if key == "input":
            data["input"].update(value)
        elif value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
    data["input"]["limit"] = limit
    data["output"] = {"dir": str(work / "out" / name)}
    data["run"] = {**data.get("run", {}), "cache": str(work / "cache.sqlite"), "progress": False}
    return Pipeline.from_dict(data, source=name, base_dir=str(work))


async def run_metered(pipeline: Pipeline) -> CallMeter:
    registry = registry_for(pipeline)
    steps = meter_steps([build_step(config) for config in pipeline.step_configs])
    cache = CallCache(pipeline.resolve(pipeline.run.cache))  # type: ignore[arg-type]
    meter = CallMeter()
    try:
        executor = LocalExecutor(
            pipeline.model_copy(update={"steps": steps}),
            registry=registry,
            gateway=MeteredGateway(registry, cache, meter=meter),
            overwrite=True,
            progress=False,
        )
        await executor.run()
    finally:
        cache.close()
    return meter


def first_attempts(plan: Plan) -> dict[tuple[str, str], float]:
    return {(line.step, line.model): line.calls - line.re_asks for line in plan.lines}


CASES = [
    ("demo", {}),  # generate, label
    ("vote", {}),
    ("joint", {}),  # two joint steps: fuse, then pick
    ("critique", {"critique_prompt": "never_approves.yaml", "approve_score": None, "rounds": 2}),
    ("dpo", {"input": {"path": "fixed.jsonl"}, "models": []}),
    ("dpo_pairwise", {"input": {"path": "fixed.jsonl"}, "models": [], "candidates_field": "response_candidates"}),
]


@pytest.mark.parametrize(("name", "edit"), CASES, ids=[c[0] for c in CASES])
def test_plan_without_pilot_counts_the_runs_calls(tmp_path, name, edit):
    work = workspace(tmp_path)
    limit = 1
    pipeline = load(work, name, limit, edit)
    plan = asyncio.run(make_plan(pipeline, registry_for(pipeline)))
    assert plan.records == limit
    if name != "critique":  # approval is a reply: marked inexact, though this critic cannot approve
        assert all(line.exact for line in plan.lines), [line.as_dict() for line in plan.lines if not line.exact]
    assert plan.totals()["cached_calls"] == 0

    meter = asyncio.run(run_metered(load(work, name, limit, edit)))
    planned = first_attempts(plan)
    reached: dict[str, int] = {}
    for (step, _model), by_record in meter.per_record.items():
        reached[step] = max(reached.get(step, 0), len([r for r, t in by_record.items() if t.requests]))
    actual = {key: float(t.requests - t.re_asks) for key, t in meter.totals.items()}
    assert set(actual) == set(planned), (actual, planned)
    for key, count in planned.items():
        step_records = reached.get(key[0], 0)
        assert actual[key] == pytest.approx(count / limit * step_records), (key, actual, planned, reached)
    assert reached.get(plan.lines[0].step) == limit  # the first step sees every record
    if name in ("demo", "vote"):  # the first step's prompts are known exactly: so are their tokens
        for line in (x for x in plan.lines if x.step == plan.lines[0].step):
            tally = meter.totals[(line.step, line.model)]
            assert line.prompt_tokens / line.calls == pytest.approx(tally.prompt_tokens / tally.requests)

    again = asyncio.run(make_plan(load(work, name, limit, edit), registry_for(pipeline)))
    first = [line for line in again.lines if line.step == plan.lines[0].step]
    assert all(line.cached_calls == pytest.approx(line.calls) for line in first), [x.as_dict() for x in first]
