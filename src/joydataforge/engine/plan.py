"""``joyforge plan``: what a pipeline will cost before it is paid for, per step and per model.

Two ways to know:

- **From the settings alone** (no model called or loaded): every step's fan-out (its method's ``plan.py``)
  over the input records, the prompts rendered by the steps' own templates on those records and counted with
  each model's tokenizer (:mod:`joydataforge.models.tokens`), completion tokens from ``max_tokens``; the
  requests already in the call cache (looked up with the gateway's own key) cost nothing. Whatever depends on
  replies is an assumption, named in the plan with its value; each one is also evaluated at the ends of its
  plausible range, which gives the plan's ranges.
- **With a pilot** (``pilot=N``): the first N records of the run's window run for real, through the normal
  executor into a scratch folder and with the normal call cache (so the later run gets those answers free),
  every request counted by step and model (:mod:`.meter`). The rest of the window is extrapolated from the
  measured rates and token means, scaled by how the analytic plan of the remaining records compares with
  that of the pilot's; the spread between pilot records gives the ranges.

Prices: :func:`joydataforge.models.prices.price_of` (``pricing:`` in models.yaml, else the genai-prices
table), at the batch price too where the provider has one. Time: at each model's concurrency and rate limits.
"""

from __future__ import annotations

import asyncio
import inspect
import math
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
from .local import LocalExecutor, _field_error
from .meter import CallMeter, MeteredGateway, Tally, meter_steps
from .registry import build_step
from .step import Record, Step, StepContext, with_source_id

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

    async def run(self, skip: int = 0) -> None:
        """Read the window (its first ``skip`` records are a pilot's, counted apart), build and check the steps,
        render and count every first-stage request, look the known ones up in the cache."""
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
            inputs = self._read(skip)
            for info in self.steps:
                if info.index == 0:
                    await self._first_step(info, inputs, ctx, gateway, cache)
                else:
                    await self._later_step(info, inputs[:LATER_STEP_RECORDS], ctx)
        finally:
            if cache is not None:
                cache.close()

    def _read(self, skip: int) -> list[Record]:
        cfg = self.pipeline.input
        path = self.pipeline.resolve(cfg.path)
        assert path is not None
        if not path.exists():
            raise ConfigError(f"{self.pipeline.name}: input.path: no such file or folder: {path}")
        assign = IdAssigner(cfg.id_field)
        records: list[Record] = []
        for seen, item in enumerate(
            iter_records(path, start=cfg.start, limit=cfg.limit, encoding=cfg.encoding, sheet=cfg.sheet)
        ):
            if item.error is not None or item.record is None:
                self.bad_lines += int(seen >= skip)
                continue
            source_id = assign(item.record)  # every record, so repeated ids get the suffixes the run gives
            if seen < skip:  # a pilot's record (the pilot's window counts lines, as --limit does)
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
            if _field_error(info.step, record) is not None:
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
    params = client._params(dict(request.params))
    if request.n > 1:
        params = {**params, "n": request.n}
    schema = dict(request.schema) if request.schema is not None else None
    return client._key(request.verb, request.payload, params, schema, request.sample, 0)


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

    def __init__(self, analysis: _Analysis, assume: Assumptions, records: list[_Record], total: int):
        self.analysis = analysis
        self.assume = assume
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
        """Re-asks of JSON replies, then the prompt and completion tokens of every attempt."""
        stats = info.roles.get((role, model))
        if (stats is not None and stats.json) or spec.json:
            p = self.assume[JSON_INVALID.name]
            retries = self.analysis.registry.get(model).json_retries
            numbers.re_asks = numbers.calls * (sum(p**k for k in range(retries + 1)) - 1)
        per_call = stats.prompt_per_call() if stats else 0.0
        if stats:
            per_call += sum(completions.get(r, 0.0) * k for r, k in stats.inserts_per_call().items())
        per_call += sum(field_tokens.get(f, 0.0) for f in info.reads)
        attempts = numbers.calls + numbers.re_asks
        numbers.cached *= attempts / numbers.calls if numbers.calls else 0.0
        numbers.prompt_tokens = attempts * per_call
        numbers.completion_tokens = attempts * completions[role] * (stats.fitting() if stats else 1.0)
        numbers.calls = attempts


