"""One assistant turn, asked natively (OpenAI ``tools``) or as JSON checked against a schema built from the tools.

Both ways return the same :class:`Turn`: the text the assistant wrote and the calls it made, each
``{"id", "name", "arguments"}`` (arguments as the model wrote them: JSON text natively, an object in JSON
mode). The trajectory itself is always kept in OpenAI's shape; :func:`json_view` turns it into what a model
without native tool calling reads (its assistant turns as the JSON it wrote, tool results as a user
message rendered from the results prompt).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .render import call_arguments, call_name
from .toolbox import Toolbox

if TYPE_CHECKING:
    from ...models.backends.base import Completion
    from ...models.gateway import ModelClient
    from ...prompts.renderer import PromptTemplate


@dataclass
class Turn:
    text: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    completion: "Completion | None" = None
    mode: str = "json"


def answer_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"answer": {"type": "string", "minLength": 1}},
        "required": ["answer"],
        "additionalProperties": False,
    }


def reply_schema(toolbox: Toolbox, *, final: bool, constrain: bool, max_calls: int) -> dict[str, Any]:
    """The JSON a turn must be: ``{"tool_calls": [...]}`` or ``{"answer": ...}``; only the answer when final.

    With ``constrain`` each call is one of the tools with its own parameters schema, so a grammar-constrained
    backend can only write valid calls; otherwise a call is any tool name with any object.
    """
    if final:
        return answer_schema()
    names = [tool.name for tool in toolbox.tools]
    if constrain:
        call: dict[str, Any] = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for tool in toolbox.tools
            ]
        }
    else:
        call = {
            "type": "object",
            "properties": {"name": {"type": "string", "enum": names}, "arguments": {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
    calls = {
        "type": "object",
        "properties": {"tool_calls": {"type": "array", "items": call, "minItems": 1, "maxItems": max_calls}},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    return {"anyOf": [calls, answer_schema()]}


async def native_turn(
    client: "ModelClient",
    messages: list[dict[str, Any]],
    toolbox: Toolbox,
    *,
    final: bool,
    sample: int,
    params: dict[str, Any],
) -> Turn:
    """A turn with OpenAI's ``tools``; on the last turn ``tool_choice: none`` asks for the answer."""
    completion = await client.chat_tools(
        messages, toolbox.definitions(), tool_choice="none" if final else None, sample=sample, **params
    )
    calls = [
        {"id": call["id"], "name": call_name(call), "arguments": call["function"].get("arguments")}
        for call in completion.tool_calls or []
    ]
    return Turn(text=completion.text.strip(), calls=calls, completion=completion, mode="native")


async def json_turn(
    client: "ModelClient",
    messages: list[dict[str, Any]],
    toolbox: Toolbox,
    *,
    final: bool,
    turn: int,
    sample: int,
    params: dict[str, Any],
    constrain: bool,
    max_calls: int,
) -> Turn:
    """A turn as a JSON reply validated against :func:`reply_schema` (retried by the gateway when invalid)."""
    schema = reply_schema(toolbox, final=final, constrain=constrain, max_calls=max_calls)
    value, completion = await client.chat_json(messages, schema, sample=sample, **params)
    if "answer" in value:
        return Turn(text=str(value["answer"]).strip(), completion=completion, mode="json")
    calls = [
        {"id": f"call_{turn}_{k}", "name": call.get("name"), "arguments": call.get("arguments")}
        for k, call in enumerate(value.get("tool_calls") or [])
    ]
    return Turn(text="", calls=calls, completion=completion, mode="json")


def json_view(
    trajectory: list[dict[str, Any]],
    agent: list[dict[str, str]],
    results: "PromptTemplate",
    record: dict[str, Any],
    options: dict[str, Any],
    *,
    final: bool,
) -> list[dict[str, str]]:
    """What a model in JSON mode reads: the agent prompt (system + goal), then each assistant turn as the JSON
    it wrote and each round of tool results as one user message from the results prompt."""
    messages = list(agent)
    start = next((k + 1 for k, m in enumerate(trajectory) if m.get("role") == "user"), len(trajectory))
    pending: list[dict[str, Any]] = []
    calls: dict[str, dict[str, Any]] = {}

    def flush(last: bool = False) -> None:
        # Only the latest results may say "answer now": earlier rounds read as they were sent then.
        if pending:
            shown = {**options, "results": list(pending), "final": final and last}
            messages.append({"role": "user", "content": results.render(record, shown)[-1]["content"]})
            pending.clear()

    for message in trajectory[start:]:
        if message["role"] == "assistant":
            flush()
            if message.get("tool_calls"):
                wrote = [{"name": call_name(c), "arguments": call_arguments(c)} for c in message["tool_calls"]]
                for call in message["tool_calls"]:
                    calls[str(call.get("id"))] = call
                content = json.dumps({"tool_calls": wrote}, ensure_ascii=False)
            else:
                content = json.dumps({"answer": message.get("content") or ""}, ensure_ascii=False)
            messages.append({"role": "assistant", "content": content})
        elif message["role"] == "tool":
            call = calls.get(str(message.get("tool_call_id")), {})
            pending.append(
                {"name": call_name(call), "arguments": call_arguments(call), "content": message.get("content") or ""}
            )
    flush(last=True)
    return messages
