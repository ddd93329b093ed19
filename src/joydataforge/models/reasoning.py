"""Reasoning traces: the part of a thinking model's reply that is not the answer.

Thinking models return their trace in one of three ways: a field beside the answer (``reasoning_content``:
DeepSeek, vLLM's and SGLang's reasoning parsers; ``reasoning``: OpenRouter, Ollama), a ``<think>...</think>``
block inside the content (Qwen3 and the R1 distills served raw), or only the closing tag, when the chat template
opened the block itself. Backends hand the text (and the field, if any) to :func:`separate`, so every step,
judge, JSON parser and export downstream sees the answer alone, and the trace travels in
``Completion.reasoning``. Which of these a model's replies are read for is ``reasoning:`` in models.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..records import THINK_TAGS

if TYPE_CHECKING:
    from .backends.base import Completion
    from .config import ModelConfig

DEFAULT_TAGS = THINK_TAGS
MODES = ("auto", "field", "tags", "none")


def split_tags(text: str, tags: Sequence[str] = DEFAULT_TAGS) -> tuple[str, str | None]:
    """``(answer, trace)`` of a reply that may hold ``<think>`` blocks; the trace is None when there is none.

    A closing tag before any opening tag means the chat template opened the block: all before it is trace.
    Every ``open...close`` block is trace; an opening tag never closed (the reply was cut off while thinking)
    makes the rest of the reply trace, and the answer is what came before it (often nothing). An empty block
    (Qwen3 with thinking turned off answers ``<think>\\n\\n</think>``) is removed and gives no trace.
    """
    open_tag, close_tag = tags[0], tags[1]
    if open_tag not in text and close_tag not in text:
        return text, None
    parts: list[str] = []
    rest = text
    first_close, first_open = rest.find(close_tag), rest.find(open_tag)
    if first_close >= 0 and (first_open < 0 or first_close < first_open):
        parts.append(rest[:first_close])
        rest = rest[first_close + len(close_tag) :]
    answer: list[str] = []
    while True:
        start = rest.find(open_tag)
        if start < 0:
            answer.append(rest)
            break
        answer.append(rest[:start])
        end = rest.find(close_tag, start + len(open_tag))
        if end < 0:
            parts.append(rest[start + len(open_tag) :])
            break
        parts.append(rest[start + len(open_tag) : end])
        rest = rest[end + len(close_tag) :]
    trace = "\n\n".join(p.strip() for p in parts if p.strip())
    return "".join(answer).strip(), trace or None


def separate(
    text: str, field: str | None, mode: str = "auto", tags: Sequence[str] = DEFAULT_TAGS
) -> tuple[str, str | None]:
    """``(answer, trace)`` of a reply whose server may have sent a trace ``field`` beside the ``text``.

    ``auto`` reads the field and splits tags in the text, ``field`` the field only, ``tags`` the tags only
    (a server field is then ignored), ``none`` keeps the text as it came and reads no trace.
    """
    if mode == "none":
        return text, None
    traces: list[str] = []
    if mode in ("auto", "field") and field and field.strip():
        traces.append(field.strip())
    if mode in ("auto", "tags"):
        text, in_text = split_tags(text, tags)
        if in_text:
            traces.append(in_text)
    return text, ("\n\n".join(traces) or None)


def count_tokens(trace: str | None, tokenize: Callable[[str], int] | None = None) -> tuple[int, bool]:
    """Tokens of a trace and whether the number is an estimate: the model's tokenizer where the backend has
    one, else about four characters a token (a server that reports ``reasoning_tokens`` is read instead)."""
    if not trace:
        return 0, False
    if tokenize is not None:
        try:
            return int(tokenize(trace)), False
        except Exception:  # a tokenizer that cannot read this text: the estimate still says something
            pass
    return max(1, len(trace) // 4), True


def apply(
    completion: "Completion",
    config: "ModelConfig",
    field: str | None = None,
    *,
    server_tokens: int | None = None,
    tokenize: Callable[[str], int] | None = None,
) -> "Completion":
    """Take the trace out of ``completion.text`` (and ``field``) as ``config.reasoning`` says, and count it:
    ``server_tokens`` (the server's ``completion_tokens_details.reasoning_tokens``) when given, else
    :func:`count_tokens`. Returns the same completion, changed in place."""
    completion.text, completion.reasoning = separate(completion.text, field, config.reasoning, config.reasoning_tags)
    if completion.reasoning is None:
        return completion
    if server_tokens is not None and server_tokens > 0:
        completion.usage.reasoning_tokens, completion.usage.reasoning_estimated = int(server_tokens), False
    else:
        tokens, estimated = count_tokens(completion.reasoning, tokenize)
        completion.usage.reasoning_tokens, completion.usage.reasoning_estimated = tokens, estimated
    return completion
