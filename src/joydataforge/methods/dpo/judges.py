"""LLM judges for preference data: a pointwise rubric and a pairwise comparison in both orders.

Pointwise: the judge scores one answer on each aspect of a rubric (helpfulness, correctness,
harmlessness, instruction following, or the user's own), each with a short rationale written *before*
the score, as JSON validated against a schema built from the aspects and the scale. A candidate's score
from one judge is the mean of its aspect scores; several judges are averaged.

Pairwise: the judge sees answers A and B and names the better one (or a tie). Each pair is asked in both
orders (A=i, B=j and A=j, B=i) to cancel position bias; a judge's verdict is +1 (i better in both
orders), -1 (j better in both) or 0 (the answer flipped with the order, or both orders said tie).
Several judges' verdicts are averaged. A candidate's score is its mean win share over the candidates it
was compared with: ``(1 + verdict) / 2`` per comparison (1 win, 0.5 tie, 0 loss).

A judgement that fails (the call failed, or the reply never validated) is recorded with its error and
raw reply and leaves the score to the other judges; with no judge left the candidate has no score
(``None``), never a zero.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from ...engine.prompted import call_meta
from ...engine.step import Record, StepContext
from ...errors import ModelError
from ...prompts.renderer import PromptTemplate


def pairwise_schema(rationale_chars: int = 300) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "rationale": {"type": "string", "maxLength": rationale_chars},
            "winner": {"type": "string", "enum": ["A", "B", "tie"]},
        },
        "required": ["rationale", "winner"],
    }


def pointwise_schema(aspects: dict[str, str], low: int, high: int, rationale_chars: int = 200) -> dict[str, Any]:
    """One object per aspect, rationale first (the judge reasons, then scores), score bounded to the scale.
    The rationale's length is bounded too, so a small judge cannot ramble past its token budget."""
    item = {
        "type": "object",
        "properties": {
            "rationale": {"type": "string", "maxLength": rationale_chars},
            "score": {"type": "integer", "minimum": low, "maximum": high},
        },
        "required": ["rationale", "score"],
    }
    return {"type": "object", "properties": dict.fromkeys(aspects, item), "required": list(aspects)}


@dataclass
class Judge:
    """One judge: a model and its sample index (a model listed twice judges twice, with distinct samples)."""

    model: str
    sample: int

    @property
    def label(self) -> str:
        return self.model if self.sample == 0 else f"{self.model}#{self.sample}"


def judges_from(models: list[str]) -> list[Judge]:
    seen: dict[str, int] = {}
    judges = []
    for model in models:
        judges.append(Judge(model, seen.get(model, 0)))
        seen[model] = seen.get(model, 0) + 1
    return judges


@dataclass
class JudgeRun:
    """What a scoring pass produced for one record."""

    scores: list[float | None]
    judgements: list[list[dict[str, Any]]]  # per candidate: per-judge entries (or errors)
    calls: list[dict[str, Any]] = field(default_factory=list)  # _meta.calls entries
    verdicts: dict[tuple[int, int], float | None] = field(default_factory=dict)  # pairwise: (i, j), i < j
    pair_records: list[dict[str, Any]] = field(default_factory=list)  # pairwise: per pair, per judge
    judge_pairs_compared: int = 0
    judge_pairs_agree: int = 0
    orders_compared: int = 0
    orders_consistent: int = 0
    failures: int = 0
    calls_made: int = 0


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


async def _ask(
    ctx: StepContext,
    judge: Judge,
    messages: list[dict[str, str]],
    schema: dict[str, Any],
    params: dict[str, Any],
    step: str,
    template: PromptTemplate,
) -> tuple[dict[str, Any] | None, dict[str, Any], dict[str, Any] | None]:
    """(value, entry, call meta); on failure value is None and entry holds the error and raw reply."""
    try:
        value, completion = await ctx.model(judge.model).chat_json(messages, schema, sample=judge.sample, **params)
    except ModelError as exc:
        return None, {"judge": judge.label, "error": str(exc), "raw": exc.raw}, None
    return (
        value,
        {"judge": judge.label},
        {**call_meta(step, judge.model, completion, template), "role": f"judge:{judge.label}"},
    )


async def judge_pointwise(
    ctx: StepContext,
    template: PromptTemplate,
    record: Record,
    texts: list[str | None],
    judges: list[Judge],
    aspects: dict[str, str],
    scale: tuple[int, int],
    options: dict[str, Any],
    params: dict[str, Any],
    step: str,
    rationale_chars: int = 200,
) -> JudgeRun:
    schema = pointwise_schema(aspects, *scale, rationale_chars)
    shown_aspects = [{"name": name, "description": text} for name, text in aspects.items()]
    jobs: list[tuple[int, Judge]] = [(i, j) for i, text in enumerate(texts) if text is not None for j in judges]

    async def one(i: int, judge: Judge) -> tuple[dict[str, Any] | None, dict[str, Any], dict[str, Any] | None]:
        messages = template.render(
            record,
            {**options, "aspects": shown_aspects, "scale_min": scale[0], "scale_max": scale[1], "response": texts[i]},
        )
        return await _ask(ctx, judge, messages, schema, params, step, template)

    results = await asyncio.gather(*(one(i, j) for i, j in jobs))
    run = JudgeRun(scores=[None] * len(texts), judgements=[[] for _ in texts])
    per_judge: dict[str, dict[int, float]] = {j.label: {} for j in judges}
    for (i, judge), (value, entry, meta) in zip(jobs, results):
        run.calls_made += 1
        if value is None:
            run.failures += 1
            run.judgements[i].append(entry)
            continue
        run.calls.append(meta)  # type: ignore[arg-type]
        aspect_scores = {name: value[name] for name in aspects}
        mean = sum(float(a["score"]) for a in aspect_scores.values()) / len(aspect_scores)
        per_judge[judge.label][i] = mean
        run.judgements[i].append({**entry, "score": round(mean, 4), "aspects": aspect_scores})
    for i in range(len(texts)):
        got = [per_judge[j.label][i] for j in judges if i in per_judge[j.label]]
        run.scores[i] = sum(got) / len(got) if got else None
    # Agreement between judges: for each two judges and each two candidates both scored, do they order
    # the two candidates the same way (a tie agrees only with a tie)?
    for a, b in itertools.combinations([j.label for j in judges], 2):
        common = sorted(set(per_judge[a]) & set(per_judge[b]))
        for x, y in itertools.combinations(common, 2):
            run.judge_pairs_compared += 1
            order_a = _sign(per_judge[a][x] - per_judge[a][y])
            run.judge_pairs_agree += order_a == _sign(per_judge[b][x] - per_judge[b][y])
    return run