# ------------------------------------------------------------------------------------------ the pilot


@dataclass
class PilotResult:
    meter: CallMeter
    records: int  # records the pilot ran
    seconds: float
    ids: list[str]
    stopped: str | None = None
    lines: int = 0  # input lines of its window (bad ones included), where the rest of the window starts


async def run_pilot(
    pipeline: Pipeline,
    registry: ModelRegistry,
    records: int,
    folder: Path,
    *,
    progress: bool = False,
    backends: dict[str, Backend] | None = None,
) -> PilotResult:
    """Run the first ``records`` records of the window for real, into ``folder``, with the normal call cache:
    every request counted by step, model and record (so the later run gets these answers from the cache).
    ``backends`` supplies ready backends by model name, as :class:`~joydataforge.models.gateway.Gateway` takes."""
    steps = meter_steps([build_step(config) for config in pipeline.step_configs])
    window = pipeline.input.model_copy(update={"limit": min(records, pipeline.input.limit or records)})
    output = pipeline.output.model_copy(update={"dir": str(folder), "formats": ["jsonl"]})
    run = pipeline.run.model_copy(update={"retry_failed": False, "max_failures": None})
    pilot = pipeline.model_copy(update={"steps": steps, "input": window, "output": output, "run": run})
    cache_path = pipeline.resolve(pipeline.run.cache) if pipeline.run.cache else None
    cache = CallCache(cache_path) if cache_path is not None else None
    meter = CallMeter()
    gateway = MeteredGateway(registry, cache, backends=backends, meter=meter)
    # batch=None: a pilot measures live calls, even of models set to `batch: true` (it must not submit a batch)
    executor = LocalExecutor(pilot, registry=registry, gateway=gateway, overwrite=True, progress=progress, batch=None)
    stopped = None
    started = asyncio.get_running_loop().time()
    try:
        await executor.run()
    except RunStopped as exc:
        stopped = exc.reason
    finally:
        if cache is not None:
            cache.close()
    seconds = asyncio.get_running_loop().time() - started
    ids = _pilot_ids(pipeline, window.limit or 0)
    return PilotResult(meter, len(ids), seconds, ids, stopped, window.limit or 0)


def _pilot_ids(pipeline: Pipeline, count: int) -> list[str]:
    cfg = pipeline.input
    path = pipeline.resolve(cfg.path)
    assert path is not None
    assign = IdAssigner(cfg.id_field)
    ids = []
    for item in iter_records(path, start=cfg.start, limit=count, encoding=cfg.encoding, sheet=cfg.sheet):
        if item.record is not None:
            ids.append(assign(item.record))
    return ids


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
    await analysis.run(skip=measured.lines if measured else 0)
    plan = Plan(pipeline=pipeline.name, records=analysis.total_records + (measured.records if measured else 0))
    plan.notes.extend(analysis.notes)
    if analysis.bad_lines:
        plan.notes.append(f"{analysis.bad_lines} input line(s) cannot be read: they cost no call")
    central = _Evaluation(analysis, assume, analysis.records, analysis.total_records)
    lines = _analytic_lines(analysis, central, assume)
    if measured is not None:
        lines = await _with_pilot(analysis, lines, measured, assume, pipeline, registry)
        plan.pilot, plan.pilot_seconds = measured.records, measured.seconds
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


