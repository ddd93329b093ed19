"""The one door to every model: cache -> budget -> circuit breaker -> rate limit -> retry -> backend, with accounting.

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
import math
import random
import time
from collections.abc import Awaitable, Callable
from functools import cached_property
from typing import Any, TypeVar

from ..errors import EndpointDown, ModelError, ValidationFailed
from ..records import canonical_json, content_hash
from .adaptive import initial_limit_of
from .backends.base import Backend, Completion, FatalError, Messages, StructuredOutputRefused, TransientError
from .batch import BatchCollector
from .breaker import CircuitBreaker
from .budget import Budget, Hold, Spend
from .cache import CallCache
from .chat_template import ChatTemplateSource
from .config import ModelConfig, ModelRegistry
from .limits import ModelLimits
from .prices import Price, price_of
from .rate_headers import RateLimitInfo
from .retry import RetryPolicy
from .structured import parse_json_reply
from .tokens import counter_for, estimate_text_tokens
from .usage import ModelUsage

T = TypeVar("T")
DEFAULT_MAX_TOKENS = 256  # what a call without max_tokens is taken to reply at most, until a longer reply is seen

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
        self.limits = ModelLimits(
            config.max_concurrency,
            config.requests_per_minute,
            config.tokens_per_minute,
            adaptive=config.concurrency == "adaptive",
            max_hold=config.max_retry_after,
            initial=initial_limit_of(config),
        )
        if hasattr(backend, "on_rate_limits"):  # a server that announces its budget in reply headers
            backend.on_rate_limits = self._rate_limits_seen
        self._identity = config.identity()
        self._identity_json = canonical_json(self._identity)
        self._schema_cache: dict[int, tuple[Any, str]] = {}
        self._jitter = random.Random(config.name)
        self._chat_template: ChatTemplateSource | None = None
        self._chat_template_known = False
        self.breaker = CircuitBreaker(config.name, config.endpoint, config.breaker_threshold)
        self._modes_said: set[str] = set()
        self.budget: Budget | None = None  # run.budget's ledger (models/budget.py), set by the gateway
        self.deferral: BatchCollector | None = None  # a batched run's collector (models/batch.py), set by the gateway
        self._prompt_ratio = 1.0  # the largest real / counted prompt tokens seen: raises later reservations
        self._longest_reply = 0  # completion tokens of the longest reply to a call without max_tokens

    @cached_property
    def price(self) -> Price | None:
        """What this model's tokens cost (:func:`.prices.price_of`); looked up at the first paid call."""
        return price_of(self.config)

    def _params(self, overrides: dict[str, Any]) -> dict[str, Any]:
        params = dict(self.config.params)
        params.update({k: v for k, v in overrides.items() if v is not None})
        return params

    def cache_key(
        self,
        verb: str,
        payload: Any,
        params: dict[str, Any] | None = None,
        *,
        schema: dict[str, Any] | None = None,
        sample: int = 0,
        n: int = 1,
    ) -> str:
        """The call cache key of a request's first attempt, as this client would make it: ``params`` (the step's)
        over the model's own, ``n`` for samples drawn together. ``joyforge plan`` finds the requests already
        cached with it; it is the same function the calls use, so the two cannot drift apart."""
        merged = self._params(dict(params or {}))
        return self._key(verb, payload, merged if n == 1 else {**merged, "n": n}, schema, sample, 0)

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
        seed = int(key[:8], 16)
        if self.cache is not None:
            hit = await self.cache.get(key)
            if hit is not None:
                self.usage.cache_hits += 1
                cached = (
                    [Completion.from_cache(item) for item in hit["choices"]] if n > 1 else [Completion.from_cache(hit)]
                )
                return self._stamped(cached, params, seed, sample, attempt)
        if self.deferral is not None:  # a batched run: raises CallDeferred unless this call goes live
            self.deferral.intercept(self, key, verb, payload, params, schema, n, seed)
        estimate = _estimate_tokens(payload, params, n)
        hold = await self._reserve(payload, params, n)

        async def call_backend() -> list[Completion]:
            await self.limits.before_call(estimate)
            if verb == "chat":
                return [await self.backend.chat(payload, params, json_schema=schema, seed=seed)]
            if verb == "chat_tools":
                messages, tools, choice = payload["messages"], payload["tools"], payload.get("tool_choice")
                return [await self.backend.chat_tools(messages, tools, params, tool_choice=choice, seed=seed)]
            if n == 1:
                return [await self.backend.complete(payload, params, seed=seed)]
            return await self.backend.complete_n(payload, params, n, seed=seed)

        results, seconds = await self._paid(hold, call_backend)
        if len(results) != n:  # a misaligned group would pair samples with the wrong slots
            self._unpaid(hold)
            raise ModelError(f"model '{self.name}': {len(results)} samples for n={n}", model=self.name)
        prompt_tokens = sum(r.usage.prompt_tokens for r in results)
        completion_tokens = sum(r.usage.completion_tokens for r in results)
        self._spent(hold, prompt_tokens, completion_tokens, seconds, max_tokens=_max_tokens(params))
        self.usage.reasoning_tokens += sum(r.usage.reasoning_tokens for r in results)  # of completion_tokens
        for result in results:
            result.latency = seconds
        self.limits.after_call(estimate, prompt_tokens + completion_tokens)
        if self.cache is not None:
            self.cache.put(key, {"choices": [r.to_cache() for r in results]} if n > 1 else results[0].to_cache())
        return self._stamped(results, params, seed, sample, attempt)

    async def _reserve(self, payload: Any, params: dict[str, Any] | None, n: int = 1) -> tuple[Hold, int] | None:
        """Reserve the most this call can cost under ``run.budget`` (raises BudgetExceeded when it cannot fit):
        its prompt tokens as counted (times the worst undercount seen), its completion up to ``max_tokens``
        per sample. Returns the hold and the prompt tokens counted, or ``None`` without a budget."""
        if self.budget is None:
            return None
        counted, prompt, completion = self.reservation(payload, params, n)
        price = self.price
        cost = price.cost(prompt, completion) if price is not None else 0.0
        hold = await self.budget.reserve(self.name, prompt + completion, cost)
        return (hold, counted) if hold is not None else None

    def reservation(self, payload: Any, params: dict[str, Any] | None, n: int = 1) -> tuple[int, int, int]:
        """The most a call can take, as :meth:`_reserve` holds it under ``run.budget`` (and a provider batch is
        checked against it: :mod:`.batch`): (prompt tokens counted, prompt tokens held, completion tokens held)."""
        counted = self._prompt_tokens(payload)
        prompt = math.ceil(counted * self._prompt_ratio)
        if params is None:  # embeddings and reward scores: no reply tokens
            completion = 0
        else:
            completion = n * (_max_tokens(params) or max(DEFAULT_MAX_TOKENS, self._longest_reply))
        return counted, prompt, completion

    def _prompt_tokens(self, payload: Any) -> int:
        """A request's prompt tokens, with the model's tokenizer where there is one (:mod:`.tokens`)."""
        if isinstance(payload, list) and payload and isinstance(payload[0], str):  # texts to embed
            return sum(estimate_text_tokens(text) for text in payload)
        counted = counter_for(self.config).prompt(payload)
        if isinstance(payload, dict) and payload.get("tools"):  # the tools' schemas are read as prompt too
            counted += estimate_text_tokens(canonical_json(payload["tools"]))
        return counted

    async def _paid(self, hold: tuple[Hold, int] | None, call: Callable[[], Awaitable[T]]) -> tuple[T, float]:
        """:meth:`_with_retries`, giving the budget reservation back when the call fails or is cancelled."""
        try:
            return await self._with_retries(call)
        except BaseException:
            self._unpaid(hold)
            raise

    def _unpaid(self, hold: tuple[Hold, int] | None) -> None:
        """The call failed: its budget reservation is given back."""
        if hold is not None and self.budget is not None:
            self.budget.release(hold[0])

    def _spent(
        self, hold: tuple[Hold, int] | None, prompt: int, completion: int, seconds: float, max_tokens: int | None
    ) -> None:
        """Count a call a backend answered, in the usage and (settling its reservation) in the budget."""
        cost = self.usage.record(prompt, completion, seconds, self.price)
        if hold is None or self.budget is None:
            return
        reserved, counted = hold
        if counted > 0 and prompt > counted * self._prompt_ratio:
            self._prompt_ratio = prompt / counted
        if max_tokens is None:
            self._longest_reply = max(self._longest_reply, completion)
        self.budget.settle(reserved, Spend(1, prompt, completion, cost))

    def _stamped(
        self, completions: list[Completion], params: dict[str, Any], seed: int, sample: int, attempt: int
    ) -> list[Completion]:
        """Completions with what provenance needs from this call: the parameters as sent (the derived seed
        included, unless the step set its own), the sample and attempt, the backend's model id (the
        configured one when the backend named none)."""
        sent = params if "seed" in params else {**params, "seed": seed}
        for completion in completions:
            completion.params = dict(sent)
            completion.sample = sample
            completion.attempt = attempt
            if not completion.model:
                completion.model = self.config.model
        return completions

    async def _with_retries(self, call: Callable[[], Awaitable[T]]) -> tuple[T, float]:
        """Run ``call`` under the concurrency limit, retrying transient failures; returns (result, seconds).

        The backoff sleep happens outside the slot, so a model waiting out a 429 frees its slot; how each try
        ended is the slot's feedback to the model's concurrency limit (:mod:`.adaptive`). Every
        try first asks the circuit breaker, so once the model is declared down no call touches the network.
        """
        tries = 0
        while True:
            self.breaker.check()
            try:
                async with self.limits.slot():
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

    def _rate_limits_seen(self, info: RateLimitInfo) -> None:
        """The backend read a reply's x-ratelimit-* headers: the model's limits pace by them. Looked up on
        each reply, so limits swapped after creation (the Ray executor's cluster-wide ones) get them too."""
        self.limits.observe(info)

    def concurrency(self) -> dict[str, Any]:
        """This model's concurrency now: mode, limit, ceiling, latency, 429 share (:mod:`.adaptive`)."""
        return self.limits.report()

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

    @property
    def supports_tools(self) -> bool:
        """Whether :meth:`chat_tools` reaches a backend that takes OpenAI's ``tools`` (else ask for JSON)."""
        return self.backend.supports_tools

    async def chat_tools(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        tool_choice: str | None = None,
        sample: int = 0,
        **params: Any,
    ) -> Completion:
        """A chat turn with native tool calling: the model's calls are in the reply's ``tool_calls``.

        Cached, limited and retried like :meth:`chat`; the tools and ``tool_choice`` are part of the key.
        """
        payload: dict[str, Any] = {"messages": messages, "tools": tools}
        if tool_choice is not None:
            payload["tool_choice"] = tool_choice
        return await self._call("chat_tools", payload, self._params(params), sample=sample)

    async def chat_json(
        self, messages: Messages, schema: dict[str, Any], *, sample: int = 0, **params: Any
    ) -> tuple[Any, Completion]:
        """A reply parsed and validated against ``schema``; invalid replies are retried with new samples.

        The reply is read leniently first (raw control characters, prose or a fence around it, a cut-off
        end, fixable syntax: :mod:`.structured`), so a re-ask is paid only for a reply that holds no usable
        value. After ``json_retries`` retries the last raw reply travels inside :class:`ValidationFailed`,
        so the failures file shows exactly what the model said.
        """
        merged = self._params(params)
        self.usage.structured_output = self.backend.structured_output
        last: ValidationFailed | None = None
        for attempt in range(self.config.json_retries + 1):
            completion = await self._call("chat", messages, merged, schema=schema, sample=sample, attempt=attempt)
            try:
                parsed = parse_json_reply(completion.text, schema, self.name)
            except ValidationFailed as exc:
                self.usage.invalid_replies += 1
                last = exc
                continue
            if parsed.how != "strict":  # read leniently or repaired: no re-ask paid, but counted and stamped
                self.usage.repaired_replies += 1
                completion.parsed = parsed.how
            return parsed.value, completion
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
            hold = await self._reserve(batch, None)
            (fresh, tokens), seconds = await self._paid(hold, lambda: self.backend.embed_with_usage(batch))
            if tokens is None:  # the backend does not count: about four characters a token
                tokens = sum(len(text) // 4 for text in batch)
            if len(fresh) != len(batch):  # zip would silently misalign vectors and texts
                self._unpaid(hold)
                raise ModelError(
                    f"model '{self.name}': {len(fresh)} embeddings for {len(batch)} texts", model=self.name
                )
            self._spent(hold, tokens, 0, seconds, max_tokens=0)
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

            hold = await self._reserve([m["content"] for c in batch for m in c], None)
            fresh, seconds = await self._paid(hold, call_backend)
            if len(fresh) != len(batch):
                self._unpaid(hold)
                raise ModelError(
                    f"model '{self.name}': {len(fresh)} reward scores for {len(batch)} conversations", model=self.name
                )
            self.limits.after_call(tokens, tokens)
            self._spent(hold, tokens, 0, seconds, max_tokens=0)
            for i, value in zip(chunk, fresh):
                scores[i] = float(value)
                if self.cache is not None:
                    self.cache.put(keys[i], {"r": float(value)})

        await asyncio.gather(*(score(chunk) for chunk in chunks))
        return [float(s) for s in scores if s is not None]


def _max_tokens(params: dict[str, Any]) -> int | None:
    """The reply's token limit the request sets, if any."""
    value = params.get("max_tokens") or params.get("max_completion_tokens")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _estimate_tokens(payload: Any, params: dict[str, Any], n: int = 1) -> int:
    if isinstance(payload, dict):  # chat_tools: the messages, and the tools' schemas the server also reads
        return _estimate_tokens(payload["messages"], params, n) + len(canonical_json(payload["tools"])) // 4
    if isinstance(payload, str):
        chars = len(payload)
    else:
        chars = sum(len(m.get("content") or "") for m in payload)
    return chars // 4 + n * int(params.get("max_tokens") or DEFAULT_MAX_TOKENS)


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
        self.budget: Budget | None = None
        self.deferral: BatchCollector | None = None

    def model(self, name: str) -> ModelClient:
        client = self._clients.get(name)
        if client is None:
            config = self.registry.get(name)
            usage = self.usage.setdefault(name, ModelUsage())
            backend = self._backends.get(name) or create_backend(config)
            client = ModelClient(config, backend, self.cache, self.retry, usage)
            client.budget = self.budget
            if self.deferral is not None and self.deferral.takes(config):
                client.deferral = self.deferral
            self._clients[name] = client
        return client

    def defer_to(self, collector: BatchCollector | None) -> None:
        """Batch the uncached calls of the models ``collector`` takes (a batched run: :mod:`.batch`); ``None``:
        every call live again."""
        self.deferral = collector
        for client in self._clients.values():
            client.deferral = collector if collector is not None and collector.takes(client.config) else None

    async def use_budget(self, budget: Budget) -> None:
        """Keep every uncached call of every model inside ``budget`` (``run.budget``: :mod:`.budget`)."""
        self.budget = budget
        for client in self._clients.values():
            client.budget = budget

    def concurrency(self) -> dict[str, dict[str, Any]]:
        """Each model's concurrency now, by name (the progress bar shows it; :meth:`close` keeps it in the
        model's usage, hence in summary.json)."""
        return {name: client.concurrency() for name, client in self._clients.items()}

    async def close(self) -> None:
        for name, report in self.concurrency().items():
            if report and name in self.usage:
                self.usage[name].concurrency = report
        for client in self._clients.values():
            await client.backend.close()
        if self.cache is not None:
            await self.cache.flush()
