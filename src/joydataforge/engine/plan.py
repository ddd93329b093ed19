"""``joyforge plan``: what a pipeline will cost before it is paid for, per step and per model.

Two ways to know:

- **From the settings alone** (no model called or loaded): every step's fan-out (its method's ``plan.py``)
  over the input records, the prompts rendered by the steps' own templates on those records and counted with
  each model's tokenizer (:mod:`joydataforge.models.tokens`), completion tokens from ``max_tokens``; the
  requests already in the call cache (looked up with the gateway's own key) cost nothing. Whatever depends on
  replies is an assumption, named in the plan with its value; each one is also evaluated at the ends of its
  plausible range, which gives the plan's ranges.
- **With a pilot** (``pilot=N``): N records spread over the run's window (one drawn from each of N equal runs
  of consecutive records, seeded by ``run.seed``) run for real, through the normal executor into a scratch
  folder and with the normal call cache (so the later run gets those answers free), every request counted by
  step, model and record (:mod:`.meter`). The pilot's records count as measured, exactly; only the rest of
  the window is extrapolated: its analytic plan scaled by measured / planned on the pilot's records (a ratio
  estimator), with the measured token means. The ranges are ~95% prediction intervals for the rest from the
  spread between the pilot's records.

Prices: :func:`joydataforge.models.prices.price_of` (``pricing:`` in models.yaml, else the genai-prices
table), at the batch price too where the provider has one. Time: at each model's concurrency and rate limits.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import random
import shutil
import statistics
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.pipeline import Pipeline
from ..errors import ConfigError, InputError, JoyForgeError, RunStopped
from ..io.readers import iter_records
from ..methods.critique.plan import CRITIQUE
from ..methods.dedup.plan import DEDUP
from ..methods.dialogue.plan import DIALOGUE_INTENT, INTENT_BINARY
from ..methods.dpo.plan import DPO
from ..methods.evol_instruct.plan import EVOL
from ..methods.generate.plan import GENERATE, LABEL
from ..methods.joint.plan import JOINT
from ..methods.magpie.plan import MAGPIE, MAGPIE_RESPONSE, MAGPIE_TAG
from ..methods.rewrite.plan import REWRITE
from ..methods.seedless.plan import SEEDLESS
from ..methods.tool_dialogue.plan import TOOL_DIALOGUE
from ..methods.verify.plan import VERIFY
from ..methods.vote.plan import CASCADE, VOTE
from ..models.backends.base import Backend, Completion, Messages
from ..models.cache import CallCache
from ..models.chat_template import ChatTemplateSource, load_chat_template_file
from ..models.config import ModelConfig, ModelRegistry
from ..models.gateway import Gateway, ModelClient
from ..models.prices import Price, price_of, table_version
from ..models.tokens import TokenCounter, context_window, counter_for
from ..prompts.renderer import PromptLibrary
from ..records import IdAssigner
from .fanout import (
    COMPLETION_FILL,
    DEFAULT_MAX_TOKENS,
    FAILURE_RATE,
    GENERAL,
    JSON_INVALID,
    SECONDS_PER_CALL,
    TOKENS_PER_SECOND,
    Assumption,
    Assumptions,
    Calls,
    FanOut,
    MethodPlan,
    Request,
    max_tokens_of,
)
from .local import LocalExecutor, field_error
from .meter import CallMeter, MeteredGateway, Tally, meter_steps
from .registry import build_step
from .step import Record, Step, StepContext, source_id_of, with_source_id

PLANS: dict[str, MethodPlan] = {
    "generate": GENERATE,
    "label": LABEL,
    "vote": VOTE,
    "cascade": CASCADE,
    "joint": JOINT,
    "critique_revise": CRITIQUE,
    "dpo": DPO,
    "evol_instruct": EVOL,
    "rewrite": REWRITE,
    "seedless": SEEDLESS,
    "dialogue_intent": DIALOGUE_INTENT,
    "intent_binary": INTENT_BINARY,
    "magpie": MAGPIE,
    "magpie_response": MAGPIE_RESPONSE,
    "magpie_tag": MAGPIE_TAG,
    "minhash_dedup": DEDUP,
    "tool_dialogue": TOOL_DIALOGUE,
    "verify": VERIFY,
}
"""Each step kind's planner (its method's ``plan.py``); plugins add theirs with :func:`register_plan`."""

RECORDS_ANALYSED = 10_000
"""Input records whose prompts are rendered and counted one by one; a larger window is scaled from these."""
LATER_STEP_RECORDS = 50
"""Records on which a later step's prompts are rendered (its real records come from the steps before it)."""
_TIME_ASSUMPTIONS = {SECONDS_PER_CALL.name, TOKENS_PER_SECOND.name}


def register_plan(kind: str, plan: MethodPlan) -> None:
    """Let ``joyforge plan`` estimate a plugin step kind (without one, only a pilot can measure it)."""
    PLANS[kind] = plan


def known_assumptions() -> dict[str, Assumption]:
    """Every assumption of every planner, by name (``--assume`` checks names against these)."""
    known = {a.name: a for a in GENERAL}
    for plan in PLANS.values():
        known.update({a.name: a for a in plan.assumptions})
    return known


# ----------------------------------------------------------------------------------------------- the result


@dataclass
class Line:
    """One step's requests to one model, and what they cost.

    ``calls`` counts every request the run sends (or finds in the cache): first attempts plus ``re_asks`` of
    invalid JSON replies. ``exact``: the first attempts follow from the settings and the records alone (no
    reply can change them); re-asks never do. ``measured``: extrapolated from a pilot.
    """

    step: str
    kind: str
    model: str
    calls: float = 0.0
    re_asks: float = 0.0
    cached_calls: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    cost: float | None = 0.0
    batch_cost: float | None = 0.0
    seconds: float = 0.0
    exact: bool = True
    measured: bool = False
    calls_range: tuple[float, float] = (0.0, 0.0)
    tokens_range: tuple[float, float] = (0.0, 0.0)

    @property
    def paid_calls(self) -> float:
        return max(0.0, self.calls - self.cached_calls)

    @property
    def paid_share(self) -> float:
        return self.paid_calls / self.calls if self.calls else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "kind": self.kind,
            "model": self.model,
            "calls": _round(self.calls),
            "first_attempts": _round(self.calls - self.re_asks),
            "re_asks": _round(self.re_asks),
            "cached_calls": _round(self.cached_calls),
            "paid_calls": _round(self.paid_calls),
            "prompt_tokens": _round(self.prompt_tokens),
            "completion_tokens": _round(self.completion_tokens),
            "cost": None if self.cost is None else round(self.cost, 6),
            "batch_cost": None if self.batch_cost is None else round(self.batch_cost, 6),
            "seconds": round(self.seconds, 1),
            "exact": self.exact,
            "measured": self.measured,
            "calls_range": [_round(v) for v in self.calls_range],
            "tokens_range": [_round(v) for v in self.tokens_range],
        }


