"""What ``rewrite`` costs before it runs (``joyforge plan``): one call per record (exact), which fans out
into the cases kept; how many are kept (at most the case cap) is ``rewrite.kept_cases``, a share of it."""

from __future__ import annotations

from ...engine.fanout import Assumption, Assumptions, Calls, FanOut, MethodPlan, Request
from ...engine.step import Record, StepContext
from .config import RewriteConfig
from .step import Rewrite

KEPT = Assumption(
    "rewrite.kept_cases", 1.0, "share of the case cap (max_cases, or types x per_type) a record ends up with", 0.2, 1.0
)


def fan_out(config: RewriteConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    calls = [Calls("rewrite", config.model, 1, json=True, params=config.params)]
    fields = [config.fields] if isinstance(config.fields, str) else list(config.fields)
    return FanOut(calls, config.case_cap() * assume[KEPT.name], False, adds=dict.fromkeys(fields, "case"))


def requests(step: Rewrite, ctx: StepContext, record: Record) -> list[Request]:
    view = {
        k: v
        for k, v in record.items()
        if not k.startswith("_") and k != "id" and (step.show_fields is None or k in step.show_fields)
    }
    messages = step.template(ctx).render(view, step._render_options())
    return [Request("rewrite", step.model, messages, params=step.params, schema=step.schema)]


REWRITE = MethodPlan(fan_out, requests, (KEPT,))  # type: ignore[arg-type]
