"""The contract every backend meets: four verbs (chat, complete, embed, reward), plain data in and out.

Backends know how to reach one kind of model and nothing else: caching, rate limits, retries and
accounting live in the gateway, so a new backend is one small class.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass, field
from typing import Any

from ...errors import ModelError
from ..chat_template import ChatTemplateSource

Messages = list[dict[str, str]]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    """Of ``completion_tokens``, those spent on the reasoning trace (the server's count, else the tokenizer's)."""
    reasoning_estimated: bool = False
    """``reasoning_tokens`` is an estimate (no server count, no tokenizer): about four characters a token."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Completion:
    """One reply of a model.

    Backends fill in the reply: ``text``, ``usage``, ``finish_reason`` and ``model``, the id the backend
    answered with (the ``model`` of a server's reply, the GGUF's label, the weights vLLM loaded). The
    gateway fills in the rest, for provenance: ``cached`` (it came from the call cache), ``params`` (the
    sampling parameters as sent: the model's merged with the step's, and the seed), ``sample`` and
    ``attempt`` (which sample of the prompt, which re-ask of a JSON reply) and ``parsed`` (how a JSON
    reply was read, when not strictly: ``lenient``, ``cut``, ``repaired``).
    """

    text: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    model: str = ""
    cached: bool = False
    latency: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    sample: int = 0
    attempt: int = 0
    parsed: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    """Native tool calls of a ``chat_tools`` reply, in OpenAI's shape: ``{"id", "type": "function",
    "function": {"name", "arguments": "<JSON text>"}}``; None when the model answered in text."""
    reasoning: str | None = None
    """A thinking model's trace, apart from ``text`` (the answer): the server's ``reasoning_content`` or
    ``reasoning`` field, or the ``<think>`` blocks taken out of the text (:mod:`..reasoning`); None if none."""

    def to_cache(self) -> dict[str, Any]:
        data = {
            "text": self.text,
            "pt": self.usage.prompt_tokens,
            "ct": self.usage.completion_tokens,
            "fr": self.finish_reason,
            "m": self.model,
        }
        if self.tool_calls:
            data["tc"] = self.tool_calls
        if self.reasoning is not None:
            data["r"] = self.reasoning
            data["rt"] = self.usage.reasoning_tokens
            if self.usage.reasoning_estimated:
                data["re"] = True
        return data

    @classmethod
    def from_cache(cls, data: dict[str, Any]) -> "Completion":
        return cls(
            text=data["text"],
            usage=Usage(data.get("pt", 0), data.get("ct", 0), data.get("rt", 0), bool(data.get("re", False))),
            finish_reason=data.get("fr"),
            model=data.get("m", ""),
            cached=True,
            tool_calls=data.get("tc"),
            reasoning=data.get("r"),
        )


class TransientError(ModelError):
    """Worth retrying: timeouts, dropped connections, 429 and 5xx. ``retry_after`` comes from the server.

    ``endpoint_fault`` is set when the failure says nothing answered like a model API at all (connection
    refused, an HTML login page, JSON without ``choices``): a few words saying what came back, which the
    gateway's circuit breaker counts, so a dead endpoint stops a run instead of failing every record slowly.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        model: str | None = None,
        raw: str | None = None,
        endpoint_fault: str | None = None,
    ):
        super().__init__(message, model=model, raw=raw, retryable=True)
        self.retry_after = retry_after
        self.status = status
        self.endpoint_fault = endpoint_fault


class FatalError(ModelError):
    """Cannot succeed on retry (a bad parameter, a refused key, a path or model the server does not have):
    the call fails at once instead of paying for retries that must fail the same way.

    ``endpoint_fault`` is set when every call to this model would get the same answer (401, 403, 404, 405,
    "not supported"), so the gateway's circuit breaker counts it like a connection error.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        model: str | None = None,
        raw: str | None = None,
        endpoint_fault: str | None = None,
    ):
        super().__init__(message, model=model, raw=raw, retryable=False)
        self.status = status
        self.endpoint_fault = endpoint_fault


class StructuredOutputRefused(ModelError):
    """The server refused the way a request asked for JSON (``response_format``); the backend has stepped down.

    Raised instead of quietly re-sending, so the gateway counts the refused request as an error, says the
    step-down once per model, and sends the request again at once (no backoff: nothing is overloaded).
    ``used`` is the mode the refused request asked with, ``now`` the mode the backend uses from now on.
    """

    def __init__(self, message: str, *, used: str, now: str, model: str | None = None, raw: str | None = None):
        super().__init__(message, model=model, raw=raw, retryable=True)
        self.used = used
        self.now = now


class Backend(abc.ABC):
    """One model endpoint. Implementations must be safe to call concurrently from one event loop."""

    supports_grammar: bool = False  # the backend enforces a JSON schema while decoding
    supports_tools: bool = False  # chat_tools: the endpoint takes OpenAI's `tools` and answers `tool_calls`
    reward_batch_size: int = 1  # conversations per reward() call: 1 for one HTTP request each, more for local batching

    @property
    def structured_output(self) -> str:
        """How this backend asks for JSON replies now, for the run's summary: ``grammar`` (enforced while
        decoding), ``json_schema`` / ``json_object`` (a server's ``response_format``) or ``none`` (the prompt
        alone). Replies are validated against the schema by the gateway whichever it is."""
        return "grammar" if self.supports_grammar else "none"

    @abc.abstractmethod
    async def chat(
        self,
        messages: Messages,
        params: dict[str, Any],
        *,
        json_schema: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> Completion: ...

    async def chat_tools(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        params: dict[str, Any],
        *,
        tool_choice: str | None = None,
        seed: int | None = None,
    ) -> Completion:
        """Chat with native tool calling (OpenAI's ``tools``): the reply's calls are in ``tool_calls``.

        Only backends with ``supports_tools`` offer it; the others are asked for JSON replies instead
        (``chat`` with a schema), which is what callers fall back to.
        """
        raise ModelError(f"{type(self).__name__} does not offer native tool calling")

    async def complete(self, prompt: str, params: dict[str, Any], *, seed: int | None = None) -> Completion:
        raise ModelError(f"{type(self).__name__} does not offer raw text completion")

    async def complete_n(
        self, prompt: str, params: dict[str, Any], n: int, *, seed: int | None = None
    ) -> list[Completion]:
        """``n`` independent samples of one prompt (seeds ``seed``, ``seed + 1``, ...).

        This fallback makes ``n`` calls at once; backends that can share the prompt's work between samples
        (a server's ``n``, vLLM's ``SamplingParams.n``, llama.cpp's reused prompt cache) override it.
        """
        seeds = [None if seed is None else seed + i for i in range(n)]
        return list(await asyncio.gather(*(self.complete(prompt, params, seed=s) for s in seeds)))

    async def embed(self, texts: list[str]) -> list[list[float]]:
        raise ModelError(f"{type(self).__name__} does not offer embeddings")

    async def embed_with_usage(self, texts: list[str]) -> tuple[list[list[float]], int | None]:
        """Embeddings and the input tokens the backend counted (``None``: it does not say; the gateway then
        estimates). A paid API bills its own count, so cost accounting should use it."""
        return await self.embed(texts), None

    async def reward(self, conversations: list[Messages], params: dict[str, Any]) -> list[float]:
        """One reward score per conversation (each ends with the assistant turn being scored)."""
        raise ModelError(f"{type(self).__name__} does not offer reward scores")

    async def chat_template(self) -> ChatTemplateSource | None:
        """The model's own chat template, where the backend can know it (raw-completion methods need it)."""
        return None

    async def close(self) -> None:
        return None
