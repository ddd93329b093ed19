"""What ``joint`` costs before it runs (``joyforge plan``): one draft per drafter, then the fuser.

Exact: the drafters' calls (a model listed twice drafts twice, with distinct samples), and one fuse or pick
call per record, or one pick per draft with ``pick_order: rotate``. The fuser's prompt shows the drafts, so
its length includes theirs (the plan adds their expected length).
"""

from __future__ import annotations

from ...engine.fanout import Assumptions, Calls, FanOut, MethodPlan, Request
from ...engine.step import Record, StepContext
from .config import JointConfig
from .step import PICK_SCHEMA, Joint


def _draft_samples(drafters: list[str]) -> list[tuple[str, int]]:
    """Each drafter with its sample index, as the step numbers them (the k-th listing asks sample k)."""
    seen: dict[str, int] = {}
    out = []
    for model in drafters:
        out.append((model, seen.get(model, 0)))
        seen[model] = seen.get(model, 0) + 1
    return out


def fan_out(config: JointConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    drafts: dict[str, int] = {}
    for model in config.drafters:
        drafts[model] = drafts.get(model, 0) + 1
    calls = [Calls("draft", model, count, params=config.draft_params) for model, count in drafts.items()]
    final = "pick" if config.mode == "pick" else "fuse"
    finals = len(config.drafters) if config.mode == "pick" and config.pick_order == "rotate" else 1
    calls.append(Calls(final, config.fuser, finals, json=config.mode == "pick", params=config.fuse_params))
    return FanOut(calls, adds={config.output_field: final})


def requests(step: Joint, ctx: StepContext, record: Record) -> list[Request]:
    draft_template = step.prompt(ctx, step.draft_prompt)
    schema = draft_template.schema
    messages = draft_template.render(record, step.options)
    out = [
        Request("draft", model, messages, params=step.draft_params, schema=schema, sample=sample)
        for model, sample in _draft_samples(step.drafters)
    ]
    final_template = step.prompt(ctx, step.final_prompt)
    n = len(step.drafters)
    final_messages = final_template.render(record, {**step.options, "drafts": [""] * n})
    role = "pick" if step.mode == "pick" else "fuse"
    final_schema = final_template.schema or (PICK_SCHEMA if step.mode == "pick" else schema)
    out.append(
        Request(role, step.fuser, final_messages, params=step.fuse_params, schema=final_schema, inserts={"draft": n})
    )
    return out


JOINT = MethodPlan(fan_out, requests)  # type: ignore[arg-type]
