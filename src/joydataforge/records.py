"""Records: stable ids and one normal form for dialogue history.

A record is a plain dict. The query lives in ``input`` and earlier turns in ``history``; the seed data
stores history in four shapes, and every step wants one, so :func:`normalize_history` converts.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Message = dict[str, str]

_ROLE_PREFIX = re.compile(
    r"^\s*(用户|助手|user|assistant|User|Assistant|USER|ASSISTANT|human|Human|gpt|系统|system)\s*[:：]\s*"
)
_ROLE_NAMES = {
    "用户": "user",
    "user": "user",
    "human": "user",
    "助手": "assistant",
    "assistant": "assistant",
    "gpt": "assistant",
    "系统": "system",
    "system": "system",
}


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal content gives equal bytes, hence equal hashes."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(value: Any, length: int = 16) -> str:
    return hashlib.blake2b(canonical_json(value).encode("utf-8"), digest_size=length).hexdigest()


def record_id(record: dict[str, Any], id_field: str = "id") -> str:
    """The record's own id when it has a usable one, else a hash of its content.

    Seed files contain placeholder ids (``"xxxxxx"`` on every line), so the caller de-duplicates ids
    across a file; see :class:`IdAssigner`.
    """
    own = record.get(id_field)
    if isinstance(own, (str, int)) and not isinstance(own, bool) and str(own).strip():
        return str(own)
    body = {k: v for k, v in record.items() if not k.startswith("_")}
    return content_hash(body)


class IdAssigner:
    """Gives each record of one input a unique, stable id.

    The same id seen twice (a placeholder, a copy-pasted line) gets ``#2``, ``#3``... in input order,
    which is stable across runs because input order is.
    """

    def __init__(self, id_field: str = "id"):
        self.id_field = id_field
        self._seen: dict[str, int] = {}

    def __call__(self, record: dict[str, Any]) -> str:
        base = record_id(record, self.id_field)
        count = self._seen.get(base, 0) + 1
        self._seen[base] = count
        return base if count == 1 else f"{base}#{count}"


def _split_role(line: str) -> tuple[str | None, str]:
    match = _ROLE_PREFIX.match(line)
    if not match:
        return None, line.strip()
    return _ROLE_NAMES.get(match.group(1).lower(), _ROLE_NAMES.get(match.group(1), "user")), line[match.end() :].strip()


def normalize_history(history: Any) -> list[Message]:
    """Return history as ``[{role, content}, ...]`` whatever shape it came in.

    Accepted: a list of ``[user, assistant]`` pairs, a list of ``{role, content}`` messages, a list of the
    original's rounds ``{round, user_query, response}`` (``agent_intent/examples.json``; taken in list
    order, an empty ``response`` adds no assistant message, as in a pair), or the seed's newline-joined
    ``用户: ...`` / ``助手: ...`` string (consecutive lines of one speaker stay separate messages, as they
    were in the dialogue). ``None`` and ``""`` mean no history.
    """
    if history is None or history == "" or history == []:
        return []
    if isinstance(history, str):
        messages: list[Message] = []
        last_role = "user"
        for raw in history.splitlines():
            if not raw.strip():
                continue
            role, content = _split_role(raw)
            if role is None:
                role = last_role  # a continuation line without a prefix belongs to the last speaker
            messages.append({"role": role, "content": content})
            last_role = role
        return messages
    if not isinstance(history, list):
        raise TypeError(f"history must be a list or a string, not {type(history).__name__}")
    messages = []
    for index, item in enumerate(history):
        if isinstance(item, dict) and "user_query" in item:
            messages.extend(_round_messages(index, item))
        elif isinstance(item, dict):
            role = item.get("role")
            content = item.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                raise TypeError(
                    f"history[{index}] must have string 'role' and 'content' "
                    "(or 'user_query' and 'response', the original's rounds)"
                )
            messages.append({"role": _ROLE_NAMES.get(role.lower(), role), "content": content})
        elif isinstance(item, (list, tuple)):
            if len(item) not in (1, 2) or not all(isinstance(x, str) for x in item):
                raise TypeError(f"history[{index}] must be a [user, assistant] pair of strings")
            messages.append({"role": "user", "content": item[0]})
            if len(item) == 2 and item[1] != "":
                messages.append({"role": "assistant", "content": item[1]})
        else:
            raise TypeError(f"history[{index}] must be a pair or a message, not {type(item).__name__}")
    return messages


def _round_messages(index: int, item: dict[str, Any]) -> list[Message]:
    """One round of the original's ``[{round, user_query, response}]`` history as messages.

    ``round`` is the original's 1-based counter; it is not used to reorder (the list order is the
    dialogue's), but a non-integer one means the item is something else, so it is refused.
    """
    query, response = item.get("user_query"), item.get("response")
    round_number = item.get("round")
    if not isinstance(query, str) or not (response is None or isinstance(response, str)):
        raise TypeError(f"history[{index}] must have a string 'user_query' and a string 'response'")
    if round_number is not None and (isinstance(round_number, bool) or not isinstance(round_number, int)):
        raise TypeError(f"history[{index}] 'round' must be an integer, not {_kind(round_number)}")
    messages = [{"role": "user", "content": query}]
    if response:
        messages.append({"role": "assistant", "content": response})
    return messages


def history_problem(history: Any) -> str | None:
    """Why ``history`` is none of the accepted shapes, or None when it is one.

    Stricter than :func:`normalize_history` on purpose, for checking input before a model is paid: a
    string must be the seed's dialogue text, whose first line starts with a speaker (``用户:``, ``user:``,
    ...); any other string (``"not a list"``) would become a made-up user turn. Absent, ``null``, ``""``
    and ``[]`` mean no earlier turns.
    """
    if history is None or history == [] or (isinstance(history, str) and not history.strip()):
        return None
    if isinstance(history, str):
        first = next(line for line in history.splitlines() if line.strip())
        if _ROLE_PREFIX.match(first):
            return None
        return (
            "text whose first line names no speaker ('user:', '用户:', ...); write history as a list of "
            "[user, assistant] pairs, {role, content} messages or {round, user_query, response} rounds"
        )
    if isinstance(history, list):
        try:
            normalize_history(history)
        except TypeError as exc:
            return str(exc)
        return None
    return (
        f"{_kind(history)}, not a list of [user, assistant] pairs, {{role, content}} messages "
        "or {round, user_query, response} rounds"
    )


def field_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the record field ``name`` that a step reads, or None when it can.

    ``history``: see :func:`history_problem`. Any other field is text: a non-blank string. A number is
    accepted too and renders as its digits, as it always did (JSON seed files hold numeric answers). A
    non-empty dialogue (a list of pairs or messages) is accepted for fields other than ``input``, which
    is where dialogue steps read whole dialogues from. ``null``, booleans, objects, other lists and blank
    strings are refused: they used to reach the prompt as ``"None"``, ``"{}"``, ``"[]"`` or nothing.
    """
    if name == "history":
        return history_problem(value)
    if isinstance(value, str):
        return None if value.strip() else ("empty text" if not value else "blank text")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if math.isfinite(value) else f"{value}, not text"
    if isinstance(value, list) and value and name != "input" and _is_dialogue(value):
        return None
    return f"{_kind(value)}, not text"