def _analytic_lines(analysis: _Analysis, central: _Evaluation, assume: Assumptions) -> list[Line]:
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
            swung = _Evaluation(analysis, assume.evaluated_at({name: value}), analysis.records, analysis.total_records)
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
    """The pilot's own requests (all in the cache now) plus the rest extrapolated from what it measured."""
    pilot_analysis = await _analyse_window(pipeline, registry, measured.lines)
    on_pilot = _Evaluation(pilot_analysis, assume, pilot_analysis.records, pilot_analysis.total_records)
    names = {info.index: info.step.name for info in analysis.steps}
    kinds = {info.index: info.step.kind for info in analysis.steps}
    index_of = {name: index for index, name in names.items()}
    by_key = {(index_of.get(line.step, -1), line.model): line for line in rest}
    keys = set(by_key) | {(index_of.get(step, -1), model) for step, model in measured.meter.totals}
    lines = []
    pilot_n = max(1, measured.records)
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
        rate, spread = _rates(measured, step, model, pilot_n)
        if analytic_rest is not None and analytic_pilot is not None and analytic_pilot.calls > 0:
            calls = analytic_rest.calls * tally.requests / analytic_pilot.calls
            length = (
                (analytic_rest.prompt_tokens / analytic_rest.calls)
                / (analytic_pilot.prompt_tokens / analytic_pilot.calls)
                if analytic_rest.calls and analytic_pilot.prompt_tokens
                else 1.0
            )
            cached_share = analytic_rest.cached_calls / analytic_rest.calls if analytic_rest.calls else 0.0
        else:
            calls = rate * remaining
            length, cached_share = 1.0, 0.0
        per_prompt = tally.prompt_tokens / tally.requests if tally.requests else 0.0
        per_completion = tally.completion_tokens / tally.requests if tally.requests else 0.0
        line.calls += calls
        line.re_asks += calls * (tally.re_asks / tally.requests if tally.requests else 0.0)
        line.cached_calls += calls * cached_share
        line.prompt_tokens += calls * per_prompt * length
        line.completion_tokens += calls * per_completion
        rest_tokens = calls * (per_prompt * length + per_completion)
        low, high = (1 - spread, 1 + spread) if spread is not None else (0.0, 2.0)
        line.calls_range = (tally.requests + calls * max(0.0, low), tally.requests + calls * high)
        pilot_tokens = tally.prompt_tokens + tally.completion_tokens
        line.tokens_range = (pilot_tokens + rest_tokens * max(0.0, low), pilot_tokens + rest_tokens * high)
        if not tally.requests and analytic_rest is not None and analytic_pilot is not None and analytic_pilot.calls:
            # None of the calls planned for the pilot's records happened (no record gated): the rate may still be
            # up to about 3 in as many as were planned (the rule of three, ~95%), not zero for sure.
            share = min(1.0, 3.0 / analytic_pilot.calls)
            line.calls_range = (0.0, analytic_rest.calls * share)
            planned_tokens = analytic_rest.prompt_tokens + analytic_rest.completion_tokens
            line.tokens_range = (0.0, planned_tokens * share)
        lines.append(line)
    return lines


async def _analyse_window(pipeline: Pipeline, registry: ModelRegistry, records: int) -> _Analysis:
    """The analysis of the pilot's records alone (to compare what was planned for them with what they did)."""
    window = pipeline.input.model_copy(update={"limit": records})
    analysis = _Analysis(pipeline.model_copy(update={"input": window}), registry)
    await analysis.run()
    return analysis


def _rates(measured: PilotResult, step: str, model: str, records: int) -> tuple[float, float | None]:
    """Requests per pilot record, and the relative half-width of a ~95% interval of the mean (None: one record)."""
    per_record = measured.meter.per_record.get((step, model), {})
    values = [per_record[i].requests if i in per_record else 0 for i in measured.ids] or [0]
    mean = sum(values) / len(values)
    if len(values) < 2 or mean == 0:
        return mean, None if len(values) < 2 else 0.0
    spread = 2 * statistics.stdev(values) / math.sqrt(len(values)) / mean
    return mean, spread


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
