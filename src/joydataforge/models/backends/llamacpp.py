"""The embedded default: a GGUF model run in-process by llama-cpp-python.

A ``Llama`` object is not safe to call from two threads at once, so each model owns one worker thread
and calls queue on it; the event loop only awaits. Structured replies are grammar-constrained: llama.cpp
turns the JSON schema into a GBNF grammar, so even a 135M model returns parseable JSON.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ...errors import ConfigError, ModelError
from .. import reasoning
from ..chat_template import ChatTemplateSource
from ..config import ModelConfig
from .base import Backend, Completion, Messages, Usage
from .smollm2 import resolve_model_path

_CHAT_KEYS = {
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "logit_bias",
}


def _import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise ConfigError("the llamacpp backend needs llama-cpp-python: pip install 'joydataforge[embedded]'") from None
    return llama_cpp


class _LoadedModel:
    """One loaded copy per (path, context, mode) per process, with the one thread allowed to call it.

    Loading costs seconds and memory, and two named models often share weights (``smollm2`` and
    ``smollm2-greedy``); sharing the object means sharing its thread too, or two threads would race
    inside llama.cpp.
    """

    _lock = threading.Lock()
    _loaded: dict[tuple, "_LoadedModel"] = {}

    def __init__(self, llama: Any):
        self.llama = llama
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")

    @classmethod
    def get(
        cls, path: str, n_ctx: int, n_threads: int | None, embedding: bool, chat_format: str | None
    ) -> "_LoadedModel":
        key = (path, n_ctx, n_threads, embedding, chat_format)
        with cls._lock:
            if key not in cls._loaded:
                llama_cpp = _import_llama()
                kwargs: dict[str, Any] = {"model_path": path, "n_ctx": n_ctx, "verbose": False, "embedding": embedding}
                if n_threads:
                    kwargs["n_threads"] = n_threads
                if chat_format:
                    kwargs["chat_format"] = chat_format
                if embedding and not _names_pooling(llama_cpp, path):
                    # A chat model's GGUF names no pooling, and llama.cpp then returns one vector per token,
                    # misaligned between the texts of one batch (llama-cpp-python 0.3): ask for the mean.
                    kwargs["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_MEAN
                cls._loaded[key] = cls(llama_cpp.Llama(**kwargs))
            return cls._loaded[key]


class LlamaCppBackend(Backend):
    supports_grammar = True

    def __init__(self, config: ModelConfig):
        self.config = config
        self.path = str(resolve_model_path(config.model_path))
        # The id replies carry (provenance): the configured label, else the GGUF's file name.
        self.label = config.model or Path(self.path).stem

    def _loaded(self, embedding: bool = False) -> _LoadedModel:
        return _LoadedModel.get(
            self.path, self.config.n_ctx, self.config.n_threads, embedding, self.config.chat_template
        )

    def _llama(self, embedding: bool = False) -> Any:
        return self._loaded(embedding).llama

    async def _in_worker(self, fn: Any, *args: Any, embedding: bool = False) -> Any:
        """Run on the model's own thread; loading (slow, first call) happens there too."""
        loop = asyncio.get_running_loop()
        loaded = await asyncio.to_thread(self._loaded, embedding)
        return await loop.run_in_executor(loaded.executor, fn, *args)

    @staticmethod
    def _params(params: dict[str, Any]) -> dict[str, Any]:
        unknown = set(params) - _CHAT_KEYS - {"seed", "n"}
        if unknown:
            raise ModelError(f"llamacpp backend: unsupported generation parameters {sorted(unknown)}")
        return {k: v for k, v in params.items() if k in _CHAT_KEYS}

    def _chat_sync(
        self, messages: Messages, params: dict[str, Any], schema: dict[str, Any] | None, seed: int | None
    ) -> Completion:
        kwargs = self._params(params)
        if schema is not None:
            kwargs["response_format"] = {"type": "json_object", "schema": schema}
        if "seed" in params or seed is not None:  # a step's own seed wins, as on a server
            kwargs["seed"] = params.get("seed", seed)
        started = time.perf_counter()
        try:
            data = self._llama().create_chat_completion(messages=messages, **kwargs)
        except ValueError as exc:  # e.g. the prompt does not fit the context window
            raise ModelError(f"model '{self.config.name}': {exc}", model=self.config.name) from None
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        completion = Completion(
            text=choice["message"].get("content") or "",
            usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason"),
            model=self.label,
            latency=time.perf_counter() - started,
        )
        return reasoning.apply(completion, self.config, tokenize=self._count_tokens)

    def _count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the GGUF's own tokenizer (to count a reasoning trace)."""
        return len(self._llama().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    async def chat(
        self,
        messages: Messages,
        params: dict[str, Any],
        *,
        json_schema: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> Completion:
        return await self._in_worker(self._chat_sync, messages, params, json_schema, seed)

    def _complete_sync(self, prompt: str, params: dict[str, Any], seed: int | None) -> Completion:
        kwargs = self._params(params)
        if "seed" in params or seed is not None:  # a step's own seed wins, as on a server
            kwargs["seed"] = params.get("seed", seed)
        try:
            data = self._llama().create_completion(prompt=prompt, **kwargs)
        except ValueError as exc:
            raise ModelError(f"model '{self.config.name}': {exc}", model=self.config.name) from None
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return Completion(
            text=choice.get("text") or "",
            usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason"),
            model=self.label,
        )

    async def complete(self, prompt: str, params: dict[str, Any], *, seed: int | None = None) -> Completion:
        return await self._in_worker(self._complete_sync, prompt, params, seed)

    def _complete_n_sync(self, prompt: str, params: dict[str, Any], n: int, seed: int | None) -> list[Completion]:
        samples = [self._complete_sync(prompt, params, None if seed is None else seed + i) for i in range(n)]
        for sample in samples[1:]:  # evaluated once and reused, as a server counts an n-sample request
            sample.usage.prompt_tokens = 0
        return samples

    async def complete_n(
        self, prompt: str, params: dict[str, Any], n: int, *, seed: int | None = None
    ) -> list[Completion]:
        """The samples run back to back on the model's thread: llama.cpp keeps the prompt's KV cache between
        calls that share a prefix, so only the first sample pays for evaluating the prompt."""
        return await self._in_worker(self._complete_n_sync, prompt, params, n, seed)

    def _chat_template_sync(self) -> ChatTemplateSource | None:
        llama = self._llama()
        template = (llama.metadata or {}).get("tokenizer.chat_template")
        if not template:
            return None

        def token_text(token_id: int) -> str:
            return llama._model.token_get_text(token_id) if token_id >= 0 else ""

        return ChatTemplateSource(
            template,
            token_text(llama.token_bos()),
            token_text(llama.token_eos()),
            origin=f"gguf metadata tokenizer.chat_template: {self.path}",
        )

    async def chat_template(self) -> ChatTemplateSource | None:
        """The GGUF's ``tokenizer.chat_template``; ``None`` when ``chat_template`` in models.yaml overrides
        it with a llama-cpp-python chat format, since chats then no longer use the GGUF's template."""
        if self.config.chat_template:
            return None
        return await self._in_worker(self._chat_template_sync)

    async def reward(self, conversations: list[Messages], params: dict[str, Any]) -> list[float]:
        raise ModelError(
            f"model '{self.config.name}': the llamacpp backend cannot score rewards (a GGUF chat model "
            "has no reward head); use a reward model with backend: transformers, one served by "
            "vLLM (backend: openai, POST /pooling), or vLLM in-process (backend: vllm, engine_args: "
            "{runner: pooling})",
            model=self.config.name,
        )

    def _embed_sync(self, texts: list[str]) -> tuple[list[list[float]], int | None]:
        data = self._llama(embedding=True).create_embedding(texts)
        tokens = (data.get("usage") or {}).get("prompt_tokens")
        return [_pooled(row["embedding"]) for row in data["data"]], tokens

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return (await self.embed_with_usage(texts))[0]

    async def embed_with_usage(self, texts: list[str]) -> tuple[list[list[float]], int | None]:
        return await self._in_worker(self._embed_sync, texts, embedding=True)


def _names_pooling(llama_cpp: Any, path: str) -> bool:
    """Whether the GGUF says how to pool token vectors (embedding models do); its metadata alone, read fast."""
    probe = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    try:
        return any(key.endswith(".pooling_type") for key in (probe.metadata or {}))
    finally:
        probe.close()


def _pooled(embedding: list[Any]) -> list[float]:
    """One vector per text; token vectors (should a model still return them) become their mean."""
    if not embedding or not isinstance(embedding[0], list):
        return [float(x) for x in embedding]
    import numpy as np

    return np.asarray(embedding, dtype=np.float64).mean(axis=0).tolist()
