"""Finding the part of a chatty reply that a checker judges: the final math answer, the program, the JSON.

Models wrap what matters in prose, reasoning and Markdown fences. Each checker asks here for its part, and the
verdict's ``details`` show what was found, so a wrong extraction is visible rather than a silent fail.
"""

from __future__ import annotations

import json
import re
from typing import Any

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "答案：", "最终答案是", "the final answer is", "Answer:", GSM8K's "####": the answer follows the last of them.
_MARKER = re.compile(
    r"(?:最终答案|答案)\s*(?:是|为)?\s*[：:]?|(?:final\s+answer|the\s+answer)\s*(?:is)?\s*[：:]?|\banswer\s*[：:]|####",
    re.IGNORECASE,
)
PYTHON_FENCES = ("python", "py", "python3")


def strip_thinking(text: str) -> str:
    """The reply without its reasoning: ``<think>...</think>`` blocks, or all before a lone ``</think>``."""
    text = _THINK.sub("", text)
    closing = text.lower().rfind("</think>")
    return text[closing + len("</think>") :] if closing >= 0 else text


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced), or ``None``."""
    found = None
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    found = text[start:pos]
                    break
    return found.strip() if found is not None else None


def as_latex(text: str) -> str:
    """Math text ready for math-verify: LaTeX without delimiters (``\\frac{1}{2}``) gets ``$...$``."""
    text = text.strip()
    if "\\" in text and not any(mark in text for mark in ("$", "\\(", "\\[")):
        return f"${text}$"
    return text


def final_math_answer(text: str) -> tuple[str, str]:
    """``(the text to read the answer from, where it came from)``: ``boxed``, ``marker`` or ``text``.

    The last ``\\boxed{}`` wins; else what follows the last answer marker ("答案：", "the answer is", "####") on
    its line; else the whole reply, in which math-verify takes the last expression.
    """
    text = strip_thinking(text)
    boxed = last_boxed(text)
    if boxed:
        return as_latex(boxed), "boxed"
    markers = list(_MARKER.finditer(text))
    if markers:
        rest = text[markers[-1].end() :].strip().splitlines()
        if rest and rest[0].strip():
            return as_latex(rest[0].strip().rstrip("。.")), "marker"
    return as_latex(text), "text"


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Every Markdown fenced block as ``(language, body)``, in order."""
    return [(lang.lower(), body) for lang, body in _FENCE.findall(text)]


def extract_code(text: str) -> tuple[str, str]:
    """``(program, where)``: the last ```` ```python ```` block, else the last untagged block, else the whole reply."""
    text = strip_thinking(text)
    blocks = fenced_blocks(text)
    for want in (PYTHON_FENCES, ("",)):
        chosen = [body for lang, body in blocks if lang in want]
        if chosen:
            return chosen[-1], "fenced block"
    return text, "whole reply"


class NoJSON(ValueError):
    """The reply holds no JSON value."""


def extract_json(answer: Any, *, extract: bool) -> tuple[Any, str]:
    """``(value, where)``: an answer that is already a value (a parsed reply) is used as it is.

    Text is parsed whole; with ``extract`` also the last fenced block that parses, else the first JSON object or
    array in the text. Raises :class:`NoJSON` (with the parser's message) when none parses.
    """
    if not isinstance(answer, str):
        return answer, "value"
    text = strip_thinking(answer).strip()
    try:
        return json.loads(text), "whole reply"
    except json.JSONDecodeError as exc:
        first_error = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if not extract:
        raise NoJSON(first_error)
    for _, body in reversed(fenced_blocks(text)):
        try:
            return json.loads(body), "fenced block"
        except json.JSONDecodeError:
            continue
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        return value, "embedded value"
    raise NoJSON(first_error)
