"""Reward scores: one number per conversation, from a sequence-classification reward model.

Two ways to reach one, both behind the gateway's ``reward`` verb (cache, limits, retries, accounting):

- ``backend: transformers`` -- a local Hugging Face reward model (``AutoModelForSequenceClassification``
  with one label, e.g. Skywork-Reward, or ArmoRM-style custom heads that return ``.score``), run with
  PyTorch on a worker thread so the event loop never blocks. ``torch`` and ``transformers`` are an
  optional extra (``pip install 'joydataforge[reward]'``) imported only when such a model is first used.
- an OpenAI-compatible server's pooling endpoint (``backend: openai``): vLLM serves reward models with
  ``vllm serve <model> --runner pooling`` and answers ``POST /pooling`` (at the server root, beside
  ``/v1``) with ``{"model", "messages"}`` -- the server applies the model's chat template -- by
  ``{"data": [{"index": 0, "object": "pooling", "data": [score]}]}``. The request and reply shapes live
  here; :mod:`.backends.openai_compat` only sends them.

A conversation is a list of chat messages that ends with the assistant turn being scored.
"""

from __future__ import annotations

import asyncio
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError
from .backends.base import Backend, Completion, Messages
from .chat_template import load_chat_template_file
from .config import ModelConfig

POOLING_PATH = "/pooling"
_LOAD_KEYS = {"device", "dtype", "batch_size"}  # transformers: how to load and batch, from `params`
_DTYPES = {"float32", "float16", "bfloat16"}


def check_conversation(conversation: Any, index: int) -> Messages:
    """A conversation to score must be ``[{role, content}, ...]`` ending with the assistant's turn."""
    if not isinstance(conversation, list) or not conversation:
        raise ModelError(f"reward: item {index} must be a non-empty list of chat messages")
    for message in conversation:
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise ModelError(f"reward: item {index} has a message without string 'role' and 'content': {message!r}")
    if conversation[-1]["role"] != "assistant":
        raise ModelError(
            f"reward: item {index} must end with the assistant message to score, "
            f"not a '{conversation[-1]['role']}' message"
        )
    return conversation


def as_conversation(item: Any, index: int) -> Messages:
    """``(prompt, response)`` pairs are a shorthand for a one-turn conversation."""
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return [{"role": "user", "content": item[0]}, {"role": "assistant", "content": item[1]}]
    return check_conversation(item, index)


# --- OpenAI-compatible server (vLLM) -----------------------------------------------------------------


def server_root(base_url: str) -> str:
    """vLLM mounts ``/pooling`` at the server root, while ``base_url`` usually ends in ``/v1``."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def pooling_request(model: str, conversation: Messages, params: dict[str, Any]) -> dict[str, Any]:
    """The body of one ``POST /pooling`` call. ``params`` pass through (e.g. ``use_activation: false`` to
    get the raw logit instead of the sigmoid vLLM may apply to one-label classifiers)."""
    return {"model": model, "messages": conversation, **params}


def parse_pooling_reply(data: Any, model: str) -> float:
    """The score in a pooling reply: ``data[0].data`` is ``[score]`` for a sequence-classification reward
    model, or one row per token (``[[...], ...]``) for token-level pooling, whose last row scores the
    whole sequence. A reply with several values per row is not a reward model's: refused, never guessed."""
    try:
        value = data["data"][0]["data"]
    except (KeyError, IndexError, TypeError):
        raise ModelError(
            f"model '{model}': pooling reply without data[0].data: {json.dumps(data)[:200]}",
            model=model,
            raw=json.dumps(data),
        ) from None
    if isinstance(value, list) and value and isinstance(value[-1], list):
        value = value[-1]
    if isinstance(value, list):
        if len(value) != 1:
            raise ModelError(
                f"model '{model}': pooling reply has {len(value)} values per input; a reward model "
                "returns one (num_labels=1)",
                model=model,
                raw=json.dumps(data)[:2000],
            )
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelError(
            f"model '{model}': pooling reply holds {value!r}, not a finite number",
            model=model,
            raw=json.dumps(data)[:2000],
        )
    return float(value)


def conversation_token_ids(tokenizer: Any, template: str | None, conversation: Messages) -> list[int]:
    """A conversation as a reward model reads it, for every local backend (transformers, in-process vLLM).

    The chat template writes the special tokens (BOS...) itself; adding them again would change the score.
    """
    text = tokenizer.apply_chat_template(conversation, tokenize=False, chat_template=template)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --- local transformers model ------------------------------------------------------------------------


def _import_torch_transformers() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError:
        raise ConfigError(
            "backend 'transformers' needs torch and transformers: pip install 'joydataforge[reward]'"
        ) from None
    return torch, transformers


