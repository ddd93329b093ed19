"""What ``seedless`` costs before it runs (``joyforge plan``).

A topic asking for ``n`` records costs ``ceil(n / per_call)`` calls when nothing comes back blank or a
near-duplicate, and tops up (within ``max_calls``) for what does: ``seedless.rejected_rate`` is that share.
"""

from __future__ import annotations

import math
from typing import Any

from ...engine.fanout import Assumption, Assumptions, Calls, FanOut, MethodPlan, Request
from ...engine.step import Record, StepContext, source_id_of
from .config import SeedlessConfig
from .step import Seedless

REJECTED = Assumption(
    "seedless.rejected_rate",
    0.0,
    "share of generated items dropped as blank or near-duplicates (topped up)",
    0.0,
    0.5,
    0.0,
    0.95,
)


def _n(config: SeedlessConfig, record: Record | None) -> int:
    """Records the topic asks for: its own ``n`` on a known record, else ``n_per_topic``."""
    value: Any = record.get("n", config.n_per_topic) if record is not None else config.n_per_topic
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return 0  # the step fails such a topic before any call
    return value


def fan_out(config: SeedlessConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    n = _n(config, record)
    rejected = assume[REJECTED.name]
    budget = config.max_calls or 2 * math.ceil(n / config.per_call)
    wanted = math.ceil(n / (config.per_call * (1.0 - rejected))) if n else 0
    calls_needed = min(float(budget), float(wanted))
    kept = min(float(n), calls_needed * config.per_call * (1.0 - rejected))
    fields = [config.fields] if isinstance(config.fields, str) else list(config.fields)
    # Top-up calls depend on what comes back (blank items, near-duplicates): the count is never exact.
    calls = [Calls("generate", config.model, calls_needed, exact=False, json=True, params=config.params)]
    return FanOut(calls, kept, exact_outputs=False, adds=dict.fromkeys(fields, "generate"))


def requests(step: Seedless, ctx: StepContext, record: Record) -> list[Request]:
    """A topic's first wave of calls, exactly as the step draws them (each call's controls from the topic's
    seeded generator, in call order); top-up calls depend on what came back and are not rendered."""
    try:
        spec = step._topic(record)
    except Exception:  # a topic the step would fail costs no call
        return []
    n = spec["n"]
    if n == 0:
        return []
    rng = ctx.rng(str(record.get("id") or source_id_of(record)), step.name)
    budget = step.max_calls or 2 * math.ceil(n / step.per_call)
    wave = min(math.ceil(n / step.per_call), budget)
    plans = [step._plan(spec, rng, min(step.per_call, n - i * step.per_call), []) for i in range(wave)]
    view = {k: v for k, v in record.items() if not k.startswith("_")}
    view["topic"] = spec["topic"]
    out = []
    for sample, plan in enumerate(plans):
        options = {**step.options, **plan, "fields": step.fields, "max_chars": step.max_chars}
        messages = step.template(ctx).render(view, options)
        schema = step.schema(plan["count"])
        out.append(Request("generate", step.model, messages, params=step.params, schema=schema, sample=sample))
    return out


SEEDLESS = MethodPlan(fan_out, requests, (REJECTED,))  # type: ignore[arg-type]
