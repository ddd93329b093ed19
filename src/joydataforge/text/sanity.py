"""One set of sanity rules for generated text, shared by every step that writes it into records.

A schema can say "a non-empty string"; it cannot say "a question". What small models return under loose
prompts is often a string all the same: a fragment of the JSON envelope (``"}].join(["``), a bare number
(``"2"``, which an Evol judge once scored a valid instruction), one word looping, or the prompt's own
labels copied into the answer (``候选回答 4：``). The rules, in the order they are checked:

- ``no_letters``: not one letter or Han character (``str.isalpha``, which covers both).
- ``too_short``: fewer than ``min_chars`` characters, spaces aside.
- ``debris``: starts with a closing bracket or quote-bracket (``"}``, ``]}``, ``",``), ends with an opening
  one (``{"``, ``["``, ``":``), or is mostly ``{}[]()<>"\\;=|`` and backticks (``max_symbol_share``).
- ``repetition``: one word, Han character or run of up to :data:`MAX_UNIT` of them, holding a letter,
  repeated back to back more than ``max_repeats`` times.
- ``scaffolding``: the labels the step's prompt puts before the content it inserts (a template line with
  ``{{ ... }}`` after its label, or a label line followed by one: ``用户问题：{{ input }}``, ``候选回答
  {{ loop.index }}：``), chat-template tokens, ``### Instruction`` headings, and ``scaffolding_phrases``.
  Labels come from the template's source, never from the rendered prompt, so a record's own text that
  happens to look like a label is not taken for scaffolding.

The settings are :class:`joydataforge.config.text_checks.TextChecks`; what a failure costs is the step's
decision, and every failure is counted as ``text_check:<rule>``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Protocol

from ..config.text_checks import TextChecks

MAX_UNIT = 20
"""Longest repeated unit the repetition rule looks for, in tokens (words, Han characters, punctuation)."""

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_HAN}]|[^\W{_HAN}]+|[^\w\s]")
_SYMBOLS = frozenset('{}[]()<>"\\;=|`')
_DEBRIS_START = re.compile(r'^\s*(?:"\s*[}\]]|[}\]]\s*[}\],"]|"\s*,)')
_DEBRIS_END = re.compile(r'(?:[{\[]\s*"|"\s*[:,])\s*$')
_TAG = re.compile(r"\{%.*?%\}|\{#.*?#\}")
_EXPR = re.compile(r"\{\{.*?\}\}")
_COLON = re.compile(r"[:：]")
_LINE_START = r"(?m:^)[ \t#*>\-]*"
# Scaffolding any prompt may leak, whatever its own labels: chat-template tokens, instruction-tuning
# headings, numbered candidates and drafts.
_GENERIC_SCAFFOLDING = re.compile(
    r"<\|[A-Za-z_]+\|>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>"
    r"|(?m:^[ \t]*#{2,}[ \t]*(?:instruction|response|input|output|question|answer)\b)"
    r"|\b(?:candidate|draft)[ \t]*(?:answer|response)?[ \t]*#?\d+[ \t]*[:：]"
    r"|(?:候选|草稿)(?:回答|答案)?[ \t]*\d+[ \t]*[:：]",
    re.IGNORECASE,
)


class PromptSource(Protocol):
    """What the scaffolding rule reads of a prompt: its templates' source (a PromptTemplate has both)."""

    system: str | None
    user: str


@dataclass(frozen=True)
class TextProblem:
    """Why a text fails: the rule (also the counter ``text_check:<rule>``) and what was found."""

    rule: str
    detail: str

    @property
    def counter(self) -> str:
        return f"text_check:{self.rule}"

    def __str__(self) -> str:
        return f"{self.rule} ({self.detail})"


def _label_pattern(label: str) -> str:
    """A regex for a label as the template writes it: spaces loose, each ``{{ ... }}`` one short word."""
    out = []
    for index, part in enumerate(_EXPR.split(label)):
        if index:
            out.append(r"\s*[^\s:：]{1,12}\s*")
        for piece in re.split(r"(\s+|[:：])", part):
            if not piece:
                continue
            out.append(r"\s*" if piece.isspace() else "[:：]" if _COLON.fullmatch(piece) else re.escape(piece))
    return "".join(out)


