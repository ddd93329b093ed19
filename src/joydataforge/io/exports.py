"""Turn synthesised records into the files training frameworks read.

Formats (each also a function ``record -> dict | None`` for use in your own loop):

- ``sharegpt`` -- ``{"conversations": [{"from": "system"|"human"|"gpt", "value": ...}]}``
  (LLaMA-Factory, FastChat, Axolotl).
- ``openai`` -- ``{"messages": [{"role", "content"}]}``, the OpenAI fine-tuning format.
- ``alpaca`` -- ``{"instruction", "input", "output", "system"?, "history"?}`` with history as
  ``[[instruction, response], ...]`` (LLaMA-Factory's alpaca form).
- ``trl`` -- TRL preference data (DPO, ORPO, KTO pairs), conversational form:
  ``{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}`` from the
  ``chosen``/``rejected`` fields.
- ``trl-sft`` -- TRL's conversational SFT form, ``{"messages": [...]}`` (same as ``openai``).
- ``openai-tools`` -- a tool-use trajectory (``tool_dialogue``'s ``messages`` and ``tools``) as OpenAI
  messages: ``{"messages": [system?, user, assistant with tool_calls, tool with tool_call_id, ...,
  assistant], "tools": [...]}``; tool-call arguments are JSON text, as OpenAI sends them.
- ``sharegpt-tools`` -- the same in ShareGPT's function-calling shape as LLaMA-Factory reads it:
  ``conversations`` with ``human``, ``function_call`` (``{"name", "arguments"}``, a list for parallel
  calls), ``observation`` and ``gpt`` turns, and ``tools`` as a JSON string of the function objects.

Reasoning traces (docs/reasoning.md): the answer alone by default; with ``reasoning=True`` (``joyforge export
--reasoning``) the trace kept beside it (``<output_field>_reasoning``) goes with it, as LLaMA-Factory reads
thinking data (``<think>\ntrace\n</think>\n\nanswer`` in the assistant turn: sharegpt, openai, alpaca) and as
TRL's chat templates of thinking models read it (``reasoning_content`` on the assistant message: trl-sft, trl).

How a record becomes a dialogue: ``history`` in any of its four shapes (pairs, messages, rounds, the seed's
``用户: ...`` text; see :func:`~joydataforge.records.normalize_history`), then the ``input`` as the
last user turn, then the output as the assistant's answer. Consecutive turns of one speaker are
joined with a newline (chat templates require alternation; the seed's text dialogues often have two
user lines in a row), and a dialogue that opens with the assistant gets an empty user turn before it
in the formats that require user-first (ShareGPT, Alpaca). The system prompt is the record's
``system`` field, else the history's system messages, else ``system_prompt`` if given.

A record without the output field, or without its input, is an error naming the field (and, from
:func:`export_file`, the file and line). A record whose output is empty -- not synthesised yet, like
the seed's ``"target": ""`` -- is skipped (the function returns ``None``) and counted, because an
empty answer is not a training example.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import InputError
from ..records import THINK_TAGS, Message, normalize_history, with_reasoning
from .readers import iter_records
from .writers import dumps_line, jsonl_to_parquet


@dataclass(frozen=True)
class ExportFields:
    """Which record fields hold what. Defaults match the records the pipeline writes."""

    input: str = "input"
    output: str = "target"
    history: str = "history"
    system: str = "system"
    system_prompt: str | None = None  # used when a record brings no system prompt of its own
    chosen: str = "chosen"
    rejected: str = "rejected"
    keep: tuple[str, ...] = ()  # fields copied as they are (e.g. "id", for tracing back to the input)
    messages: str = "messages"  # a tool-use trajectory in OpenAI messages (openai-tools, sharegpt-tools)
    tools: str = "tools"  # the trajectory's tool schemas
    reasoning: bool = False  # write each answer's reasoning trace (``<field>_reasoning``) with it
    think_tags: tuple[str, str] = THINK_TAGS  # how a trace is written inside the content


def _trace(record: dict[str, Any], name: str, fields: ExportFields) -> str | None:
    """The reasoning trace kept beside the answer in ``name`` (``<name>_reasoning``), when traces are exported."""
    if not fields.reasoning:
        return None
    trace = record.get(f"{name}_reasoning")
    return trace.strip() if isinstance(trace, str) and trace.strip() else None


def _with_think(answer: str, trace: str | None, fields: ExportFields) -> str:
    """The answer with its trace before it in think tags, as LLaMA-Factory's reasoning templates (``qwen3``,
    ``deepseekr1``) read an assistant turn: ``<think>\ntrace\n</think>\n\nanswer``."""
    return with_reasoning(answer, trace, fields.think_tags)


def _assistant(answer: str, trace: str | None) -> dict[str, Any]:
    """An assistant message for TRL: the trace in ``reasoning_content``, the key the chat templates of thinking
    models (Qwen3, DeepSeek-R1) render into ``<think>`` blocks when TRL applies them."""
    message: dict[str, Any] = {"role": "assistant", "content": answer}
    if trace is not None:
        message["reasoning_content"] = trace
    return message


DEFAULT_FIELDS = ExportFields()
_SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}


def to_sharegpt(record: dict[str, Any], fields: ExportFields = DEFAULT_FIELDS) -> dict[str, Any] | None:
    output = _output(record, fields.output)
    if output is None:
        return None
    system, turns = _dialogue(record, fields, user_first=True)
    conversation = [{"from": "system", "value": system}] if system else []
    conversation += [{"from": _SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in turns]
    conversation.append({"from": "gpt", "value": _with_think(output, _trace(record, fields.output, fields), fields)})
    return _kept(record, fields) | {"conversations": conversation}


def to_openai(record: dict[str, Any], fields: ExportFields = DEFAULT_FIELDS) -> dict[str, Any] | None:
    output = _output(record, fields.output)
    if output is None:
        return None
    system, turns = _dialogue(record, fields, user_first=False)
    messages = ([{"role": "system", "content": system}] if system else []) + turns
    messages.append(
        {"role": "assistant", "content": _with_think(output, _trace(record, fields.output, fields), fields)}
    )
    return _kept(record, fields) | {"messages": messages}


def to_trl_sft(record: dict[str, Any], fields: ExportFields = DEFAULT_FIELDS) -> dict[str, Any] | None:
    """TRL's conversational SFT form; a trace goes in the assistant message's ``reasoning_content``."""
    output = _output(record, fields.output)
    if output is None:
        return None
    system, turns = _dialogue(record, fields, user_first=False)
    messages = ([{"role": "system", "content": system}] if system else []) + turns
    messages.append(_assistant(output, _trace(record, fields.output, fields)))
    return _kept(record, fields) | {"messages": messages}


def to_alpaca(record: dict[str, Any], fields: ExportFields = DEFAULT_FIELDS) -> dict[str, Any] | None:
    output = _output(record, fields.output)
    if output is None:
        return None
    system, turns = _dialogue(record, fields, user_first=True)
    *earlier, last = turns
    output = _with_think(output, _trace(record, fields.output, fields), fields)
    result: dict[str, Any] = {"instruction": last["content"], "input": "", "output": output}
    if system:
        result["system"] = system
    if earlier:
        result["history"] = [[earlier[i]["content"], earlier[i + 1]["content"]] for i in range(0, len(earlier), 2)]
    return _kept(record, fields) | result


def to_trl_preference(record: dict[str, Any], fields: ExportFields = DEFAULT_FIELDS) -> dict[str, Any] | None:
    chosen = _output(record, fields.chosen)
    rejected = _output(record, fields.rejected)
    if chosen is None or rejected is None:
        return None
    system, turns = _dialogue(record, fields, user_first=False)
    prompt = ([{"role": "system", "content": system}] if system else []) + turns
    return _kept(record, fields) | {
        "prompt": prompt,
        "chosen": [_assistant(chosen, _trace(record, fields.chosen, fields))],
        "rejected": [_assistant(rejected, _trace(record, fields.rejected, fields))],
    }


# --- tool-use trajectories -------------------------------------------------------------------------


def to_openai_tools(record: dict[str, Any], fields: ExportFields = DEFAULT_FIELDS) -> dict[str, Any] | None:
    """A trajectory as OpenAI messages with its tools; None when it has no final answer (not a training example)."""
    messages = _trajectory(record, fields)
    if messages is None:
        return None
    out: dict[str, Any] = {"messages": messages}
    tools = _tools(record, fields)
    if tools:
        out["tools"] = tools
    return _kept(record, fields) | out


def to_sharegpt_tools(record: dict[str, Any], fields: ExportFields = DEFAULT_FIELDS) -> dict[str, Any] | None:
    """A trajectory in ShareGPT's function-calling shape, as LLaMA-Factory's sharegpt converter reads it.

    Turns alternate as LLaMA-Factory requires: ``human`` or ``observation``, then ``gpt`` or ``function_call``.
    A round of several tool results is one ``observation``, joined the way LLaMA-Factory's own OpenAI converter
    joins them (``\n</tool_response>\n<tool_response>\n``); words an assistant wrote beside its tool calls have
    no place in a ``function_call`` turn and are left out. With traces exported, the final answer's trace goes
    before it in think tags (a ``function_call`` turn is JSON and has no room for one).
    """
    messages = _trajectory(record, fields)
    if messages is None:
        return None
    conversation: list[dict[str, str]] = []
    results: list[str] = []
    for message in messages:
        role = message["role"]
        if role == "tool":
            results.append(message.get("content") or "")
            continue
        if results:
            conversation.append({"from": "observation", "value": "\n</tool_response>\n<tool_response>\n".join(results)})
            results = []
        if role == "assistant" and message.get("tool_calls"):
            calls = [
                {"name": c["function"]["name"], "arguments": _arguments(c["function"].get("arguments"))}
                for c in message["tool_calls"]
            ]
            value = calls[0] if len(calls) == 1 else calls
            conversation.append({"from": "function_call", "value": json.dumps(value, ensure_ascii=False)})
        else:
            value = message.get("content") or ""
            if role == "assistant":
                value = _with_think(value, message.get("reasoning_content"), fields)
            conversation.append({"from": _SHAREGPT_ROLES[role], "value": value})
    out: dict[str, Any] = {"conversations": conversation}
    tools = _tools(record, fields)
    if tools:
        out["tools"] = json.dumps([t.get("function", t) for t in tools], ensure_ascii=False)
    return _kept(record, fields) | out


def _trajectory(record: dict[str, Any], fields: ExportFields) -> list[dict[str, Any]] | None:
    """The record's trajectory, checked: OpenAI roles, calls with names, results that name their call.

    None when it does not end with a final answer (a trajectory ``tool_dialogue`` kept unfinished).
    """
    messages = record.get(fields.messages)
    if not isinstance(messages, list) or not messages:
        raise InputError("needs the trajectory as a non-empty list of messages", field=fields.messages)
    known: set[str] = set()
    out: list[dict[str, Any]] = []
    for k, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant", "tool"):
            raise InputError(f"message {k} has no OpenAI role (system, user, assistant, tool)", field=fields.messages)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in known:
                raise InputError(f"message {k}: a tool result for no earlier call ({call_id!r})", field=fields.messages)
            out.append({"role": "tool", "tool_call_id": call_id, "content": _content(message)})
        elif role == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise InputError(f"message {k}: a tool call without a function name", field=fields.messages)
                known.add(call.get("id"))
                arguments = function.get("arguments")
                text = arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)
                calls.append(
                    {
                        "id": call.get("id"),
                        "type": "function",
                        "function": {"name": function["name"], "arguments": text},
                    }
                )
            out.append({"role": "assistant", "content": message.get("content") or None, "tool_calls": calls})
        else:
            out.append({"role": role, "content": _content(message)})
        trace = message.get("reasoning_content") if role == "assistant" and fields.reasoning else None
        if isinstance(trace, str) and trace.strip():
            out[-1]["reasoning_content"] = trace.strip()
    last = out[-1]
    if last["role"] != "assistant" or last.get("tool_calls") or not (last.get("content") or "").strip():
        return None
    return out


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False) if content else ""


def _arguments(arguments: Any) -> Any:
    """Arguments as an object (LLaMA-Factory's function_call holds objects); text that does not parse stays text."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments if arguments is not None else {}


def _tools(record: dict[str, Any], fields: ExportFields) -> list[dict[str, Any]]:
    tools = record.get(fields.tools)
    if tools is None:
        return []
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise InputError("must be a list of tool schemas", field=fields.tools)
    return tools


Exporter = Callable[[dict[str, Any], ExportFields], "dict[str, Any] | None"]

FORMATS: dict[str, Exporter] = {
    "sharegpt": to_sharegpt,
    "openai": to_openai,
    "alpaca": to_alpaca,
    "trl": to_trl_preference,
    "trl-sft": to_trl_sft,
    "openai-tools": to_openai_tools,
    "sharegpt-tools": to_sharegpt_tools,
}


@dataclass
class ExportReport:
    """What :func:`export_file` did. ``errors`` holds the first 100 errors; ``failed`` counts all."""

    read: int = 0
    written: int = 0
    skipped: int = 0
    failed: int = 0
    dropped: int = 0  # left out by ``transform`` (a review's rejections)
    errors: list[InputError] = field(default_factory=list)


#: The format that writes each record as it is (after ``transform``): a reviewed copy of the data itself.
RECORDS = "records"


def export_file(
    src_jsonl: str | Path,
    dst: str | Path,
    fmt: str,
    *,
    input_field: str = "input",
    output_field: str = "target",
    history_field: str = "history",
    system_field: str = "system",
    system_prompt: str | None = None,
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
    keep_fields: tuple[str, ...] = (),
    messages_field: str = "messages",
    tools_field: str = "tools",
    reasoning: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
    transform: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
) -> ExportReport:
    """Export every record of ``src_jsonl`` (any format :func:`iter_records` reads) to ``dst`` in ``fmt``.

    ``dst`` ending in ``.jsonl`` gets JSON Lines, ``.json`` a JSON array, ``.parquet`` Parquet. The
    file is written under a temporary name and moved into place, so a failed export leaves no
    half-file. ``on_error="raise"`` stops at the first bad record with its file, line and field;
    ``"skip"`` leaves it out and reports it. ``transform`` sees each record first, in file order, and
    returns the record to export or None to leave it out (``joyforge export --reviewed`` applies the human
    review this way: :class:`~joydataforge.view.review.ReviewApplier`). ``fmt="records"`` writes the
    records themselves. ``reasoning=True`` writes each answer's reasoning trace (``<output_field>_reasoning``,
    ``chosen_reasoning``, ``rejected_reasoning``) with it: in ``<think>`` tags before the answer (sharegpt,
    openai, alpaca) or as the assistant message's ``reasoning_content`` (trl-sft, trl).
    """
    if fmt not in FORMATS and fmt != RECORDS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    destination = Path(dst)
    suffix = destination.suffix.lower()
    if suffix not in (".jsonl", ".json", ".parquet"):
        raise ValueError(f"export to .jsonl, .json or .parquet, not {suffix or destination.name!r}")
    exporter = _as_is if fmt == RECORDS else FORMATS[fmt]
    fields = ExportFields(
        input=input_field,
        output=output_field,
        history=history_field,
        system=system_field,
        system_prompt=system_prompt,
        chosen=chosen_field,
        rejected=rejected_field,
        keep=tuple(keep_fields),
        messages=messages_field,
        tools=tools_field,
        reasoning=reasoning,
    )
    report = ExportReport()
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(destination.name + ".tmp")
    lines_path = temporary if suffix != ".parquet" else destination.with_name(destination.name + ".tmp.jsonl")
    try:
        with open(lines_path, "wb") as handle:
            if suffix == ".json":
                handle.write(b"[\n")
            for item in iter_records(src_jsonl):
                report.read += 1
                try:
                    if item.error is not None:
                        raise item.error
                    record = item.record if transform is None else transform(item.record)
                    if record is None:
                        report.dropped += 1
                        continue
                    exported = exporter(record, fields)
                except InputError as error:
                    if error.location is None:  # the exporters know the field, the reader the line
                        error = InputError(error.reason, item.location, error.field)
                    if on_error == "raise":
                        raise error from None
                    report.failed += 1
                    if len(report.errors) < 100:
                        report.errors.append(error)
                    continue
                if exported is None:
                    report.skipped += 1
                    continue
                if suffix == ".json" and report.written:
                    handle.write(b",\n")
                line = dumps_line(exported)
                handle.write(line[:-1] if suffix == ".json" else line)
                report.written += 1
            if suffix == ".json":
                handle.write(b"\n]\n")
        if suffix == ".parquet":
            jsonl_to_parquet(lines_path, temporary)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
        lines_path.unlink(missing_ok=True)
    return report


def _as_is(record: dict[str, Any], fields: ExportFields) -> dict[str, Any]:
    return record


# --- the dialogue of a record ----------------------------------------------------------------------


def _dialogue(record: dict[str, Any], fields: ExportFields, *, user_first: bool) -> tuple[str | None, list[Message]]:
    """The system prompt and the turns up to and including the user's last one (the input)."""
    try:
        history = normalize_history(record.get(fields.history))
    except TypeError as error:
        raise InputError(str(error), field=fields.history) from None
    prompt = _text(record, fields.input)
    if prompt is None:
        raise InputError("the record has no input to export", field=fields.input)
    system_parts = []
    own_system = record.get(fields.system)
    if isinstance(own_system, str) and own_system.strip():
        system_parts.append(own_system)
    system_parts += [m["content"] for m in history if m["role"] == "system"]
    system = "\n".join(system_parts) or fields.system_prompt

    turns: list[Message] = []
    for message in [m for m in history if m["role"] != "system"] + [{"role": "user", "content": prompt}]:
        role = "assistant" if message["role"] == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": turns[-1]["content"] + "\n" + message["content"]}
        else:
            turns.append({"role": role, "content": message["content"]})
    if user_first and turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": ""})
    return system, turns


def _output(record: dict[str, Any], name: str) -> str | None:
    """The answer in field ``name``: missing is an error, empty means "nothing to export" (None)."""
    if name not in record:
        raise InputError("the record has no such field to export as the answer", field=name)
    return _text(record, name)


def _text(record: dict[str, Any], name: str) -> str | None:
    """A field as text: strings as they are, structured values (a ``{label, reason}`` reply) as JSON."""
    value = record.get(name)
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if text.strip() else None


def _kept(record: dict[str, Any], fields: ExportFields) -> dict[str, Any]:
    return {name: record[name] for name in fields.keep if name in record}


__all__ = [
    "DEFAULT_FIELDS",
    "ExportFields",
    "ExportReport",
    "FORMATS",
    "RECORDS",
    "export_file",
    "to_alpaca",
    "to_openai",
    "to_openai_tools",
    "to_sharegpt",
    "to_sharegpt_tools",
    "to_trl_preference",
]
