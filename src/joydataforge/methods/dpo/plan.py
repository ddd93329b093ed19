"""What ``dpo`` costs before it runs (``joyforge plan``).

Candidates: every model x temperature x sample (exact), plus those the record carries. Judging: each usable
candidate once per judge (``pointwise``), every two candidates per judge in both orders (``pairwise``:
judges x pairs x 2), or one reward score each (``reward``). Candidates that fail, are blank or repeat an
earlier one are never judged: ``dpo.unusable_rate`` (default 0, the most calls) is their share; with none
the count is exact.
"""

from __future__ import annotations

import itertools
from typing import Any

from ...engine.fanout import Assumption, Assumptions, Calls, FanOut, MethodPlan, Request
from ...engine.step import Record, StepContext
from .config import PreferencePairsConfig
from .judges import judges_from, pairwise_schema, pointwise_schema
from .step import PreferencePairs

UNUSABLE_RATE = Assumption(
    "dpo.unusable_rate",
    0.0,
    "share of candidates never judged: failed, blank, a repeat of another, failing text checks",
    0.0,
    0.5,
)
PAIR_DROP_RATE = Assumption(
    "dpo.pair_drop_rate", 0.0, "share of candidate pairs dropped (ties, below the margin, contradicted)"
)
RECORD_CANDIDATES = Assumption(
    "dpo.record_candidates",
    0.0,
    "candidates a record carries in candidates_field, where the records are not known before the run",
    0.0,
    8.0,
    0.0,
    1e6,
)


def _temperatures(config: PreferencePairsConfig) -> list[float | None]:
    return list(config.temperatures) if config.temperatures is not None else [None]


def _given(config: PreferencePairsConfig, assume: Assumptions, record: Record | None) -> tuple[float, bool]:
    """Candidates the record carries: counted on a known record, assumed otherwise."""
    if not config.candidates_field:
        return 0.0, True
    if record is None:
        return assume[RECORD_CANDIDATES.name], False
    return float(len(given_texts(config.candidates_field, record))), True


def fan_out(config: PreferencePairsConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    per_model = len(_temperatures(config)) * config.samples
    generated: dict[str, int] = {}
    for model in config.models:
        generated[model] = generated.get(model, 0) + per_model
    calls = [Calls("candidate", model, count, params=config.params) for model, count in generated.items()]
    given, exact = _given(config, assume, record)
    unusable = assume[UNUSABLE_RATE.name]
    # Generated candidates may come back blank or repeated (never judged): judging is exact for fixed candidates.
    exact = exact and unusable == 0.0 and not config.models
    usable = (given + sum(generated.values())) * (1.0 - unusable)
    pairs = usable * (usable - 1) / 2 if usable > 1 else 0.0
    judges: dict[str, int] = {}
    for judge in config.judges:
        judges[judge] = judges.get(judge, 0) + 1
    for judge, times in judges.items():
        if config.scorer == "pointwise":
            calls.append(Calls("judge", judge, usable * times, exact, json=True, params=config.judge_params))
        elif config.scorer == "pairwise":
            calls.append(Calls("judge", judge, pairs * 2 * times, exact, json=True, params=config.judge_params))
        else:
            calls.append(Calls("reward", judge, usable * times, exact, params=config.judge_params))
    keep = 1.0 - assume[PAIR_DROP_RATE.name]
    if config.output == "scores":
        outputs = 1.0
    elif config.rule == "all_pairs":
        outputs = pairs * keep
    else:
        outputs = keep if usable >= 2 else 0.0
    return FanOut(calls, outputs, exact_outputs=False, adds={"chosen": "candidate", "rejected": "candidate"})


def given_texts(field: str | None, record: Record) -> list[str]:
    """The record's own candidates the step will judge, as it reads them (a string, or an object's ``text`` or
    ``content``): blanks and repeats of an earlier one left out, as the step leaves them out."""
    given = record.get(field) if field else None
    texts: list[str] = []
    seen: set[str] = set()
    for item in given if isinstance(given, list) else []:
        text = item.get("text", item.get("content")) if isinstance(item, dict) else item
        if isinstance(text, str) and text.strip() and text.strip() not in seen:
            seen.add(text.strip())
            texts.append(text)
    return texts


def requests(step: PreferencePairs, ctx: StepContext, record: Record) -> list[Request]:
    """Candidate requests (known), then the judges': exact for the candidates the record carries, and one
    with the answer left out standing for those generated here (their text is a reply)."""
    out: list[Request] = []
    if step.models:
        messages = step.prompt(ctx, step.prompt_ref).render(record, step.options)
        for model in step.models:
            for temperature in step.temperatures:
                params = dict(step.params)
                if temperature is not None:
                    params["temperature"] = temperature
                for sample in range(step.samples):
                    out.append(Request("candidate", model, messages, params=params, sample=sample))
    if step.scorer == "reward" or not step.judge_prompt_ref:
        return out
    template = step.prompt(ctx, step.judge_prompt_ref)
    judges = judges_from(step.judges)
    given = given_texts(step.candidates_field, record)

    def judge(options: dict[str, Any], schema: dict[str, Any], inserts: dict[str, float]) -> None:
        messages = template.render(record, {**step.options, **options})
        for j in judges:
            out.append(
                Request(
                    "judge",
                    j.model,
                    messages,
                    params=step.judge_params,
                    schema=schema,
                    sample=j.sample,
                    inserts=inserts,
                )
            )

    if step.scorer == "pointwise":
        shown = [{"name": name, "description": text} for name, text in step.aspects.items()]
        base = {"aspects": shown, "scale_min": step.scale[0], "scale_max": step.scale[1]}
        schema = pointwise_schema(step.aspects, *step.scale, step.rationale_chars)
        for text in given:
            judge({**base, "response": text}, schema, {})
        if step.models:
            judge({**base, "response": ""}, schema, {"candidate": 1.0})
        return out
    schema = pairwise_schema(step.rationale_chars)
    for i, j in itertools.combinations(range(len(given)), 2):
        for a, b in ((i, j), (j, i)):
            judge({"response_a": given[a], "response_b": given[b]}, schema, {})
    if step.models:
        judge({"response_a": "", "response_b": ""}, schema, {"candidate": 2.0})
    return out


DPO = MethodPlan(fan_out, requests, (UNUSABLE_RATE, PAIR_DROP_RATE, RECORD_CANDIDATES))  # type: ignore[arg-type]
