"""The one door to every model: cache -> circuit breaker -> rate limit -> retry -> backend, with accounting.

Steps ask ``ctx.model("name")`` for a :class:`ModelClient` and call its verbs; they never see HTTP,
threads or retries. Determinism: every call carries a ``sample`` index, and the backend seed is derived
from the call's cache key, so the same pipeline over the same data asks the same questions and (where
the backend honours seeds) gets the same answers.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..errors import EndpointDown, ModelError, ValidationFailed
from ..records import canonical_json, content_hash
from .backends.base import Backend, Completion, FatalError, Messages, StructuredOutputRefused, TransientError
from .breaker import CircuitBreaker
from .cache import CallCache
from .chat_template import ChatTemplateSource
from .config import ModelConfig, ModelRegistry
from .limits import ModelLimits
from .retry import RetryPolicy
from .structured import parse_and_validate
from .usage import ModelUsage

T = TypeVar("T")

log = logging.getLogger(__name__)

# canonical_json's settings in one reusable encoder: json.dumps builds a new encoder per call otherwise.
_canonical = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str).encode


def create_backend(config: ModelConfig) -> Backend:
    """Backends are imported only when a model is used, so configs validate without their libraries."""
    if config.backend == "openai":
        from .backends.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(config)
    if config.backend == "llamacpp":
        from .backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(config)
    if config.backend == "transformers":
        from .reward import TransformersRewardBackend

        return TransformersRewardBackend(config)
    if config.backend == "vllm":
        from .backends.vllm_offline import VLLMBackend

        return VLLMBackend(config)
    raise ModelError(f"model '{config.name}': unknown backend '{config.backend}'")


class ModelClient:
    """One named model as steps see it."""

    def __init__(
        self, config: ModelConfig, backend: Backend, cache: CallCache | None, retry: RetryPolicy, usage: ModelUsage
    ):
        self.config = config
        self.name = config.name
        self.backend = backend
        self.cache = cache
        self.retry = RetryPolicy(max_retries=config.max_retries, base_delay=retry.base_delay, max_delay=retry.max_delay)
        self.usage = usage
        self.limits = ModelLimits(config.max_concurrency, config.requests_per_minute, config.tokens_per_minute)
        self._identity = config.identity()
        self._identity_json = canonical_json(self._identity)
        self._schema_cache: dict[int, tuple[Any, str]] = {}
        self._jitter = random.Random(config.name)
        self._chat_template: ChatTemplateSource | None = None
        self._chat_template_known = False
        self.breaker = CircuitBreaker(config.name, config.endpoint, config.breaker_threshold)
        self._modes_said: set[str] = set()

    def _params(self, overrides: dict[str, Any]) -> dict[str, Any]:
        params = dict(self.config.params)
        params.update({k: v for k, v in overrides.items() if v is not None})
        return params

    def _key(self, verb: str, payload: Any, params: dict[str, Any], schema: Any, sample: int, attempt: int) -> str:
        """``content_hash([identity, verb, payload, params, schema, sample, attempt], 20)``, built from parts.

        The identity and the schema (often the largest part, the same on every call of a step) are
        serialised once and spliced in: canonical JSON of a list is its items' canonical JSON joined by
        commas, so the key is byte-for-byte the same as hashing the whole list, at half the cost.
        """
        head = _canonical([verb, payload, params])[1:-1]
        if type(sample) is int and type(attempt) is int:
            tail = f"{sample},{attempt}"
        else:
            tail = _canonical([sample, attempt])[1:-1]
        text = f"[{self._identity_json},{head},{self._schema_json(schema)},{tail}]"
        return hashlib.blake2b(text.encode("utf-8"), digest_size=20).hexdigest()

    def _schema_json(self, schema: Any) -> str:
        if schema is None:
            return "null"
        cached = self._schema_cache.get(id(schema))
        if cached is not None and cached[0] == schema:  # equal, not only the same object: schemas are dicts
            return cached[1]
        text = canonical_json(schema)
        if len(self._schema_cache) >= 64:
            self._schema_cache.clear()
        self._schema_cache[id(schema)] = (copy.deepcopy(schema), text)
        return text

    async def _call(
        self,
        verb: str,
        payload: Any,
        params: dict[str, Any],
        *,
        schema: dict[str, Any] | None = None,
        sample: int = 0,
        attempt: int = 0,
    ) -> Completion:
        return (await self._call_n(verb, payload, params, 1, schema=schema, sample=sample, attempt=attempt))[0]

    async def _call_n(
        self,
        verb: str,
        payload: Any,
        params: dict[str, Any],
        n: int,
        *,
        schema: dict[str, Any] | None = None,
        sample: int = 0,
        attempt: int = 0,
    ) -> list[Completion]:
        """One backend request for ``n`` samples (``n > 1``: raw completions only), cached as one entry.

        ``n`` joins the key only when above 1, so a single sample shares its cache entry with
        :meth:`complete` and older caches stay valid.
        """
        key = self._key(verb, payload, params if n == 1 else {**params, "n": n}, schema, sample, attempt)
        if self.cache is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                self.usage.cache_hits += 1
                if n > 1:
                    return [Completion.from_cache(item) for item in hit["choices"]]
                return [Completion.from_cache(hit)]
        seed = int(key[:8], 16)
        estimate = _estimate_tokens(payload, params, n)

        async def call_backend() -> list[Completion]:
            await self.limits.before_call(estimate)
            if verb == "chat":
                return [await self.backend.chat(payload, params, json_schema=schema, seed=seed)]
            if n == 1:
                return [await self.backend.complete(payload, params, seed=seed)]
            return await self.backend.complete_n(payload, params, n, seed=seed)

        results, seconds = await self._with_retries(call_backend)
        if len(results) != n:  # a misaligned group would pair samples with the wrong slots
            raise ModelError(f"model '{self.name}': {len(results)} samples for n={n}", model=self.name)
        prompt_tokens = sum(r.usage.prompt_tokens for r in results)
        completion_tokens = sum(r.usage.completion_tokens for r in results)
        for result in results:
            result.latency = seconds
        self.limits.after_call(estimate, prompt_tokens + completion_tokens)
        self.usage.record(prompt_tokens, completion_tokens, seconds, self.config.pricing)
        if self.cache is not None:
            self.cache.put(key, {"choices": [r.to_cache() for r in results]} if n > 1 else results[0].to_cache())
        return results

    async def _with_retries(self, call: Callable[[], Awaitable[T]]) -> tuple[T, float]:
        """Run ``call`` under the concurrency limit, retrying transient failures; returns (result, seconds).

        The backoff sleep happens outside the semaphore, so a model waiting out a 429 frees its slot. Every
        try first asks the circuit breaker, so once the model is declared down no call touches the network.
        """
        tries = 0
        while True:
            self.breaker.check()
            try:
                async with self.limits.semaphore:
                    self.breaker.check()  # it may have been declared down while this call waited for a slot
                    started = time.perf_counter()
                    result = await call()
                    seconds = time.perf_counter() - started
            except EndpointDown:
                raise
            except StructuredOutputRefused as exc:
                self._stepped_down(exc)  # the backend asks differently from now on: send again at once
                continue
            except TransientError as exc:
                self._count_fault(exc.endpoint_fault)
                if tries >= self.retry.max_retries:
                    self.usage.errors += 1
                    raise ModelError(f"{exc} (gave up after {tries + 1} tries)", model=self.name, raw=exc.raw) from None
                if exc.retry_after is not None and exc.retry_after > self.config.max_retry_after:
                    self.usage.errors += 1
                    raise ModelError(
                        f"{exc} (the server asks to wait {exc.retry_after:.0f}s, more than this model's "
                        f"max_retry_after of {self.config.max_retry_after:.0f}s: giving up now; run "
                        "again later with --retry-failed)",
                        model=self.name,
                        raw=exc.raw,
                    ) from None
                self.usage.retries += 1
                await asyncio.sleep(self.retry.delay(tries, exc.retry_after, self._jitter))
                tries += 1
            except FatalError as exc:
                self._count_fault(exc.endpoint_fault)
                self.usage.errors += 1
                raise
            except ModelError:
                self.usage.errors += 1
                raise
            else:
                self.breaker.succeeded()
                return result, seconds

    def _count_fault(self, fault: str | None) -> None:
        """Tell the breaker about a request that found no working model API there; raises EndpointDown when
        that makes the model down (the failed request then counts as this model's error)."""
        if fault is None:
            return
        try:
            self.breaker.failed(fault)
        except EndpointDown:
            self.usage.errors += 1
            raise

    def _stepped_down(self, refused: StructuredOutputRefused) -> None:
        """A refused ``response_format``: an error in the usage, the new mode kept, the change said once."""
        self.usage.errors += 1
        self.usage.structured_output = self.backend.structured_output
        if refused.now not in self._modes_said:
            self._modes_said.add(refused.now)
            log.warning("%s", refused)

    async def chat(self, messages: Messages, *, sample: int = 0, **params: Any) -> Completion:
        return await self._call("chat", messages, self._params(params), sample=sample)

    async def chat_json(
        self, messages: Messages, schema: dict[str, Any], *, sample: int = 0, **params: Any
    ) -> tuple[Any, Completion]:
        """A reply parsed and validated against ``schema``; invalid replies are retried with new samples.

        After ``json_retries`` retries the last raw reply travels inside :class:`ValidationFailed`, so the
        failures file shows exactly what the model said.
        """
        merged = self._params(params)
        self.usage.structured_output = self.backend.structured_output
        last: ValidationFailed | None = None
        for attempt in range(self.config.json_retries + 1):
            completion = await self._call("chat", messages, merged, schema=schema, sample=sample, attempt=attempt)
            try:
                return parse_and_validate(completion.text, schema, self.name), completion
            except ValidationFailed as exc:
                self.usage.invalid_replies += 1
                last = exc
        assert last is not None
        raise ValidationFailed(f"{last} (after {self.config.json_retries + 1} attempts)", model=self.name, raw=last.raw)

    async def complete(self, prompt: str, *, sample: int = 0, **params: Any) -> Completion:
        return await self._call("complete", prompt, self._params(params), sample=sample)

    async def complete_n(self, prompt: str, n: int, *, sample: int = 0, **params: Any) -> list[Completion]:
        """``n`` samples of one raw prompt in one request (the server's ``n``, vLLM's ``SamplingParams.n``):
        the prompt is processed once for all of them. ``n == 1`` is exactly :meth:`complete`."""
        if type(n) is not int or n < 1:
            raise ModelError(f"model '{self.name}': n must be a whole number >= 1, not {n!r}", model=self.name)
        return await self._call_n("complete", prompt, self._params(params), n, sample=sample)

    async def chat_template(self) -> ChatTemplateSource | None:
        """The model's own chat template (GGUF metadata, or the file ``chat_template`` names), or ``None``.

        Asked once per client: loading it may load the model, and it cannot change during a run.
        """
        if not self._chat_template_known:
            self._chat_template = await self.backend.chat_template()
            self._chat_template_known = True
        return self._chat_template

    async def _cached(self, keys: list[str], field: str) -> list[Any]:
        """Per-item cache lookups (embeddings, rewards): ``field`` of each hit, ``None`` where missing."""
        values: list[Any] = [None] * len(keys)
        if self.cache is not None:
            for i, key in enumerate(keys):
                hit = await self.cache.get(key)
                if hit is not None:
                    values[i] = hit[field]
                    self.usage.cache_hits += 1
        return values

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Embeddings, cached one text at a time so overlapping batches are not paid twice."""
        keys = [content_hash([self._identity, "embed", text], 20) for text in texts]
        vectors: list[list[float] | None] = await self._cached(keys, "v")
        missing = [i for i, v in enumerate(vectors) if v is None]
        if missing:
            batch = [texts[i] for i in missing]
            (fresh, tokens), seconds = await self._with_retries(lambda: self.backend.embed_with_usage(batch))
            if len(fresh) != len(batch):  # zip would silently misalign vectors and texts
                raise ModelError(
                    f"model '{self.name}': {len(fresh)} embeddings for {len(batch)} texts", model=self.name
                )
            if tokens is None:  # the backend does not count: about four characters a token
                tokens = sum(len(text) // 4 for text in batch)
            self.usage.record(tokens, 0, seconds, self.config.pricing)
            for i, vector in zip(missing, fresh):
                vectors[i] = vector
                if self.cache is not None:
                    self.cache.put(keys[i], {"v": vector})
        return [v for v in vectors if v is not None]

    async def reward(self, items: list[Messages] | list[tuple[str, str]], **params: Any) -> list[float]:
        """One reward score per conversation (messages ending with the assistant turn to score), or per
        ``(prompt, response)`` pair.

        Cached one conversation at a time, like embeddings. The missing ones go to the backend in chunks of
        its ``reward_batch_size`` (1 for a server: one request each; more for a local model's forward
        pass), concurrently, each chunk under the model's limits and retries.
        """
        from .reward import as_conversation

        conversations = [as_conversation(item, i) for i, item in enumerate(items)]
        merged = self._params(params)
        keys = [content_hash([self._identity, "reward", conversation, merged], 20) for conversation in conversations]
        scores: list[float | None] = await self._cached(keys, "r")
        missing = [i for i, s in enumerate(scores) if s is None]
        size = max(1, self.backend.reward_batch_size)
        chunks = [missing[k : k + size] for k in range(0, len(missing), size)]

        async def score(chunk: list[int]) -> None:
            batch = [conversations[i] for i in chunk]
            tokens = sum(len(m["content"]) for c in batch for m in c) // 4

            async def call_backend() -> list[float]:
                await self.limits.before_call(tokens)
                return await self.backend.reward(batch, merged)

            fresh, seconds = await self._with_retries(call_backend)
            if len(fresh) != len(batch):
                raise ModelError(
                    f"model '{self.name}': {len(fresh)} reward scores for {len(batch)} conversations", model=self.name
                )
            self.limits.after_call(tokens, tokens)
            self.usage.record(tokens, 0, seconds, self.config.pricing)
            for i, value in zip(chunk, fresh):
                scores[i] = float(value)
                if self.cache is not None:
                    self.cache.put(keys[i], {"r": float(value)})

        await asyncio.gather(*(score(chunk) for chunk in chunks))
        return [float(s) for s in scores if s is not None]


def _estimate_tokens(payload: Any, params: dict[str, Any], n: int = 1) -> int:
    if isinstance(payload, str):
        chars = len(payload)
    else:
        chars = sum(len(m.get("content") or "") for m in payload)
    return chars // 4 + n * int(params.get("max_tokens") or 256)


class Gateway:
    """All models of one run, created on first use, closed together."""

    def __init__(
        self,
        registry: ModelRegistry,
        cache: CallCache | None = None,
        retry: RetryPolicy | None = None,
        backends: dict[str, Backend] | None = None,
    ):
        """``backends`` supplies ready backend objects by model name (custom backends, test doubles);
        the rest are created from their config on first use."""
        self.registry = registry
        self.cache = cache
        self.retry = retry or RetryPolicy()
        self.usage: dict[str, ModelUsage] = {}
        self._clients: dict[str, ModelClient] = {}
        self._backends = dict(backends or {})

    def model(self, name: str) -> ModelClient:
        client = self._clients.get(name)
        if client is None:
            config = self.registry.get(name)
            usage = self.usage.setdefault(name, ModelUsage())
            backend = self._backends.get(name) or create_backend(config)
            client = ModelClient(config, backend, self.cache, self.retry, usage)
            self._clients[name] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.backend.close()
        if self.cache is not None:
            await self.cache.flush()