class TransformersRewardBackend(Backend):
    """A local sequence-classification reward model; scores only (it does not chat).

    ``model_path`` is the model's folder (or a hub id already in the local cache), ``n_ctx`` the longest
    conversation in tokens (a longer one fails with a clear error rather than being cut, which would
    score a different text), ``n_threads`` PyTorch's CPU threads, ``chat_template`` a template file for
    tokenizers without one. ``params`` may set ``device`` (``cpu``, ``cuda``, ``cuda:1``...; default
    ``cuda`` when available), ``dtype`` (``float32``, ``bfloat16``, ``float16``) and ``batch_size``
    (conversations per forward pass, default 8).
    """

    def __init__(self, config: ModelConfig):
        if not config.model_path:
            raise ConfigError(f"model '{config.name}': backend 'transformers' needs model_path (the model folder)")
        unknown = set(config.params) - _LOAD_KEYS
        if unknown:
            raise ConfigError(
                f"model '{config.name}': unknown params {sorted(unknown)} for backend 'transformers' "
                f"(accepted: {', '.join(sorted(_LOAD_KEYS))})"
            )
        dtype = config.params.get("dtype", "float32")
        if dtype not in _DTYPES:
            raise ConfigError(f"model '{config.name}': params.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        batch_size = config.params.get("batch_size", 8)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(
                f"model '{config.name}': params.batch_size must be a positive integer, got {batch_size!r}"
            )
        self.config = config
        self.path = str(Path(config.model_path).expanduser())
        self.dtype = dtype
        self.device_name: str | None = config.params.get("device")
        self.reward_batch_size = batch_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")
        self._loaded: tuple[Any, Any, Any, str | None] | None = None  # torch, model, tokenizer, template

    async def chat(
        self,
        messages: Messages,
        params: dict[str, Any],
        *,
        json_schema: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> Completion:
        raise ModelError(
            f"model '{self.config.name}' is a reward model (backend 'transformers'): it scores "
            "conversations with reward(), it does not chat",
            model=self.config.name,
        )

    def _load(self) -> tuple[Any, Any, Any, str | None]:
        """Load once, on the worker thread (seconds to minutes for a real model)."""
        if self._loaded is None:
            torch, transformers = _import_torch_transformers()
            if self.config.n_threads:
                torch.set_num_threads(self.config.n_threads)
            device = self.device_name or ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
                # transformers 4.56 renamed torch_dtype to dtype (the old name still works, with a warning).
                major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
                dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
                model = transformers.AutoModelForSequenceClassification.from_pretrained(
                    self.path, **{dtype_key: getattr(torch, self.dtype)}
                )
            except (OSError, ValueError) as exc:
                raise ModelError(
                    f"model '{self.config.name}': cannot load a sequence-classification model from {self.path}: {exc}",
                    model=self.config.name,
                ) from None
            model.to(device)
            model.eval()
            if tokenizer.pad_token_id is not None and model.config.pad_token_id is None:
                # The head scores the last non-padding token; it must know which id is padding.
                model.config.pad_token_id = tokenizer.pad_token_id
            template = None
            if self.config.chat_template:
                template = load_chat_template_file(self.config.chat_template).template
            elif not getattr(tokenizer, "chat_template", None):
                raise ModelError(
                    f"model '{self.config.name}': the tokenizer in {self.path} has no chat template; "
                    "set chat_template (a tokenizer_config.json or .jinja file) in models.yaml",
                    model=self.config.name,
                )
            self._loaded = (torch, model, tokenizer, template)
        return self._loaded

    def _encode(self, tokenizer: Any, template: str | None, conversation: Messages) -> list[int]:
        ids = conversation_token_ids(tokenizer, template, conversation)
        if len(ids) > self.config.n_ctx:
            raise ModelError(
                f"model '{self.config.name}': a conversation of {len(ids)} tokens is longer than "
                f"n_ctx={self.config.n_ctx}; raise n_ctx (up to the model's limit)",
                model=self.config.name,
            )
        return ids

    def _score_sync(self, conversations: list[Messages]) -> list[float]:
        torch, model, tokenizer, template = self._load()
        encoded = [self._encode(tokenizer, template, c) for c in conversations]
        # Without a padding token a batch cannot be padded: score one conversation at a time.
        step = self.reward_batch_size if tokenizer.pad_token_id is not None else 1
        scores: list[float] = []
        for start in range(0, len(encoded), step):
            chunk = encoded[start : start + step]
            batch = tokenizer.pad({"input_ids": chunk}, return_tensors="pt")
            batch = {k: v.to(model.device) for k, v in batch.items()}
            with torch.no_grad():
                output = model(**batch)
            values = getattr(output, "score", None)  # ArmoRM-style heads return the preference score here
            if values is None:
                values = output.logits
                if values.shape[-1] != 1:
                    raise ModelError(
                        f"model '{self.config.name}' has {values.shape[-1]} labels; a reward model has "
                        "one (num_labels=1)",
                        model=self.config.name,
                    )
            scores.extend(float(v) for v in values.float().reshape(len(chunk), -1)[:, 0].tolist())
        return scores

    async def reward(self, conversations: list[Messages], params: dict[str, Any]) -> list[float]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._score_sync, conversations)

    async def close(self) -> None:
        self._executor.shutdown(wait=False)
