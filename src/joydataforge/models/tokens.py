"""Count the tokens of a prompt before it is sent, with the model's own tokenizer where we can have it.

``joyforge plan`` prices a run before it starts, so it needs the prompt tokens each call will be billed
for. The best count is the backend's own:

- ``llamacpp``: the GGUF's tokenizer (``llama_cpp.Llama(vocab_only=True)``: the vocabulary alone, no weights,
  a tenth of a second) applied to the prompt formatted by the GGUF's own chat template, exactly as
  llama-cpp-python formats and tokenizes a chat request: the count equals the ``prompt_tokens`` it reports.
- ``openai``: ``tiktoken`` for the model id, when tiktoken is installed and has that model's encoding, plus
  OpenAI's documented overhead of a chat message (3 tokens each, 3 to prime the reply).
- anything else (other servers, vLLM, a model tiktoken does not know): an estimate, said as such: a
  Chinese, Japanese or Korean character is about one token, other text about four characters a token.

Counters are made once per tokenizer and shared: loading a vocabulary takes a moment, counting is fast.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from .chat_template import ChatTemplateSource
from .config import ModelConfig

Messages = list[dict[str, Any]]

_CJK_RANGES = (
    (0x3040, 0x30FF),  # kana
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7AF),  # hangul syllables
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF00, 0xFFEF),  # full-width forms
    (0x20000, 0x2FA1F),  # CJK extensions B-F
)
MESSAGE_OVERHEAD = 4
"""Estimated tokens a chat template adds around each message (role markers, separators)."""
ESTIMATE = "estimate: ~1 token per CJK character, ~4 characters per token otherwise, +4 per chat message"


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


def estimate_text_tokens(text: str) -> int:
    """About how many tokens ``text`` is for a modern BPE tokenizer: CJK characters count one each (they
    are one to two tokens in most vocabularies), the rest a quarter each (English averages four characters
    a token). Good to some 30%; used only where no real tokenizer is at hand, and said so."""
    cjk = sum(1 for ch in text if ord(ch) >= 0x3040 and _is_cjk(ch))
    return cjk + (len(text) - cjk + 3) // 4


def payload_text(payload: Messages | str) -> list[str]:
    """The texts a payload holds: a raw prompt, or each message's content (tool payloads: their messages)."""
    if isinstance(payload, str):
        return [payload]
    if isinstance(payload, dict):  # chat_tools: {"messages": [...], "tools": [...]}
        return payload_text(payload.get("messages") or [])
    return [str(m.get("content") or "") for m in payload]


class TokenCounter:
    """Counts the prompt tokens of chat messages or raw text; ``how`` says with what (shown in the plan)."""

    how: str = ESTIMATE
    exact: bool = False

    def text(self, text: str) -> int:
        return estimate_text_tokens(text)

    def prompt(self, payload: Messages | str) -> int:
        """Tokens of a request's prompt: a raw text as it is, chat messages as the template lays them out."""
        if isinstance(payload, str):
            return self.text(payload)
        texts = payload_text(payload)
        return sum(self.text(t) for t in texts) + MESSAGE_OVERHEAD * len(texts)

    def chat_template(self) -> ChatTemplateSource | None:
        """The model's chat template where the tokenizer's source holds one (a GGUF's), else ``None``."""
        return None