def _is_dialogue(value: list[Any]) -> bool:
    try:
        return bool(normalize_history(value))
    except TypeError:
        return False


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (int, float)):
        return "a number"
    return f"a {type(value).__name__}"


def history_as_text(messages: Iterable[Message], user: str = "user", assistant: str = "assistant") -> str:
    """Render messages one per line, for prompts that show a dialogue as text."""
    names = {"user": user, "assistant": assistant, "system": "system"}
    return "\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages)


TextFields = str | Sequence[str] | Callable[[dict[str, Any]], str]


def _flatten(name: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        if name == "history":  # the seed's "用户: ... / 助手: ..." dialogue: drop the role prefixes
            return "\n".join(m["content"] for m in normalize_history(value))
        return value
    if isinstance(value, list):
        try:
            return "\n".join(m["content"] for m in normalize_history(value))
        except TypeError:
            return "\n".join(_flatten(name, item) for item in value)
    if isinstance(value, (int, float, bool)):
        return str(value)
    return canonical_json(value)


def record_text(record: dict[str, Any], fields: "TextFields" = "input") -> str:
    """The text of a record that dedup, embeddings and reports measure: one definition, so they agree.

    ``fields`` is a field name, a list of names (their texts joined by newlines, e.g. ``["input",
    "history"]``) or a function of the record. ``history`` in any of its shapes (``[user, assistant]``
    pairs, ``{role, content}`` messages, ``{round, user_query, response}`` rounds, a newline-joined
    ``用户:/助手:`` string) contributes the
    message contents only, so the same dialogue in two shapes gives the same text. Missing fields count
    as empty.
    """
    if callable(fields):
        return fields(record)
    names = [fields] if isinstance(fields, str) else list(fields)
    parts = [_flatten(name, record.get(name)) for name in names]
    return "\n".join(p for p in parts if p)


THINK_TAGS = ("<think>", "</think>")
"""The tags thinking models write a trace in (Qwen3, DeepSeek-R1) and LLaMA-Factory's reasoning templates read."""


def with_reasoning(text: str, trace: str | None, tags: Sequence[str] = THINK_TAGS) -> str:
    """``text`` with its reasoning trace before it, ``<think>\ntrace\n</think>\n\ntext``; the text alone when
    there is no trace. How a judge that sees reasoning reads an answer, and how ``joyforge export --reasoning``
    writes one: one shape for both."""
    if not isinstance(trace, str) or not trace.strip():
        return text
    return f"{tags[0]}\n{trace.strip()}\n{tags[1]}\n\n{text}"
