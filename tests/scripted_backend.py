"""A test double backend: replies come from a Python function, so step and executor tests are exact."""
from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from joydataforge.models.backends.base import Backend, Completion, Messages, TransientError, Usage

Reply = Callable[[Messages, dict[str, Any] | None], str]


def echo_reply(messages: Messages, schema: dict[str, Any] | None) -> str:
    last = messages[-1]["content"]
    if schema is not None:
        props = schema.get("properties", {})
        label = props.get("label", {}).get("enum", ["x"])[0]
        return json.dumps({"label": label, "reason": f"because {last[:20]}"}, ensure_ascii=False)
    return f"answer to: {last}"


class ScriptedBackend(Backend):
    def __init__(self, reply: Reply = echo_reply, delay: float = 0.0, fail_times: int = 0):
        self.reply = reply
        self.delay = delay
        self.fail_times = fail_times
        self.calls: list[dict[str, Any]] = []

    async def chat(self, messages: Messages, params: dict[str, Any], *,
                   json_schema: dict[str, Any] | None = None, seed: int | None = None) -> Completion:
        self.calls.append({"messages": messages, "params": params, "schema": json_schema, "seed": seed})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_times > 0:
            self.fail_times -= 1
            raise TransientError("scripted transient failure", status=503)
        text = self.reply(messages, json_schema)
        return Completion(text=text, usage=Usage(len(str(messages)) // 4, len(text) // 4), model="scripted")

    async def complete(self, prompt: str, params: dict[str, Any], *, seed: int | None = None) -> Completion:
        self.calls.append({"prompt": prompt, "params": params, "seed": seed})
        return Completion(text=f"continued: {prompt[-10:]}", usage=Usage(1, 1))
