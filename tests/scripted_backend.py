"""A test double backend: replies come from a Python function, so step and executor tests are exact."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

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
    """``native_n``: ``complete_n`` answers all ``n`` samples in one recorded call (``"n"`` in it), as a server
    honouring ``n`` does; without it the base class's fallback makes ``n`` ``complete()`` calls."""

    def __init__(self, reply: Reply = echo_reply, delay: float = 0.0, fail_times: int = 0, native_n: bool = False):
        self.reply = reply
        self.delay = delay
        self.fail_times = fail_times
        self.native_n = native_n
        self.calls: list[dict[str, Any]] = []

    async def chat(
        self,
        messages: Messages,
        params: dict[str, Any],
        *,
        json_schema: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> Completion:
        self.calls.append({"messages": messages, "params": params, "schema": json_schema, "seed": seed})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_times > 0:
            self.fail_times -= 1
            raise TransientError("scripted transient failure", status=503)
        text = self.reply(messages, json_schema)
        return Completion(text=text, usage=Usage(len(str(messages)) // 4, len(text) // 4), model="scripted")

    def sample(self, prompt: str, seed: int | None) -> Completion:
        """One raw completion; subclasses script it."""
        return Completion(text=f"continued: {prompt[-10:]}", usage=Usage(1, 1))

    async def complete(self, prompt: str, params: dict[str, Any], *, seed: int | None = None) -> Completion:
        self.calls.append({"prompt": prompt, "params": params, "seed": seed})
        return self.sample(prompt, seed)

    async def complete_n(
        self, prompt: str, params: dict[str, Any], n: int, *, seed: int | None = None
    ) -> list[Completion]:
        if not self.native_n:
            return await super().complete_n(prompt, params, n, seed=seed)
        self.calls.append({"prompt": prompt, "params": params, "seed": seed, "n": n})
        samples = [self.sample(prompt, None if seed is None else seed + i) for i in range(n)]
        for sample in samples[1:]:  # a server counts the prompt once per request
            sample.usage = Usage(0, sample.usage.completion_tokens)
        return samples