async def judge_pairwise(
    ctx: StepContext,
    template: PromptTemplate,
    record: Record,
    texts: list[str | None],
    judges: list[Judge],
    options: dict[str, Any],
    params: dict[str, Any],
    step: str,
    rationale_chars: int = 300,
) -> JudgeRun:
    schema = pairwise_schema(rationale_chars)
    usable = [i for i, t in enumerate(texts) if t is not None]
    pairs = list(itertools.combinations(usable, 2))
    jobs: list[tuple[int, int, Judge, bool]] = [
        (i, j, judge, swapped) for i, j in pairs for judge in judges for swapped in (False, True)
    ]

    async def one(i: int, j: int, judge: Judge, swapped: bool):
        a, b = (j, i) if swapped else (i, j)
        messages = template.render(record, {**options, "response_a": texts[a], "response_b": texts[b]})
        return await _ask(ctx, judge, messages, schema, params, step, template)

    results = await asyncio.gather(*(one(*job) for job in jobs))
    run = JudgeRun(scores=[None] * len(texts), judgements=[[] for _ in texts])
    # Per pair and judge: the winner in each order, as +1 (i), -1 (j), 0 (tie), None (failed).
    outcome: dict[tuple[int, int], dict[str, dict[str, Any]]] = {p: {} for p in pairs}
    for (i, j, judge, swapped), (value, entry, meta) in zip(jobs, results):
        run.calls_made += 1
        slot = outcome[(i, j)].setdefault(judge.label, {"judge": judge.label})
        order = "ji" if swapped else "ij"
        if value is None:
            run.failures += 1
            slot[order] = {"error": entry["error"], "raw": entry["raw"]}
            continue
        run.calls.append(meta)
        winner = value["winner"]
        said = 0 if winner == "tie" else (1 if (winner == "A") != swapped else -1)
        slot[order] = {"winner": winner, "prefers": said, "rationale": value["rationale"]}
    wins: dict[int, list[float]] = {i: [] for i in usable}
    for (i, j), by_judge in outcome.items():
        values: dict[str, int] = {}
        for label, slot in by_judge.items():
            first, second = slot.get("ij", {}), slot.get("ji", {})
            if "prefers" not in first or "prefers" not in second:
                slot["verdict"] = None
                continue
            run.orders_compared += 1
            run.orders_consistent += first["prefers"] == second["prefers"]
            verdict = first["prefers"] if first["prefers"] == second["prefers"] else 0
            slot["verdict"] = verdict
            values[label] = verdict
        for a, b in itertools.combinations(sorted(values), 2):
            run.judge_pairs_compared += 1
            run.judge_pairs_agree += values[a] == values[b]
        combined = sum(values.values()) / len(values) if values else None
        run.verdicts[(i, j)] = combined
        run.pair_records.append({"a": i, "b": j, "verdict": combined, "judges": list(by_judge.values())})
        if combined is not None:
            wins[i].append((1 + combined) / 2)
            wins[j].append((1 - combined) / 2)
    for i in usable:
        run.scores[i] = sum(wins[i]) / len(wins[i]) if wins[i] else None
    for record_ in run.pair_records:
        for side in ("a", "b"):
            run.judgements[record_[side]].append(
                {
                    "vs": record_["b" if side == "a" else "a"],
                    "verdict": (
                        record_["verdict"] if side == "a" or record_["verdict"] is None else -record_["verdict"]
                    ),
                }
            )
    return run


def direct_verdict(run: JudgeRun, chosen: int, rejected: int) -> float | None:
    """The pairwise judges' combined verdict of ``chosen`` over ``rejected`` (positive: chosen better)."""
    if (chosen, rejected) in run.verdicts:
        return run.verdicts[(chosen, rejected)]
    value = run.verdicts.get((rejected, chosen))
    return None if value is None else -value


def pair_rationales(run: JudgeRun, chosen: int, rejected: int) -> list[dict[str, Any]]:
    """The pairwise judges' words on exactly this pair: per judge, the order with ``a`` (the lower
    candidate index) shown first (``ij``) and the swapped order (``ji``), each with winner and rationale."""
    key = (min(chosen, rejected), max(chosen, rejected))
    for entry in run.pair_records:
        if (entry["a"], entry["b"]) == key:
            return [{"a": entry["a"], "b": entry["b"], **judge} for judge in entry["judges"]]
    return []