@functools.lru_cache(maxsize=256)
def prompt_labels(system: str | None, user: str) -> re.Pattern[str] | None:
    """The labels a prompt puts before inserted content, as one regex (None when it has none).

    A label is the start of a template line up to its first colon, 2 to 30 characters long with at least
    two letters and no quote or brace, on a line that inserts content after it (``用户问题：{{ input }}``)
    or is followed by a line that starts with an insertion (``你之前的回答：`` then ``{{ options.answer }}``).
    Numbered labels (``候选回答 {{ loop.index }}：``) match anywhere in a text; plain ones at a line start.
    """
    lines = [_TAG.sub("", line).strip() for text in (system or "", user) for line in text.splitlines()]
    anywhere, at_start = [], []
    for index, line in enumerate(lines):
        following = next((nxt for nxt in lines[index + 1 :] if nxt), "")
        colon = _COLON.search(_EXPR.sub(lambda m: "x" * len(m.group()), line))
        if colon is None:
            continue
        label, rest = line[: colon.end()], line[colon.end() :]
        if "{{" not in rest and not following.startswith("{{"):
            continue
        literal = _EXPR.sub("", label)
        shown = _EXPR.sub("N", label)
        if not 2 <= len(shown) <= 30 or sum(ch.isalpha() for ch in literal) < 2 or set(literal) & set('"{}'):
            continue
        (anywhere if "{{" in label else at_start).append(_label_pattern(label))
    parts = [f"(?:{p})" for p in dict.fromkeys(anywhere)]
    if at_start:
        parts.append(_LINE_START + "(?:" + "|".join(dict.fromkeys(at_start)) + ")")
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def _longest_repeat(tokens: list[str], max_unit: int) -> tuple[int, list[str]]:
    """The most back-to-back copies of one unit of up to ``max_unit`` tokens that holds a letter, and the unit."""
    best, unit = 1, []
    for size in range(1, min(max_unit, len(tokens) // 2) + 1):
        same = 0
        for j in range(size, len(tokens)):
            if tokens[j] == tokens[j - size]:
                same += 1
                copies = 1 + same // size
                if copies > best:
                    candidate = tokens[j - size + 1 : j + 1]
                    if any(ch.isalpha() for token in candidate for ch in token):
                        best, unit = copies, candidate
            else:
                same = 0
    return best, unit


class TextSanity:
    """The rules of one step's ``text_checks``, compiled once; :meth:`problem` checks one text."""

    def __init__(self, checks: TextChecks | None = None):
        self.checks = checks if checks is not None else TextChecks()
        self.rules = self.checks.enabled()
        phrases = [re.escape(p) for p in self.checks.scaffolding_phrases if p.strip()]
        self._phrases = re.compile("|".join(phrases), re.IGNORECASE) if phrases else None

    def __bool__(self) -> bool:
        return bool(self.rules)

    def problem(self, text: str, prompt: PromptSource | None = None) -> TextProblem | None:
        """The first rule ``text`` fails (in the order of ``config.text_checks.RULES``), or None if it passes all.

        ``prompt`` is the template the text was generated from, for the scaffolding rule's labels.
        """
        for rule in self.rules:
            found = getattr(self, f"_{rule}")(text, prompt)
            if found is not None:
                return TextProblem(rule, found)
        return None

    def first_problem(self, texts: list[str], prompt: PromptSource | None = None) -> TextProblem | None:
        """The first problem of several texts that make one output (the fields of a rewritten case)."""
        for text in texts:
            found = self.problem(text, prompt)
            if found is not None:
                return found
        return None

    # One method per rule, named after it: what was found, or None.

    def _too_short(self, text: str, prompt: PromptSource | None) -> str | None:
        size = len("".join(text.split()))
        return f"{size} character(s), fewer than {self.checks.min_chars}" if size < self.checks.min_chars else None

    def _no_letters(self, text: str, prompt: PromptSource | None) -> str | None:
        return None if any(ch.isalpha() for ch in text) else f"{_excerpt(text)} has no letter or Han character"

    def _debris(self, text: str, prompt: PromptSource | None) -> str | None:
        if _DEBRIS_START.search(text) or _DEBRIS_END.search(text):
            return f"{_excerpt(text)} is a fragment of JSON or code"
        dense = "".join(text.split())
        share = sum(ch in _SYMBOLS for ch in dense) / len(dense) if dense else 0.0
        if share >= self.checks.max_symbol_share:
            return f"{share:.0%} of {_excerpt(text)} is brackets, quotes and the like"
        return None

    def _repetition(self, text: str, prompt: PromptSource | None) -> str | None:
        copies, unit = _longest_repeat(_TOKEN.findall(text), MAX_UNIT)
        if copies > self.checks.max_repeats:
            shown = "".join(t if _is_han(t) else f" {t}" for t in unit).strip()
            return f"{_excerpt(shown)} repeated {copies} times in a row (at most {self.checks.max_repeats})"
        return None

    def _scaffolding(self, text: str, prompt: PromptSource | None) -> str | None:
        for pattern in (
            _GENERIC_SCAFFOLDING,
            self._phrases,
            prompt_labels(prompt.system, prompt.user) if prompt else None,
        ):
            if pattern is not None:
                found = pattern.search(text)
                if found:
                    return f"carries the prompt's scaffolding {found.group().strip()!r}"
        return None


def _is_han(token: str) -> bool:
    return len(token) == 1 and bool(re.match(f"[{_HAN}]", token))


def _excerpt(text: str, limit: int = 30) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