@dataclass
class ModelInfo:
    """How a model's numbers were made: its tokenizer, its price and where that comes from, its limits."""

    name: str
    tokens: str
    price: Price | None
    concurrency: int
    requests_per_minute: float | None
    tokens_per_minute: float | None
    latency: float | None = None  # measured mean seconds per paid request (pilot)

    def as_dict(self) -> dict[str, Any]:
        price = self.price
        return {
            "tokens": self.tokens,
            "price": None
            if price is None
            else {
                "input_per_mtok": price.input_per_mtok,
                "output_per_mtok": price.output_per_mtok,
                "batch_input_per_mtok": price.batch_input_per_mtok,
                "batch_output_per_mtok": price.batch_output_per_mtok,
                "source": price.source,
            },
            "concurrency": self.concurrency,
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "measured_latency": None if self.latency is None else round(self.latency, 3),
        }


@dataclass
class Plan:
    """What a run of a pipeline will ask of its models: per step and model, with its assumptions stated."""

    pipeline: str
    records: int
    lines: list[Line] = field(default_factory=list)
    models: dict[str, ModelInfo] = field(default_factory=dict)
    assumptions: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pilot: int | None = None
    pilot_seconds: float | None = None
    seconds_range: tuple[float, float] = (0.0, 0.0)

    def totals(self) -> dict[str, Any]:
        lines = self.lines
        costs = [line.cost for line in lines]
        batch = [line.batch_cost for line in lines]
        unpriced = sorted({line.model for line in lines if line.cost is None and line.paid_calls})
        return {
            "calls": _round(sum(line.calls for line in lines)),
            "first_attempts": _round(sum(line.calls - line.re_asks for line in lines)),
            "re_asks": _round(sum(line.re_asks for line in lines)),
            "cached_calls": _round(sum(line.cached_calls for line in lines)),
            "paid_calls": _round(sum(line.paid_calls for line in lines)),
            "prompt_tokens": _round(sum(line.prompt_tokens for line in lines)),
            "completion_tokens": _round(sum(line.completion_tokens for line in lines)),
            "cost": round(sum(c for c in costs if c is not None), 6),
            "batch_cost": round(sum(c for c in batch if c is not None), 6),
            "unpriced_models": unpriced,
            "exact": all(line.exact for line in lines),
            "calls_range": [_round(sum(line.calls_range[i] for line in lines)) for i in (0, 1)],
            "tokens_range": [_round(sum(line.tokens_range[i] for line in lines)) for i in (0, 1)],
            "seconds_range": [round(v, 1) for v in self.seconds_range],
        }

    def by_model(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for line in self.lines:
            entry = out.setdefault(
                line.model,
                {"calls": 0.0, "cached_calls": 0.0, "prompt_tokens": 0.0, "completion_tokens": 0.0, "cost": 0.0},
            )
            entry["calls"] += line.calls
            entry["cached_calls"] += line.cached_calls
            entry["prompt_tokens"] += line.prompt_tokens
            entry["completion_tokens"] += line.completion_tokens
            entry["cost"] = None if entry["cost"] is None or line.cost is None else entry["cost"] + line.cost
        for entry in out.values():
            for key in ("calls", "cached_calls", "prompt_tokens", "completion_tokens"):
                entry[key] = _round(entry[key])
            if entry["cost"] is not None:
                entry["cost"] = round(entry["cost"], 6)
        return out

    def as_dict(self) -> dict[str, Any]:
        steps: dict[str, dict[str, Any]] = {}
        for line in self.lines:
            step = steps.setdefault(line.step, {"step": line.step, "kind": line.kind, "models": {}})
            step["models"][line.model] = line.as_dict()
        return {
            "pipeline": self.pipeline,
            "records": self.records,
            "pilot": self.pilot,
            "pilot_seconds": None if self.pilot_seconds is None else round(self.pilot_seconds, 1),
            "totals": self.totals(),
            "steps": list(steps.values()),
            "models": {name: {**self.by_model().get(name, {}), **info.as_dict()} for name, info in self.models.items()},
            "assumptions": self.assumptions,
            "notes": self.notes,
        }


def _round(value: float) -> float | int:
    return int(round(value)) if abs(value - round(value)) < 1e-6 or abs(value) >= 100 else round(value, 2)


# ----------------------------------------------------------------------------- rendering the real prompts


class _PlanBackend(Backend):
    """Every model while planning: no call is ever made; the chat template (raw-completion methods render
    their pre-query with it) comes from the tokenizer's source or the template file models.yaml names."""

    def __init__(self, config: ModelConfig, counter: TokenCounter):
        self.config = config
        self.counter = counter

    async def chat(
        self,
        messages: Messages,
        params: dict[str, Any],
        *,
        json_schema: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> Completion:
        raise JoyForgeError(f"model '{self.config.name}': joyforge plan makes no model calls")

    async def chat_template(self) -> ChatTemplateSource | None:
        found = self.counter.chat_template()
        if found is None and self.config.chat_template and self.config.chat_template.endswith((".json", ".jinja")):
            found = load_chat_template_file(self.config.chat_template)
        return found


@dataclass
class _RoleStats:
    """The requests of one (step, role, model) rendered for the plan."""

    requests: int = 0
    prompt_tokens: float = 0.0
    over: int = 0  # requests whose prompt does not fit the model's context window: refused, no tokens
    inserts: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    json: bool = False
    max_tokens: int | None = None
    n: int = 1
    rooms: list[int] = field(default_factory=list)
    """Of the requests known exactly (the first step's, no reply shown in them) whose prompt fits the model's
    context window but leaves less room than their reply bound: the room each leaves (a reply is cut there)."""
    window: int | None = None

    def prompt_per_call(self) -> float:
        return self.prompt_tokens / self.requests if self.requests else 0.0

    def fitting(self) -> float:
        """The share of requests that fit the model's context window (the rest fail at once)."""
        return 1.0 - self.over / self.requests if self.requests else 1.0

    def inserts_per_call(self) -> dict[str, float]:
        return {role: value / self.requests for role, value in self.inserts.items()} if self.requests else {}


@dataclass
class _Record:
    """One input record as the first step sees it, and which of its first-stage requests are cached."""

    record: Record
    cached: dict[tuple[str, str], float]  # (role, model) -> share of its known requests in the cache
    full: bool  # every known request of the record is in the cache (its later calls are assumed cached too)
    refused: bool = False  # the first step refuses it before any call (a field its prompt needs is missing)


@dataclass
class _StepInfo:
    index: int
    step: Step
    plan: MethodPlan | None
    roles: dict[tuple[str, str], _RoleStats] = field(default_factory=dict)
    reads: set[str] = field(default_factory=set)  # fields made by earlier steps that its prompts read
    unrendered: str | None = None  # why its prompts could not be rendered


class _Analysis:
    """Everything about a pipeline that does not depend on the assumptions: the steps built, the input read,
    every first-stage request rendered, counted and looked up in the cache."""

    def __init__(self, pipeline: Pipeline, registry: ModelRegistry):
        self.pipeline = pipeline
        self.registry = _keyless(registry)
        self.counters = {name: counter_for(self.registry.get(name)) for name in _models_of(pipeline)}
        self.steps: list[_StepInfo] = []
        self.records: list[_Record] = []
        self.before: list[Record] = []  # the pilot's records: a dialogue it labelled costs the rest nothing
        self.total_records = 0
        self.bad_lines = 0
        self.notes: list[str] = []
        self.keys: set[str] = set()  # cache keys of the known requests seen so far

    async def run(self, pilot: frozenset[str] = frozenset(), *, only_pilot: bool = False) -> None:
        """Read the window (the records whose ids are in ``pilot`` ran as a pilot: counted apart, or alone with
        ``only_pilot``), build and check the steps, render and count every first-stage request, look the known
        ones up in the cache."""
        pipeline = self.pipeline
        cache_path = pipeline.resolve(pipeline.run.cache) if pipeline.run.cache else None
        cache = CallCache(cache_path) if cache_path is not None and cache_path.is_file() else None
        backends = {name: _PlanBackend(self.registry.get(name), c) for name, c in self.counters.items()}
        gateway = Gateway(self.registry, cache, backends=backends)  # type: ignore[arg-type]
        try:
            ctx = _context(pipeline, gateway)
            for index, config in enumerate(pipeline.step_configs):
                step = build_step(config)
                step.check(ctx)
                self.steps.append(_StepInfo(index, step, _plan_of(step)))
            inputs = self._read(pilot, only_pilot)
            for info in self.steps:
                if info.index == 0:
                    await self._first_step(info, inputs, ctx, gateway, cache)
                else:
                    await self._later_step(info, inputs[:LATER_STEP_RECORDS], ctx)
        finally:
            if cache is not None:
                cache.close()

    def _read(self, pilot: frozenset[str], only_pilot: bool) -> list[Record]:
        cfg = self.pipeline.input
        path = self.pipeline.resolve(cfg.path)
        assert path is not None
        if not path.exists():
            raise ConfigError(f"{self.pipeline.name}: input.path: no such file or folder: {path}")
        assign = IdAssigner(cfg.id_field)
        records: list[Record] = []
        for item in iter_records(path, start=cfg.start, limit=cfg.limit, encoding=cfg.encoding, sheet=cfg.sheet):
            if item.error is not None or item.record is None:
                self.bad_lines += int(not only_pilot)
                continue
            source_id = assign(item.record)  # every record, so repeated ids get the suffixes the run gives
            if (source_id in pilot) != only_pilot:  # a pilot's record (measured), or one the pilot did not run
                if not only_pilot:
                    self.before.append(with_source_id(item.record, source_id))
                continue
            self.total_records += 1
            if len(records) < RECORDS_ANALYSED:
                records.append(with_source_id(item.record, source_id))
        if self.total_records > len(records):
            self.notes.append(
                f"prompts counted on the first {len(records):,} of {self.total_records:,} records; the rest scaled"
            )
        return records

    async def _requests(self, info: _StepInfo, ctx: StepContext, record: Record) -> list[Request]:
        assert info.plan is not None and info.plan.requests is not None
        made = info.plan.requests(info.step, ctx, record)
        if inspect.isawaitable(made):
            made = await made
        return list(made)  # type: ignore[arg-type]

    def _count(self, info: _StepInfo, request: Request) -> None:
        stats = info.roles.setdefault((request.role, request.model), _RoleStats())
        stats.requests += 1
        config = self.registry.get(request.model)
        counter = self.counters.get(request.model) or counter_for(config)
        tokens = counter.prompt(request.payload)  # type: ignore[arg-type]
        window = context_window(config)
        if window is not None and not request.inserts and tokens >= window:
            stats.over += 1  # refused by the model before it writes anything: a failed call, no tokens
        else:
            stats.prompt_tokens += tokens
            bound = max_tokens_of({**config.params, **request.params}) or int(DEFAULT_MAX_TOKENS.high)
            if window is not None and info.index == 0 and not request.inserts and request.n == 1:
                stats.window = window
                if window - tokens < bound:  # the reply may not fit after the prompt: cut where the window ends
                    stats.rooms.append(window - tokens)
        for role, count in request.inserts.items():
            stats.inserts[role] += count
        stats.json = stats.json or request.schema is not None
        stats.n = max(stats.n, request.n)
        own = max_tokens_of(request.params)
        if own is not None:
            stats.max_tokens = own

    async def _first_step(
        self, info: _StepInfo, inputs: list[Record], ctx: StepContext, gateway: Gateway, cache: CallCache | None
    ) -> None:
        refused = 0
        for record in inputs:
            cached: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
            if field_error(info.step, record) is not None:
                refused += 1
                self.records.append(_Record(record, {}, False, refused=True))
                continue
            if info.plan is not None and info.plan.requests is not None:
                try:
                    requests = await self._requests(info, ctx, record)
                except InputError:  # a record the step refuses before calling (a field it lacks)
                    refused += 1
                    self.records.append(_Record(record, {}, False, refused=True))
                    continue
                except Exception as exc:  # its calls still count; their prompts are not known
                    requests = []
                    info.unrendered = info.unrendered or f"its prompts could not be rendered ({exc})"
                for request in requests:
                    self._count(info, request)
                    if request.known:
                        # In the cache already, or asked earlier in this run (a repeated record, a prompt asked
                        # twice): either way the run's gateway answers it from the cache.
                        key = _key(gateway.model(request.model), request)
                        hit = key in self.keys or (cache is not None and await cache.get(key) is not None)
                        self.keys.add(key)
                        cached[(request.role, request.model)][0] += int(hit)
                        cached[(request.role, request.model)][1] += 1
            shares = {key: hit / known for key, (hit, known) in cached.items() if known}
            full = bool(shares) and all(s == 1.0 for s in shares.values())
            self.records.append(_Record(record, shares, full))
        if refused:
            self.notes.append(
                f"step '{info.step.name}': {refused} record(s) lack a field its prompt needs: they fail before any "
                "call (joyforge validate lists them)"
            )

    async def _later_step(self, info: _StepInfo, inputs: list[Record], ctx: StepContext) -> None:
        """A later step's records come from the steps before it: its prompts are rendered on the input
        records with the fields those steps add left empty (their expected length is added in the arithmetic)."""
        made = {field for earlier in self.steps[: info.index] for field in _adds(earlier)}
        needed = info.step.required_fields()
        info.reads = needed & made
        if info.plan is None or info.plan.requests is None:
            return
        problems = 0
        for record in inputs:
            view = {**record, **dict.fromkeys(made, ""), **{f: "" for f in needed if f not in record}}
            try:
                requests = await self._requests(info, ctx, view)
            except Exception:  # the input records do not have this step's shape: counted as unrendered
                problems += 1
                continue
            for request in requests:
                self._count(info, request)
        if problems and not info.roles:
            info.unrendered = "its prompts could not be rendered before the run (its records come from earlier steps)"


def _adds(info: _StepInfo) -> set[str]:
    if info.plan is None:
        return set()
    try:
        return set(info.plan.fan_out(info.step.config, Assumptions(known_assumptions()), None).adds)
    except Exception:
        return set()


def _key(client: ModelClient, request: Request) -> str:
    """The request's call-cache key, made by the gateway's own key function from what the gateway would send:
    the model's parameters under the step's, ``n`` for grouped samples, the schema, the sample, attempt 0."""
    schema = dict(request.schema) if request.schema is not None else None
    return client.cache_key(
        request.verb, request.payload, dict(request.params), schema=schema, sample=request.sample, n=request.n
    )


def _plan_of(step: Step) -> MethodPlan | None:
    plan = PLANS.get(step.kind)
    if plan is None and not step.model_names():  # calls no model (a filter, a checker): nothing to plan
        return MethodPlan(lambda config, assume, record=None: FanOut([]))
    return plan


def _keyless(registry: ModelRegistry) -> ModelRegistry:
    """The models without their key variables: a plan reaches no endpoint, and an unset key must not stop it.
    The cache key does not depend on the key, so lookups are unaffected."""
    models = {name: config.model_copy(update={"api_key_env": None}) for name, config in registry.models.items()}
    return ModelRegistry(models, registry.source)


def _models_of(pipeline: Pipeline) -> list[str]:
    names: list[str] = []
    for config in pipeline.step_configs:
        names.extend(config.model_names())
    return list(dict.fromkeys(names))


def _context(pipeline: Pipeline, gateway: Gateway) -> StepContext:
    """The step context the executor would build (the same prompt search path and language)."""
    run = pipeline.run
    search = [Path(pipeline.base_dir)]
    if run.prompts_dir:
        search.insert(0, pipeline.resolve(run.prompts_dir))  # type: ignore[arg-type]
    return StepContext(gateway, PromptLibrary(search, language=run.language), seed=run.seed)


# ------------------------------------------------------------------------------------------ the arithmetic


@dataclass
class _Numbers:
    calls: float = 0.0
    re_asks: float = 0.0
    cached: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    exact: bool = True

    @property
    def tokens(self) -> float:
        return self.prompt_tokens + self.completion_tokens


class _Evaluation:
    """The analytic plan of some records under one set of assumption values: numbers per (step, model)."""

    def __init__(
        self,
        analysis: _Analysis,
        assume: Assumptions,
        records: list[_Record],
        total: int,
        lengths: dict[tuple[str, str], list[int]] | None = None,
    ):
        self.analysis = analysis
        self.assume = assume
        self.lengths = lengths or {}  # reply lengths a pilot measured, by (step, model)
        self.lines: dict[tuple[int, str], _Numbers] = defaultdict(_Numbers)
        self.unplanned: list[str] = []
        self._evaluate(records, total)

    def _completion(self, info: _StepInfo, spec: Calls) -> float:
        """Expected completion tokens of one request: its max_tokens (the step's over the model's) x fill."""
        config = self.analysis.registry.get(spec.model)
        stats = info.roles.get((spec.role, spec.model))
        bound = max_tokens_of({**config.params, **spec.params}) or (stats.max_tokens if stats else None)
        tokens = float(bound) if bound is not None else self.assume[DEFAULT_MAX_TOKENS.name]
        return tokens * self.assume[COMPLETION_FILL.name] * spec.n

    def _evaluate(self, records: list[_Record], total: int) -> None:
        assume = self.assume
        scale = total / len(records) if records else 0.0
        full_share = sum(r.full for r in records) / len(records) if records else 0.0
        failure = assume[FAILURE_RATE.name]
        field_tokens: dict[str, float] = {}  # fields earlier steps add -> their expected tokens
        flowing = float(total)  # records reaching the step
        exact_inflow = True
        for info in self.analysis.steps:
            if info.plan is None:
                self.unplanned.append(info.step.name)
                exact_inflow = False
                continue
            per_role: dict[tuple[str, str], _Numbers] = defaultdict(_Numbers)
            specs: dict[tuple[str, str], Calls] = {}
            # The step's shape (its adds, its calls' settings); for the first step, whose records are known, read
            # on a copy so that assumptions about unknown records are not listed as used.
            shape = info.plan.fan_out(
                info.step.config, assume.evaluated_at(assume.overrides) if info.index == 0 else assume, None
            )
            if info.index == 0:
                outputs, exact_outputs, seen = 0.0, True, set()
                for before in self.analysis.before:  # calls made once per key (a dialogue) the pilot made already
                    key = info.plan.fan_out(info.step.config, assume, before).once_per
                    if key is not None:
                        seen.add(key)
                for item in records:
                    if item.refused:
                        continue
                    fan = info.plan.fan_out(info.step.config, assume, item.record)
                    if fan.once_per is not None:
                        if fan.once_per in seen:
                            continue
                        seen.add(fan.once_per)
                    outputs += fan.outputs * scale
                    exact_outputs &= fan.exact_outputs
                    for spec in fan.calls:
                        specs.setdefault((spec.role, spec.model), spec)
                        numbers = per_role[(spec.role, spec.model)]
                        numbers.calls += spec.count * scale
                        numbers.exact &= spec.exact
                        share = item.cached.get((spec.role, spec.model), 1.0 if item.full else 0.0)
                        numbers.cached += spec.count * scale * share
            else:
                outputs, exact_outputs = flowing * shape.outputs, shape.exact_outputs
                for spec in shape.calls:
                    specs.setdefault((spec.role, spec.model), spec)
                    numbers = per_role[(spec.role, spec.model)]
                    numbers.calls += flowing * spec.count
                    numbers.exact &= spec.exact and exact_inflow
                    numbers.cached += flowing * spec.count * full_share
            for spec in shape.calls:
                specs.setdefault((spec.role, spec.model), spec)
            completions = {role: self._completion(info, spec) for (role, _), spec in specs.items()}
            for (role, model), numbers in per_role.items():
                self._tokens(info, role, model, numbers, specs[(role, model)], completions, field_tokens)
                line = self.lines[(info.index, model)]
                line.calls += numbers.calls
                line.re_asks += numbers.re_asks
                line.cached += numbers.cached
                line.prompt_tokens += numbers.prompt_tokens
                line.completion_tokens += numbers.completion_tokens
                line.exact &= numbers.exact
            for name, role in shape.adds.items():
                spec = next((s for (r, _), s in specs.items() if r == role), None)
                if spec is not None:
                    field_tokens[name] = completions[role] / max(1, spec.n)
            flowing = outputs * (1.0 - failure)
            exact_inflow = exact_inflow and exact_outputs and failure == 0.0

    def _tokens(
        self,
        info: _StepInfo,
        role: str,
        model: str,
        numbers: _Numbers,
        spec: Calls,
        completions: dict[str, float],
        field_tokens: dict[str, float],
    ) -> None:
        """Re-asks of JSON replies, then the prompt and completion tokens of every attempt.

        A request whose prompt leaves less room in the model's context window than its reply takes is cut where
        the window ends: it writes only that much, and a JSON reply cut short does not parse, so it is asked again
        (up to the model's ``json_retries``), each attempt cut the same way. How often a reply outgrows a room:
        the share of the replies a pilot measured for this step and model that are longer, else whether the
        planned reply length is. A prompt that does not fit at all fails once, without tokens.
        """
        stats = info.roles.get((role, model))
        json_reply = (stats is not None and stats.json) or spec.json
        p = self.assume[JSON_INVALID.name] if json_reply else 0.0
        retries = self.analysis.registry.get(model).json_retries if json_reply else 0
        reply = completions[role]
        extra = sum(field_tokens.get(f, 0.0) for f in info.reads)
        if stats is not None and stats.requests:
            extra += sum(completions.get(r, 0.0) * k for r, k in stats.inserts_per_call().items())
            attempts, prompt, written = self._attempts(
                stats, p, retries, reply, self.lengths.get((info.step.name, model))
            )
        else:
            attempts, prompt, written = _attempts_of(p, retries), 0.0, _attempts_of(p, retries) * reply
        numbers.re_asks = numbers.calls * (attempts - 1.0)
        numbers.cached *= attempts
        numbers.prompt_tokens = numbers.calls * (prompt + attempts * extra)
        numbers.completion_tokens = numbers.calls * written
        numbers.calls *= attempts

    @staticmethod
    def _attempts(
        stats: _RoleStats, p: float, retries: int, reply: float, lengths: list[int] | None
    ) -> tuple[float, float, float]:
        """Per request, on average: attempts, prompt tokens sent over them, completion tokens written."""
        plain_attempts = _attempts_of(p, retries)
        plain = stats.requests - stats.over - len(stats.rooms)
        cut_prompts = sum((stats.window or 0) - room for room in stats.rooms)
        plain_prompt = (stats.prompt_tokens - cut_prompts) / plain if plain > 0 else 0.0
        attempts = stats.over + plain * plain_attempts  # a prompt that does not fit fails once
        prompt = plain * plain_attempts * plain_prompt
        written = plain * plain_attempts * reply
        for room in stats.rooms:
            if lengths:
                cut = sum(1 for n in lengths if n > room) / len(lengths)
                each = sum(min(n, room) for n in lengths) / len(lengths)
            else:
                cut, each = float(reply > room), min(reply, room)
            tries = _attempts_of(cut + (1.0 - cut) * p, retries) if retries else 1.0
            attempts += tries
            prompt += tries * ((stats.window or 0) - room)
            written += tries * each
        return attempts / stats.requests, prompt / stats.requests, written / stats.requests


def _attempts_of(invalid: float, retries: int) -> float:
    """Expected attempts of a JSON request whose replies are each invalid with probability ``invalid``: the first,
    then a re-ask after each invalid one, up to ``retries``."""
    return sum(invalid**k for k in range(retries + 1))


# ------------------------------------------------------------------------------------------ the pilot


@dataclass
class PilotResult:
    meter: CallMeter
    records: int  # records the pilot ran
    seconds: float
    ids: list[str]  # their run ids, in input order
    stopped: str | None = None
    spread: bool = True  # drawn across the window; False: its first records (they could not be copied)
    lengths: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # reply lengths by (step, model)


PILOT_ID_FIELD = "_joyforge_pilot_id"
"""The field of the pilot's input copy that holds each record's run id, so the pilot sees the ids the run
gives (steps seed their samples with them); a ``_`` field, which prompts and record views leave out."""


def pilot_positions(total: int, count: int, seed: int) -> list[int]:
    """``count`` positions out of ``total``, spread over all of them: the positions cut into ``count`` runs of
    consecutive ones of (nearly) equal size, one drawn at random from each, seeded.

    Records often change along a file (sorted by source, date or length; easy ones first): the first N would
    measure one end of it. One from each run is a stratified sample, as spread as N records can be, and a
    seeded draw repeats itself, so a second pilot finds its records' calls in the cache.
    """
    if count >= total:
        return list(range(total))
    rng = random.Random(f"joyforge plan pilot {seed}")
    return [rng.randrange(k * total // count, (k + 1) * total // count) for k in range(count)]


def _pilot_records(pipeline: Pipeline, count: int) -> list[tuple[str, Record]]:
    """The pilot's records, with their run ids: :func:`pilot_positions` over the window's readable records."""
    cfg = pipeline.input
    path = pipeline.resolve(cfg.path)
    assert path is not None

    def window() -> Any:
        return iter_records(path, start=cfg.start, limit=cfg.limit, encoding=cfg.encoding, sheet=cfg.sheet)

    total = sum(1 for item in window() if item.error is None and item.record is not None)
    chosen = set(pilot_positions(total, count, pipeline.run.seed))
    assign = IdAssigner(cfg.id_field)
    picked: list[tuple[str, Record]] = []
    position = 0
    for item in window():
        if item.error is not None or item.record is None:
            continue
        source_id = assign(item.record)  # every record, so repeated ids get the suffixes the run gives
        if position in chosen:
            picked.append((source_id, item.record))
        position += 1
    return picked


def _copy_as_input(records: list[tuple[str, Record]], path: Path) -> bool:
    """Write the pilot's records as JSONL, each with its run id in :data:`PILOT_ID_FIELD`; False when a record
    does not come back from JSON as it was (dates, bytes: the pilot then runs the window's first records)."""
    lines = []
    for source_id, record in records:
        if PILOT_ID_FIELD in record:
            return False
        try:
            line = json.dumps({**record, PILOT_ID_FIELD: source_id}, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            return False
        if json.loads(line) != {**record, PILOT_ID_FIELD: source_id}:
            return False
        lines.append(line + "\n")
    path.write_text("".join(lines), "utf-8")
    return True


async def run_pilot(
    pipeline: Pipeline,
    registry: ModelRegistry,
    records: int,
    folder: Path,
    *,
    progress: bool = False,
    backends: dict[str, Backend] | None = None,
) -> PilotResult:
    """Run ``records`` records spread over the window (:func:`pilot_positions`) for real, into ``folder``, with
    the normal call cache: every request counted by step, model and record (so the later run gets these answers
    from the cache). ``backends`` supplies ready backends by model name, as
    :class:`~joydataforge.models.gateway.Gateway` takes."""
    steps = meter_steps([build_step(config) for config in pipeline.step_configs])
    picked = _pilot_records(pipeline, records)
    output = pipeline.output.model_copy(update={"dir": str(folder), "formats": ["jsonl"]})
    run = pipeline.run.model_copy(update={"retry_failed": False, "max_failures": None})
    cache_path = pipeline.resolve(pipeline.run.cache) if pipeline.run.cache else None
    meter = CallMeter()
    stopped = None
    with tempfile.TemporaryDirectory(prefix="joyforge-pilot-input-") as scratch:
        copy = Path(scratch) / "pilot.jsonl"
        spread = _copy_as_input(picked, copy)
        if spread:
            update = {"path": str(copy), "start": 0, "limit": None, "encoding": None, "sheet": None}
            window = pipeline.input.model_copy(update={**update, "id_field": PILOT_ID_FIELD})
        else:  # the window's first records, read from the input itself
            window = pipeline.input.model_copy(update={"limit": min(records, pipeline.input.limit or records)})
            picked = _first_records(pipeline, window.limit or 0)
        pilot = pipeline.model_copy(update={"steps": steps, "input": window, "output": output, "run": run})
        cache = CallCache(cache_path) if cache_path is not None else None
        gateway = MeteredGateway(registry, cache, backends=backends, meter=meter)
        # batch=None: a pilot measures live calls, even of models set to `batch: true` (it must not submit a batch)
        executor = LocalExecutor(
            pilot, registry=registry, gateway=gateway, overwrite=True, progress=progress, batch=None
        )
        started = asyncio.get_running_loop().time()
        try:
            await executor.run()
        except RunStopped as exc:
            stopped = exc.reason
        finally:
            if cache is not None:
                cache.close()
        seconds = asyncio.get_running_loop().time() - started
    ids = [source_id for source_id, _ in picked]
    return PilotResult(meter, len(ids), seconds, ids, stopped, spread, dict(meter.lengths))


def _first_records(pipeline: Pipeline, count: int) -> list[tuple[str, Record]]:
    cfg = pipeline.input
    path = pipeline.resolve(cfg.path)
    assert path is not None
    assign = IdAssigner(cfg.id_field)
    out = []
    for item in iter_records(path, start=cfg.start, limit=count, encoding=cfg.encoding, sheet=cfg.sheet):
        if item.record is not None and item.error is None:
            out.append((assign(item.record), item.record))
    return out


# ------------------------------------------------------------------------------------------ the plan


async def make_plan(
    pipeline: Pipeline,
    registry: ModelRegistry,
    assume: Assumptions | None = None,
    *,
    pilot: int = 0,
    pilot_dir: Path | None = None,
    progress: bool = False,
    backends: dict[str, Backend] | None = None,
) -> Plan:
    """The plan of ``pipeline``'s run over its input window; with ``pilot``, measured on that many records.

    Without a pilot no model is called or loaded (a GGUF's vocabulary is read for its tokenizer). ``backends``
    (ready backends by model name) serve the pilot's calls instead of backends made from the configs.
    """
    assume = assume or Assumptions(known_assumptions())
    measured: PilotResult | None = None
    if pilot > 0:
        folder = pilot_dir or Path(tempfile.mkdtemp(prefix="joyforge-pilot-"))
        try:
            measured = await run_pilot(pipeline, registry, pilot, folder, progress=progress, backends=backends)
        finally:
            if pilot_dir is None:
                shutil.rmtree(folder, ignore_errors=True)
    analysis = _Analysis(pipeline, registry)
    await analysis.run(frozenset(measured.ids) if measured else frozenset())
    plan = Plan(pipeline=pipeline.name, records=analysis.total_records + (measured.records if measured else 0))
    plan.notes.extend(analysis.notes)
    if analysis.bad_lines:
        plan.notes.append(f"{analysis.bad_lines} input line(s) cannot be read: they cost no call")
    lengths = measured.lengths if measured is not None else None
    central = _Evaluation(analysis, assume, analysis.records, analysis.total_records, lengths)
    lines = _analytic_lines(analysis, central, assume, lengths)
    if measured is not None:
        lines = await _with_pilot(analysis, lines, measured, assume, pipeline, registry)
        plan.pilot, plan.pilot_seconds = measured.records, measured.seconds
        plan.notes.append(_pilot_note(measured, analysis.total_records))
        if measured.stopped:
            plan.notes.append(f"the pilot stopped early: {measured.stopped}")
        if not pipeline.run.cache:
            plan.notes.append("run.cache is null: the run will pay again for the pilot's calls")
    plan.lines = [line for line in lines if line.calls or line.cached_calls or line.calls_range[1]]
    plan.models = _model_infos(analysis, pipeline, measured)
    _price_and_time(plan, pipeline, assume)
    plan.assumptions = _stated(assume, measured is not None)
    for name in central.unplanned:
        plan.notes.append(
            f"step '{name}': no planner for its kind; its calls are not counted"
            + ("" if measured else " (--pilot measures them)")
        )
    for info in analysis.steps:
        for (role, model), stats in info.roles.items():
            if stats.over and info.index == 0:
                window = context_window(analysis.registry.get(model))
                plan.notes.append(
                    f"step '{info.step.name}': {stats.over} of {stats.requests} {role} prompt(s) for model '{model}' "
                    f"do not fit its context window ({window} tokens): those calls will fail (raise n_ctx)"
                )
        if info.unrendered:
            plan.notes.append(f"step '{info.step.name}': {info.unrendered}; its prompt tokens are a lower bound")
    plan.notes.extend(_token_notes(plan))
    return plan


def _analytic_lines(
    analysis: _Analysis,
    central: _Evaluation,
    assume: Assumptions,
    lengths: dict[tuple[str, str], list[int]] | None = None,
) -> list[Line]:
    """Lines from the central evaluation, with each used assumption swung to its low and high end for ranges."""
    lines: dict[tuple[int, str], Line] = {}
    for (index, model), numbers in central.lines.items():
        info = analysis.steps[index]
        lines[(index, model)] = Line(
            step=info.step.name,
            kind=info.step.kind,
            model=model,
            calls=numbers.calls,
            re_asks=numbers.re_asks,
            cached_calls=numbers.cached,
            prompt_tokens=numbers.prompt_tokens,
            completion_tokens=numbers.completion_tokens,
            exact=numbers.exact,
        )
    low: dict[tuple[int, str], list[float]] = {k: [0.0, 0.0] for k in lines}
    high: dict[tuple[int, str], list[float]] = {k: [0.0, 0.0] for k in lines}
    for name in sorted(assume.read - _TIME_ASSUMPTIONS):
        spec = assume.known[name]
        for value in (spec.low, spec.high):
            at = assume.evaluated_at({name: value})
            swung = _Evaluation(analysis, at, analysis.records, analysis.total_records, lengths)
            for key, line in lines.items():
                other = swung.lines.get(key, _Numbers())
                for i, delta in enumerate(
                    (other.calls - line.calls, other.tokens - (line.prompt_tokens + line.completion_tokens))
                ):
                    low[key][i] = min(low[key][i], delta)
                    high[key][i] = max(high[key][i], delta)
    for key, line in lines.items():
        tokens = line.prompt_tokens + line.completion_tokens
        line.calls_range = (max(0.0, line.calls + low[key][0]), line.calls + high[key][0])
        line.tokens_range = (max(0.0, tokens + low[key][1]), tokens + high[key][1])
    return [lines[k] for k in sorted(lines)]


async def _with_pilot(
    analysis: _Analysis,
    rest: list[Line],
    measured: PilotResult,
    assume: Assumptions,
    pipeline: Pipeline,
    registry: ModelRegistry,
) -> list[Line]:
    """The pilot's own requests as measured (all in the cache now) plus the rest extrapolated from them.

    Per step and model, the rest's calls are its analytic plan times measured / planned on the pilot's records
    (a ratio estimator: gate rates, approvals, re-asks and failures are the measured ones, while the rest's own
    differences, longer prompts or bigger topics, still count); without an analytic plan, the measured calls
    per record times the rest's records. Tokens: the measured means per call, prompts scaled by the rest's
    planned prompt length over the pilot's. The range is a ~95% prediction interval for the rest's total from
    the spread of the pilot's records around the estimator (:func:`_prediction_halfwidth`).
    """
    pilot_analysis = await _analyse_window(pipeline, registry, measured.ids)
    lengths = measured.lengths
    on_pilot = _Evaluation(pilot_analysis, assume, pilot_analysis.records, pilot_analysis.total_records, lengths)
    planned_per_record = _planned_per_record(pilot_analysis, assume, lengths)
    names = {info.index: info.step.name for info in analysis.steps}
    kinds = {info.index: info.step.kind for info in analysis.steps}
    index_of = {name: index for index, name in names.items()}
    by_key = {(index_of.get(line.step, -1), line.model): line for line in rest}
    keys = set(by_key) | {(index_of.get(step, -1), model) for step, model in measured.meter.totals}
    lines = []
    remaining = analysis.total_records
    for index, model in sorted(keys):
        step = names.get(index, "(unknown)")
        tally = measured.meter.totals.get((step, model), Tally())
        analytic_rest = by_key.get((index, model))
        analytic_pilot = on_pilot.lines.get((index, model))
        line = Line(step=step, kind=kinds.get(index, "?"), model=model, measured=True, exact=False)
        # The pilot's requests: answered (or failed) once; the later run finds the answered ones in the cache.
        answered = tally.requests - tally.failed if pipeline.run.cache else 0
        line.calls = tally.requests
        line.re_asks = tally.re_asks
        line.cached_calls = answered
        line.prompt_tokens = tally.prompt_tokens
        line.completion_tokens = tally.completion_tokens
        per_record = measured.meter.per_record.get((step, model), {})
        calls_of = [float(per_record[i].requests) if i in per_record else 0.0 for i in measured.ids]
        tokens_of = [
            float(per_record[i].prompt_tokens + per_record[i].completion_tokens) if i in per_record else 0.0
            for i in measured.ids
        ]
        # The ratio estimator needs the planner to have expected calls on the pilot's records; the rest may have
        # none planned (every dialogue labelled by the pilot already): then none are extrapolated.
        ratio = analytic_pilot is not None and analytic_pilot.calls > 0
        if analytic_rest is None:
            analytic_rest = Line(step=step, kind=line.kind, model=model)
        if ratio:
            assert analytic_pilot is not None
            planned = [planned_per_record.get(i, {}).get((index, model), 0.0) for i in measured.ids]
            rest_size = analytic_rest.calls / (analytic_pilot.calls / len(measured.ids))  # in pilot records
            calls = analytic_rest.calls * tally.requests / analytic_pilot.calls
            length = (
                (analytic_rest.prompt_tokens / analytic_rest.calls)
                / (analytic_pilot.prompt_tokens / analytic_pilot.calls)
                if analytic_rest.calls and analytic_pilot.prompt_tokens
                else 1.0
            )
            cached_share = analytic_rest.cached_calls / analytic_rest.calls if analytic_rest.calls else 0.0
        else:
            planned = [1.0] * len(measured.ids)  # every record alike: the plain mean per record
            rest_size = float(remaining)
            calls = tally.requests / max(1, len(measured.ids)) * remaining
            length, cached_share = 1.0, 0.0
        per_prompt = tally.prompt_tokens / tally.requests if tally.requests else 0.0
        per_completion = tally.completion_tokens / tally.requests if tally.requests else 0.0
        line.calls += calls
        measured_share = tally.re_asks / tally.requests if tally.requests else 0.0
        planned_first = analytic_pilot.calls - analytic_pilot.re_asks if analytic_pilot is not None else 0.0
        if ratio and planned_first > 0:
            # First attempts scale as first attempts did on the pilot; what is left of the calls is re-asks (of the
            # rest's cut or invalid replies, which the pilot's records may not have had).
            first = (analytic_rest.calls - analytic_rest.re_asks) * (tally.requests - tally.re_asks) / planned_first
            line.re_asks += max(0.0, calls - first)
            # Re-asks beyond the pilot's own rate were predicted (cut replies of long prompts), not measured: the
            # range reaches down to the measured rate.
            predicted = max(0.0, calls - first * (1.0 + measured_share / max(1e-9, 1.0 - measured_share)))
        else:
            line.re_asks += calls * measured_share
            predicted = 0.0
        line.cached_calls += calls * cached_share
        line.prompt_tokens += calls * per_prompt * length
        line.completion_tokens += calls * per_completion
        rest_tokens = calls * (per_prompt * length + per_completion)
        calls_half = _prediction_halfwidth(calls_of, planned, rest_size)
        tokens_half = _prediction_halfwidth(tokens_of, planned, rest_size)
        calls_half = calls if calls_half is None else calls_half  # one record: no spread to go by
        tokens_half = rest_tokens if tokens_half is None else tokens_half * length
        unsure = rest_tokens * predicted / calls if calls else 0.0
        low = max(0.0, calls - max(calls_half, predicted))
        line.calls_range = (tally.requests + low, tally.requests + calls + calls_half)
        pilot_tokens = tally.prompt_tokens + tally.completion_tokens
        line.tokens_range = (
            pilot_tokens + max(0.0, rest_tokens - max(tokens_half, unsure)),
            pilot_tokens + rest_tokens + tokens_half,
        )
        if not tally.requests and ratio:
            assert analytic_pilot is not None
            # None of the calls planned for the pilot's records happened (no record gated): the rate may still be
            # up to about 3 in as many as were planned (the rule of three, ~95%), not zero for sure.
            share = min(1.0, 3.0 / analytic_pilot.calls)
            line.calls_range = (0.0, analytic_rest.calls * share)
            planned_tokens = analytic_rest.prompt_tokens + analytic_rest.completion_tokens
            line.tokens_range = (0.0, planned_tokens * share)
        lines.append(line)
    return lines


def _prediction_halfwidth(measured: list[float], planned: list[float], rest: float) -> float | None:
    """Half-width of a ~95% prediction interval for the total of ``rest`` more records, estimated as
    ``rest`` times the pilot's ratio of measured to planned.

    ``rest`` counts records of the pilot's mean planned size. The pilot's records scatter around the ratio by
    residuals of standard deviation ``s``; the rest's total then misses by its own scatter (``s^2`` per record)
    plus the ratio's error (``rest^2 s^2 / n``): ``t s sqrt(rest + rest^2 / n)``, with Student's t for ``n - 1``
    degrees of freedom (a pilot is small: 2.78 for 5 records, not 1.96). ``None`` with fewer than two records
    (no spread to go by).
    """
    n = len(measured)
    total_planned = sum(planned)
    if n < 2 or total_planned <= 0:
        return None
    ratio = sum(measured) / total_planned
    s = statistics.stdev([y - ratio * x for y, x in zip(measured, planned)])
    return _t95(n - 1) * s * math.sqrt(rest + rest * rest / n)


_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
_T95_BEYOND = ((12, 2.179), (15, 2.131), (20, 2.086), (30, 2.042), (60, 2.0), (120, 1.98))


def _t95(df: int) -> float:
    """Student's t two-sided 95% quantile for ``df`` degrees of freedom (table values; rounded down the table
    beyond 10, so the interval errs wide)."""
    if df in _T95:
        return _T95[df]
    quantile = 2.228
    for degrees, value in _T95_BEYOND:
        if df >= degrees:
            quantile = value
    return quantile if df < 1000 else 1.96


def _planned_per_record(
    analysis: _Analysis, assume: Assumptions, lengths: dict[tuple[str, str], list[int]]
) -> dict[str, dict[tuple[int, str], float]]:
    """The analytic plan of each of the pilot's records alone: calls per (step index, model)."""
    out: dict[str, dict[tuple[int, str], float]] = {}
    for item in analysis.records:
        evaluation = _Evaluation(analysis, assume.evaluated_at(assume.overrides), [item], 1, lengths)
        out[source_id_of(item.record)] = {key: numbers.calls for key, numbers in evaluation.lines.items()}
    return out


async def _analyse_window(pipeline: Pipeline, registry: ModelRegistry, ids: list[str]) -> _Analysis:
    """The analysis of the pilot's records alone (to compare what was planned for them with what they did)."""
    analysis = _Analysis(pipeline, registry)
    await analysis.run(frozenset(ids), only_pilot=True)
    return analysis


def _pilot_note(measured: PilotResult, rest: int) -> str:
    how = (
        "one drawn from each of as many equal parts of the window (seeded by run.seed)"
        if measured.spread
        else "the window's first records (the others could not be copied for it)"
    )
    return (
        f"pilot: {measured.records} record(s), {how}, counted as measured; the other {rest:,} extrapolated; "
        "ranges: ~95% prediction intervals from the spread between the pilot's records"
    )


def _model_infos(analysis: _Analysis, pipeline: Pipeline, measured: PilotResult | None) -> dict[str, ModelInfo]:
    infos = {}
    for name, counter in analysis.counters.items():
        config = analysis.registry.get(name)
        latency = None
        if measured is not None:
            tallies = [t for (_, model), t in measured.meter.totals.items() if model == name]
            paid = sum(t.paid for t in tallies)
            latency = sum(t.seconds for t in tallies) / paid if paid else None
        infos[name] = ModelInfo(
            name,
            counter.how,
            price_of(config),
            min(config.max_concurrency, pipeline.run.concurrency),
            config.requests_per_minute,
            config.tokens_per_minute,
            latency,
        )
    return infos


def _price_and_time(plan: Plan, pipeline: Pipeline, assume: Assumptions) -> None:
    """Cost of the paid share of each line, and time at each model's concurrency and rate limits."""
    per_model: dict[str, float] = defaultdict(float)
    for line in plan.lines:
        info = plan.models.get(line.model)
        share = line.paid_share
        paid_prompt, paid_completion = line.prompt_tokens * share, line.completion_tokens * share
        price = info.price if info else None
        line.cost = price.cost(paid_prompt, paid_completion) if price is not None else None
        line.batch_cost = price.cost(paid_prompt, paid_completion, batch=True) if price is not None else None
        if info is None:
            continue
        paid = line.paid_calls
        latency = info.latency
        if latency is None:
            per_call = paid_completion / paid if paid else 0.0
            latency = assume[SECONDS_PER_CALL.name] + per_call / assume[TOKENS_PER_SECOND.name]
        seconds = paid * latency / max(1, info.concurrency)
        if info.requests_per_minute:
            seconds = max(seconds, paid / info.requests_per_minute * 60)
        if info.tokens_per_minute:
            seconds = max(seconds, (paid_prompt + paid_completion) / info.tokens_per_minute * 60)
        line.seconds = seconds
        per_model[line.model] += seconds
    plan.seconds_range = (max(per_model.values(), default=0.0), sum(per_model.values()))


def _stated(assume: Assumptions, piloted: bool) -> list[dict[str, Any]]:
    out = []
    for name in sorted(assume.read):
        spec = assume.known[name]
        source = assume.source(name)
        if piloted and name not in _TIME_ASSUMPTIONS:
            source += ", refined by the pilot's measurements"
        out.append(
            {
                "name": name,
                "value": assume[name],
                "source": source,
                "range": [spec.low, spec.high],
                "description": spec.description,
            }
        )
    return out


def _token_notes(plan: Plan) -> list[str]:
    notes = []
    for name, info in plan.models.items():
        notes.append(f"model '{name}': prompt tokens by {info.tokens}")
        if info.price is None:
            notes.append(
                f"model '{name}': no price known (not in the price table); add pricing: to its models.yaml entry"
            )
    version = table_version()
    notes.append(
        f"prices: pricing: in models.yaml, else genai-prices {version}"
        if version
        else "prices: pricing: in models.yaml only (the genai-prices table is not installed)"
    )
    if plan.pilot is None:
        notes.append(
            "completion tokens: max_tokens x completion.fill (an upper bound by default); --pilot N measures them"
        )
    return notes


def plan_sync(pipeline: Pipeline, registry: ModelRegistry, assume: Assumptions | None = None, **kwargs: Any) -> Plan:
    return asyncio.run(make_plan(pipeline, registry, assume, **kwargs))


def registry_for(pipeline: Pipeline) -> ModelRegistry:
    """The models a run of ``pipeline`` sees: the built-in ones under its ``models:`` file."""
    registry = ModelRegistry.load()
    extra = pipeline.resolve(pipeline.models)
    if extra is not None:
        registry = registry.merged(ModelRegistry.load(extra))
    return registry
