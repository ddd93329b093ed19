"""What ``generate`` and ``label`` cost before they run: one call per record, the prompt rendered from it.

Used by ``joyforge plan`` (:mod:`joydataforge.engine.plan`): the counts are exact (one request per record);
a ``label`` reply that does not match its schema is re-asked, which the plan counts from the
``json.invalid_rate`` assumption.
"""

from __future__ import annotations

from ...engine.fanout import Assumptions, Calls, FanOut, MethodPlan, Request
from ...engine.step import Record, StepContext
from .config import GenerateConfig, LabelConfig
from .step import Generate, Label


def generate_fan_out(config: GenerateConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    calls = [Calls("answer", config.model, 1, params=config.params)]
    return FanOut(calls, adds={config.output_field: "answer"})


def generate_requests(step: Generate, ctx: StepContext, record: Record) -> list[Request]:
    messages = step.template(ctx).render(record, step.options)
    return [Request("answer", step.model, messages, params=step.params)]


def label_fan_out(config: LabelConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    calls = [Calls("label", config.model, 1, json=True, params=config.params)]
    field = config.output_field or f"{config.prefix}label"
    return FanOut(calls, adds={field: "label"})


def label_requests(step: Label, ctx: StepContext, record: Record) -> list[Request]:
    messages = step.template(ctx).render(record, step.options)
    return [Request("label", step.model, messages, params=step.params, schema=step.schema(ctx))]


GENERATE = MethodPlan(generate_fan_out, generate_requests)  # type: ignore[arg-type]
LABEL = MethodPlan(label_fan_out, label_requests)  # type: ignore[arg-type]
