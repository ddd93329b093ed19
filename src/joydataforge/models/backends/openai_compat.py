"""Any OpenAI-compatible server: vLLM, SGLang, llama.cpp server, Ollama, TEI, hosted APIs.

Speaks the four HTTP endpoints (chat, completions, embeddings, and vLLM's ``/pooling`` for rewards) with aiohttp (chosen over httpx for its lower per-request CPU cost,
which is what bounds throughput at hundreds of concurrent calls on a small machine). Classifies every
failure as transient (the gateway retries) or final.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import time
from typing import Any

import aiohttp

from ...errors import ModelError
from ..chat_template import ChatTemplateSource, load_chat_template_file
from ..config import ModelConfig
from .base import Backend, Completion, Messages, TransientError, Usage

_TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524}


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` is either seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# Words a server's error uses when it cannot do what response_format asked (OpenAI, DeepSeek, Groq, TGI,
# vLLM, SGLang, LM Studio phrasings); a 400 about anything else (context length, a bad model) has none.
_STRUCTURED_WORDS = ("response_format", "json_schema", "json schema", "schema", "grammar", "guided", "structured")


def _refuses_structured_output(error_text: str) -> bool:
    text = error_text.lower()
    return any(word in text for word in _STRUCTURED_WORDS)


class OpenAICompatBackend(Backend):
    def __init__(self, config: ModelConfig):
        if not config.base_url:
            raise ModelError(f"model '{config.name}': the openai backend needs base_url")
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._schema_mode = config.structured_output  # downgraded once if the server refuses json_schema

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = self.config.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _session_get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=max(1, self.config.max_concurrency), ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                json_serialize=lambda obj: json.dumps(obj, ensure_ascii=False),
            )
        return self._session

    async def _post(self, path: str, body: dict[str, Any], *, base: str | None = None) -> dict[str, Any]:
        session = await self._session_get()
        name = self.config.name
        try:
            async with session.post((base or self.base_url) + path, json=body) as response:
                text = await response.text()
                if response.status >= 400:
                    message = f"model '{name}': HTTP {response.status} from {path}: {text[:300]}"
                    if response.status in _TRANSIENT_STATUS:
                        raise TransientError(message, status=response.status, model=name, raw=text,
                                             retry_after=parse_retry_after(response.headers.get("Retry-After")))
                    raise ModelError(message, model=name, raw=text)
        except asyncio.TimeoutError:
            raise TransientError(f"model '{name}': no reply within {self.config.timeout}s", model=name) from None
        except aiohttp.ClientError as exc:
            raise TransientError(f"model '{name}': connection failed: {exc}", model=name) from None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise TransientError(f"model '{name}': server sent invalid JSON: {text[:200]}", model=name, raw=text) from None

    @staticmethod
    def _usage(data: dict[str, Any]) -> Usage:
        usage = data.get("usage") or {}
        return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))

    async def chat(self, messages: Messages, params: dict[str, Any], *,
                   json_schema: dict[str, Any] | None = None, seed: int | None = None) -> Completion:
        body: dict[str, Any] = {"model": self.config.model, "messages": messages, **params}
        if seed is not None and "seed" not in body:
            body["seed"] = seed
        if json_schema is not None and self._schema_mode != "none":
            body["response_format"] = self._response_format(json_schema)
        try:
            data = await self._post("/chat/completions", body)
        except ModelError as exc:
            if "response_format" not in body or not _refuses_structured_output(exc.raw or str(exc)):
                raise
            # The server refused our way of asking for structured output (some answer 400, some 500):
            # step down json_schema -> json_object (+schema, which llama.cpp's server enforces) -> prompt
            # only, and remember it. Replies are still validated against the schema by the gateway.
            self._schema_mode = "json_object" if self._schema_mode == "json_schema" else "none"
            return await self.chat(messages, params, json_schema=json_schema, seed=seed)
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise TransientError(f"model '{self.config.name}': reply without choices: {str(data)[:200]}",
                                 model=self.config.name, raw=json.dumps(data)) from None
        return Completion(text=text, usage=self._usage(data), finish_reason=choice.get("finish_reason"),
                          model=data.get("model", self.config.model))

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self._schema_mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
        return {"type": "json_object", "schema": schema}

    async def complete(self, prompt: str, params: dict[str, Any], *, seed: int | None = None) -> Completion:
        return (await self._completions(prompt, params, 1, seed))[0]

    async def complete_n(self, prompt: str, params: dict[str, Any], n: int, *,
                         seed: int | None = None) -> list[Completion]:
        """One request with ``n`` (vLLM and SGLang process the prompt once for all samples). A server that
        ignores ``n`` (some llama.cpp builds, Ollama) returns fewer choices: the rest are asked for one by one."""
        got = await self._completions(prompt, params, n, seed)
        missing = n - len(got)
        if missing > 0:
            seeds = [None if seed is None else seed + len(got) + i for i in range(missing)]
            got += await asyncio.gather(*(self.complete(prompt, params, seed=s) for s in seeds))
        return got[:n]

    async def _completions(self, prompt: str, params: dict[str, Any], n: int, seed: int | None) -> list[Completion]:
        body: dict[str, Any] = {"model": self.config.model, "prompt": prompt, **params}
        if n > 1:
            body["n"] = n
        if seed is not None and "seed" not in body:
            body["seed"] = seed
        data = await self._post("/completions", body)
        try:
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            texts = [c.get("text") or "" for c in choices]
        except (KeyError, TypeError, AttributeError):
            choices, texts = [], []
        if not choices:
            raise TransientError(f"model '{self.config.name}': completion without choices", model=self.config.name,
                                 raw=json.dumps(data))
        # The server counts tokens per request: the prompt once, completion tokens for all samples together.
        usage = self._usage(data)
        share, extra = divmod(usage.completion_tokens, len(choices))
        model = data.get("model", self.config.model)
        return [Completion(text=text, finish_reason=choice.get("finish_reason"), model=model,
                           usage=Usage(usage.prompt_tokens if i == 0 else 0, share + (extra if i == 0 else 0)))
                for i, (choice, text) in enumerate(zip(choices, texts))]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return (await self.embed_with_usage(texts))[0]

    async def embed_with_usage(self, texts: list[str]) -> tuple[list[list[float]], int | None]:
        data = await self._post("/embeddings", {"model": self.config.model, "input": texts})
        try:
            rows = sorted(data["data"], key=lambda item: item.get("index", 0))
            vectors = [list(map(float, row["embedding"])) for row in rows]
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"model '{self.config.name}': malformed embeddings reply", model=self.config.name) from None
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        tokens = usage.get("prompt_tokens", usage.get("total_tokens"))
        return vectors, int(tokens) if isinstance(tokens, (int, float)) else None

    async def reward(self, conversations: list[Messages], params: dict[str, Any]) -> list[float]:
        """vLLM's pooling endpoint, one request per conversation (see :mod:`..reward` for the shapes)."""
        from ..reward import POOLING_PATH, parse_pooling_reply, pooling_request, server_root

        root = server_root(self.base_url)
        replies = await asyncio.gather(*(self._post(POOLING_PATH, pooling_request(self.config.model, c, params),
                                                    base=root) for c in conversations))
        return [parse_pooling_reply(data, self.config.name) for data in replies]

    async def chat_template(self) -> ChatTemplateSource | None:
        """A server does not say which template it applies; ``chat_template`` in models.yaml may name the
        served model's tokenizer_config.json (or a .jinja file)."""
        if not self.config.chat_template:
            return None
        return load_chat_template_file(self.config.chat_template)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
