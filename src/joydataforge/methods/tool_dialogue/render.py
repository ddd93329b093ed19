"""Trajectories as the shapes other parts read: plain text for judges, the continuation for preference pairs.

A trajectory is a list of OpenAI messages: ``system``?, ``user`` (the goal), then ``assistant`` turns (with
``tool_calls``, or the final answer) and ``tool`` results, each naming the call it answers.
"""

from __future__ import annotations

import json
from typing import Any

REASONING_KEY = "reasoning_content"
"""Where an assistant turn of a trajectory keeps its reasoning trace: the key of OpenAI-compatible servers (vLLM,
DeepSeek) and of the chat templates of thinking models (Qwen3, DeepSeek-R1), which render it as a ``<think>``
block. Models asked for the next turn never see it; judges only with ``judge_sees_reasoning``."""


def without_reasoning(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trajectory as the model is asked with it: earlier turns' traces left out, as the chat templates of
    thinking models leave them out (and some servers refuse a ``reasoning_content`` they did not send)."""
    return [{k: v for k, v in m.items() if k != REASONING_KEY} if REASONING_KEY in m else m for m in messages]


def call_name(call: dict[str, Any]) -> str:
    return str(call.get("function", {}).get("name", "?"))


def call_arguments(call: dict[str, Any]) -> Any:
    """A call's arguments as an object where they parse (they are JSON text in OpenAI's shape)."""
    arguments = call.get("function", {}).get("arguments")
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def trajectory_text(messages: list[dict[str, Any]], *, reasoning: bool = False) -> str:
    """The trajectory as a judge reads it, one block per message::

    User: What is the weather in Paris?
    Assistant calls get_weather({"city": "Paris"})
    Tool get_weather returned: {"temperature_c": 18}
    Assistant: It is 18 °C in Paris.

    ``reasoning`` (a judge that sees reasoning) puts each assistant turn's trace (``reasoning_content``) before
    it, as ``Assistant thinks: <think>...</think>``; without it the traces are never shown.
    """
    names: dict[str, str] = {}
    lines: list[str] = []
    for message in messages:
        role = message.get("role")
        content = message.get("content") or ""
        if role == "system":
            lines.append(f"System: {content}")
        elif role == "user":
            lines.append(f"User: {content}")
        elif role == "assistant":
            trace = message.get(REASONING_KEY)
            if reasoning and isinstance(trace, str) and trace.strip():
                lines.append(f"Assistant thinks: <think>\n{trace.strip()}\n</think>")
            if content:
                lines.append(f"Assistant: {content}")
            for call in message.get("tool_calls") or []:
                names[str(call.get("id"))] = call_name(call)
                shown = json.dumps(call_arguments(call), ensure_ascii=False)
                lines.append(f"Assistant calls {call_name(call)}({shown})")
        elif role == "tool":
            lines.append(f"Tool {names.get(str(message.get('tool_call_id')), '?')} returned: {content}")
    return "\n".join(lines)


def continuation(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What follows the goal: the assistant and tool messages a preference pair compares."""
    for k, message in enumerate(messages):
        if message.get("role") == "user":
            return messages[k + 1 :]
    return list(messages)
