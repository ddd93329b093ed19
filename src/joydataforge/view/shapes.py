"""What kind of record this is, and where its main texts are: read from the record's shape, never its source.

The viewer shows records of every method and any JSONL file, so it recognises a record by the fields
the methods write (see each method's module docstring): DPO pairs (``chosen``/``rejected``), DPO scores
(``response_candidates`` + ``candidate_sources``), votes (a ``vote`` summary with ``outcome``), Evol-Instruct
(``wizard_llm_querys``/``wizard_root`` nested, ``evol`` flat), rewrites (``parent_id`` + ``rewrite_type``),
Magpie (``magpie``), dedup tags (``cluster_id``/``duplicate_of``), critique (``critique_rounds``), joint
drafts (``drafts``), dialogues (``history``/``messages``). A record can be several kinds at once (a voted
rewrite); the kinds are a filter of the viewer and pick the record page's panels.
"""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]

KINDS = (
    "failure",
    "dpo_pair",
    "dpo_scores",
    "vote",
    "cascade",
    "evol",
    "rewrite",
    "magpie",
    "dedup",
    "duplicate",
    "critique",
    "joint",
    "dialogue",
)

# Where a record's prompt and answer usually are, in order of preference.
INPUT_FIELDS = ("input", "instruction", "query", "question", "prompt", "topic", "text")
OUTPUT_FIELDS = ("target", "output", "response", "answer", "chosen", "completion")


def vote_summary(record: Record) -> tuple[str, dict[str, Any]] | None:
    """``(field, summary)`` of the vote's aggregate (``vote``: the vote step's default field)."""
    value = record.get("vote")
    if isinstance(value, dict) and "outcome" in value:
        return "vote", value
    return None


def ballots(record: Record) -> tuple[str, dict[str, dict[str, Any]]] | None:
    """``(field, per-voter answers)`` (``votes``: the vote step's default field)."""
    value = record.get("votes")
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return "votes", value
    return None


def is_failure(record: Record) -> bool:
    """A line of ``failures.jsonl``: the executor writes the step, the error and the input record."""
    return "error" in record and "step" in record and "record" in record


def kinds_of(record: Record, *, failed: bool = False) -> list[str]:
    """Every kind the record's shape shows, in :data:`KINDS` order (cheap: it runs for every record)."""
    if failed or is_failure(record):
        inner = record.get("record")
        return ["failure", *kinds_of(inner)] if isinstance(inner, dict) else ["failure"]
    get = record.get
    found = []
    if "chosen" in record and "rejected" in record:
        found.append("dpo_pair")
    if "candidate_sources" in record or ("response_candidates" in record and "candidate_judgements" in record):
        found.append("dpo_scores")
    if type(get("vote")) is dict or type(get("votes")) is dict:
        found.append("vote")
    if type(get("cascade")) is dict:
        found.append("cascade")
    if "wizard_llm_querys" in record or "wizard_root" in record or type(get("evol")) is dict:
        found.append("evol")
    if "parent_id" in record and "rewrite_type" in record:
        found.append("rewrite")
    if type(get("magpie")) is dict:
        found.append("magpie")
    if "cluster_id" in record or "duplicate_of" in record:
        found.append("dedup")
        if get("duplicate_of") is not None:
            found.append("duplicate")
    if type(get("critique_rounds")) is list:
        found.append("critique")
    if type(get("drafts")) is list or type(get("joint")) is dict:
        found.append("joint")
    if get("history") or type(get("messages")) is list:
        found.append("dialogue")
    return found


def as_text(value: Any) -> str | None:
    """A field as display text: strings as they are, chat messages as their last content, else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    return None


def main_input(record: Record) -> str:
    """The record's prompt as one line of the records table (a failure shows its input record's)."""
    if is_failure(record) and isinstance(record.get("record"), dict):
        return main_input(record["record"])
    for name in INPUT_FIELDS:
        text = as_text(record.get(name))
        if text and text.strip():
            return text
    return ""


def main_output(record: Record) -> str:
    """The record's answer (a failure: its error message)."""
    if is_failure(record):
        return str(record.get("error") or "")
    for name in OUTPUT_FIELDS:
        text = as_text(record.get(name))
        if text and text.strip():
            return text
    return ""


def source_id(record: Record) -> str | None:
    """The input record an output descends from (``_meta.source_id``; a failure line's ``source_id``)."""
    meta = record.get("_meta")
    if isinstance(meta, dict) and meta.get("source_id"):
        return str(meta["source_id"])
    value = record.get("source_id")
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