class LlamaCppCounter(TokenCounter):
    """The GGUF's own vocabulary and chat template, as llama-cpp-python uses them for a chat request."""

    exact = True

    def __init__(self, path: str, chat_format: str | None):
        import llama_cpp
        from llama_cpp import llama_chat_format

        with _quiet_stderr():  # llama.cpp prints context warnings for a vocabulary-only load
            self._llama = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        self._lock = threading.Lock()  # one llama object, used from one thread at a time
        metadata = self._llama.metadata or {}
        template = metadata.get("tokenizer.chat_template")
        model = self._llama._model
        eos, bos = self._llama.token_eos(), self._llama.token_bos()
        self._eos = model.token_get_text(eos) if eos >= 0 else ""
        self._bos = model.token_get_text(bos) if bos >= 0 else ""
        self._template = None if chat_format else template
        self._formatter = None
        if self._template:
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=self._template, eos_token=self._eos, bos_token=self._bos, stop_token_ids=[eos]
            )
            self.how = f"llama.cpp tokenizer and chat template of {os.path.basename(path)}"
        else:
            self.how = f"llama.cpp tokenizer of {os.path.basename(path)} (+4 tokens per message for the chat format)"

    def _tokens(self, text: str, add_bos: bool) -> int:
        with self._lock:
            return len(self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def text(self, text: str) -> int:
        return self._tokens(text, add_bos=False)

    def prompt(self, payload: Messages | str) -> int:
        if isinstance(payload, str):
            return self._tokens(payload, add_bos=True)  # create_completion adds the BOS token
        if self._formatter is None:
            return super().prompt(payload)
        result = self._formatter(messages=payload_messages(payload))
        return self._tokens(result.prompt, add_bos=not result.added_special)

    def chat_template(self) -> ChatTemplateSource | None:
        if not self._template:
            return None
        return ChatTemplateSource(self._template, self._bos, self._eos, origin="gguf metadata tokenizer.chat_template")


class TiktokenCounter(TokenCounter):
    """OpenAI's tokenizer for an OpenAI model, with the chat overhead OpenAI documents."""

    exact = True

    def __init__(self, encoding: Any, name: str):
        self._encoding = encoding
        self.how = f"tiktoken {name}"

    def text(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))

    def prompt(self, payload: Messages | str) -> int:
        if isinstance(payload, str):
            return self.text(payload)
        return sum(self.text(t) + 3 for t in payload_text(payload)) + 3


def payload_messages(payload: Messages | dict[str, Any]) -> Messages:
    return payload.get("messages", []) if isinstance(payload, dict) else payload


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence what native code writes to file descriptor 2 for the duration (llama.cpp's load messages)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


_COUNTERS: dict[tuple[Any, ...], TokenCounter] = {}
_COUNTERS_LOCK = threading.Lock()


def _tiktoken_counter(model: str) -> TokenCounter | None:
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        encoding = tiktoken.encoding_for_model(model)
    except Exception:  # an unknown model, or an encoding file tiktoken cannot fetch (offline): estimate instead
        return None
    return TiktokenCounter(encoding, encoding.name)


def counter_for(config: ModelConfig) -> TokenCounter:
    """The best token counter for a model: its backend's tokenizer, else the stated estimate."""
    if config.backend == "llamacpp":
        from .backends.smollm2 import resolve_model_path

        try:
            path = str(resolve_model_path(config.model_path))
        except Exception:  # the GGUF is missing: the run will say so; the plan estimates
            return TokenCounter()
        key: tuple[Any, ...] = ("llamacpp", path, config.chat_template)
        with _COUNTERS_LOCK:
            if key not in _COUNTERS:
                try:
                    _COUNTERS[key] = LlamaCppCounter(path, config.chat_template)
                except ImportError:
                    _COUNTERS[key] = TokenCounter()
            return _COUNTERS[key]
    if config.backend == "openai" and config.model:
        key = ("tiktoken", config.model)
        with _COUNTERS_LOCK:
            if key not in _COUNTERS:
                _COUNTERS[key] = _tiktoken_counter(config.model) or TokenCounter()
            return _COUNTERS[key]
    return TokenCounter()


def context_window(config: ModelConfig) -> int | None:
    """The most prompt tokens a model takes, where its config says (a GGUF run here: ``n_ctx``); else ``None``.

    A llama.cpp request whose prompt fills the window is refused before any token is generated, so a plan
    can tell which requests will fail (and cost nothing) before the run.
    """
    return config.n_ctx if config.backend == "llamacpp" else None
