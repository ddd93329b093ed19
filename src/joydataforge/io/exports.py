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

How a record becomes a dialogue: ``history`` in any of its three shapes (pairs, messages, the seed's
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
from ..records import Message, normalize_history
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


DEFAULT_FIELDS = ExportFields()
_SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}


def to_sharegpt(record: dict[str, Any], fields: ExportFields = DEFAULT_FIELDS) -> dict[str, Any] | None:
    output = _output(record, fields.output)
    if output is None:
        return None
    system, turns = _dialogue(record, fields, user_first=True)
    conversation = [{"from": "system", "value": system}] if system else []
    conversation += [{"from": _SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in turns]
    conversation.append({"from": "gpt", "value": output})
    return _kept(record, fields) | {"conversations": conversation}


def to_openai(record: dict[str, Any], fields: ExportFields = DEFAULT_FIELDS) -> dict[str, Any] | None:
    output = _output(record, fields.output)
    if output is None:
        return None
    system, turns = _dialogue(record, fields, user_first=False)
    messages = ([{"role": "system", "content": system}] if system else []) + turns
    messages.append({"role": "assistant", "content": output})
    return _kept(record, fields) | {"messages": messages}


def to_alpaca(record: dict[str, Any], fields: ExportFields = DEFAULT_FIELDS) -> dict[str, Any] | None:
    output = _output(record, fields.output)
    if output is None:
        return None
    system, turns = _dialogue(record, fields, user_first=True)
    *earlier, last = turns
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
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


Exporter = Callable[[dict[str, Any], ExportFields], "dict[str, Any] | None"]

FORMATS: dict[str, Exporter] = {
    "sharegpt": to_sharegpt,
    "openai": to_openai,
    "alpaca": to_alpaca,
    "trl": to_trl_preference,
    "trl-sft": to_openai,
}


@dataclass
class ExportReport:
    """What :func:`export_file` did. ``errors`` holds the first 100 errors; ``failed`` counts all."""

    read: int = 0
    written: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[InputError] = field(default_factory=list)


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
    on_error: Literal["raise", "skip"] = "raise",
) -> ExportReport:
    """Export every record of ``src_jsonl`` (any format :func:`iter_records` reads) to ``dst`` in ``fmt``.

    ``dst`` ending in ``.jsonl`` gets JSON Lines, ``.json`` a JSON array, ``.parquet`` Parquet. The
    file is written under a temporary name and moved into place, so a failed export leaves no
    half-file. ``on_error="raise"`` stops at the first bad record with its file, line and field;
    ``"skip"`` leaves it out and reports it.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    destination = Path(dst)
    suffix = destination.suffix.lower()
    if suffix not in (".jsonl", ".json", ".parquet"):
        raise ValueError(f"export to .jsonl, .json or .parquet, not {suffix or destination.name!r}")
    exporter = FORMATS[fmt]
    fields = ExportFields(
        input=input_field,
        output=output_field,
        history=history_field,
        system=system_field,
        system_prompt=system_prompt,
        chosen=chosen_field,
        rejected=rejected_field,
        keep=tuple(keep_fields),
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
                    exported = exporter(item.record, fields)
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
    "export_file",
    "to_alpaca",
    "to_openai",
    "to_sharegpt",
    "to_trl_preference",
]
