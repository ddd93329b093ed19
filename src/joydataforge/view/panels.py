"""The record page's panels: each kind of record (see :mod:`.shapes`) explained from the fields it carries.

Every function here turns a record (and, through ``lookup``, the records it points at) into plain JSON
that the page's script draws without knowing any method: a DPO pair side by side with each judge's
scores and rationales (pairwise judges in both orders, said as "chosen shown first"), a vote's ballots
and outcome, an Evol-Instruct tree (nested: the rounds inside the record; flat: the records of one root,
found by ``evol.root_id``), a rewrite's parent and siblings with what changed, a Magpie sample from the
raw completion to the tagged conversation, a dedup cluster with each member's differences from its
first record, critique rounds, joint drafts, a failure with its raw reply, the conversation, the model
calls. The shapes are those the methods write (their module docstrings); a field that is missing is
simply not shown.

``lookup`` is the index (:class:`~.index.ViewIndex`): ``where(path, value, limit)``, ``by_id(id,
statuses, limit)``, ``input_record(source_id)`` and ``has_inputs``.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from ..evaluate.report import diff_segments
from ..records import normalize_history
from .shapes import Record, as_text, ballots, is_failure, kinds_of, main_input, source_id, vote_summary

MAX_RELATED = 50
MAX_TREE = 500
CLIP = 200
MAGPIE_TAGS = (
    "task_category",
    "other_task_categories",
    "input_quality",
    "input_quality_explanation",
    "difficulty",
    "intent",
    "knowledge",
    "language",
    "turns",
)


class Lookup(Protocol):
    has_inputs: bool

    def where(self, path: str, value: Any, limit: int = 50) -> list[tuple[Any, Record]]: ...

    def by_id(self, record_id: str, statuses: Any = ("kept",), limit: int = 20) -> list[tuple[Any, Record]]: ...

    def input_record(self, source: str | None) -> Record | None: ...


def panels_for(status: str, record: Record | None, lookup: Lookup, *, rid: int | None = None) -> list[dict[str, Any]]:
    """The panels of one row's record, in reading order."""
    if record is None:
        return []
    if status == "dropped":
        return [dropped_panel(record, lookup)]
    panels: list[dict[str, Any]] = []
    if status == "failed" or is_failure(record):
        panels.append(failure_panel(record, lookup))
        inner = record.get("record")
        if isinstance(inner, dict):
            panels.extend(p for p in [dialogue_panel(inner)] if p)
        return panels
    kinds = set(kinds_of(record))
    builders = (
        ("dpo_pair", lambda: dpo_panel(record)),
        ("dpo_scores", lambda: dpo_scores_panel(record)),
        ("vote", lambda: vote_panel(record)),
        ("evol", lambda: evol_panel(record, lookup, rid)),
        ("rewrite", lambda: rewrite_panel(record, lookup, rid)),
        ("magpie", lambda: magpie_panel(record, lookup, rid)),
        ("dedup", lambda: dedup_panel(record, lookup, rid)),
        ("critique", lambda: critique_panel(record)),
        ("joint", lambda: joint_panels(record)),
    )
    for kind, build in builders:
        if kind in kinds:
            made = build()
            panels.extend(made if isinstance(made, list) else [made])
    if "dpo_pair" not in kinds:
        dialogue = dialogue_panel(record)
        if dialogue:
            panels.append(dialogue)
    lineage = source_panel(record, lookup, rid)
    if lineage:
        panels.append(lineage)
    calls = calls_panel(record)
    if calls:
        panels.append(calls)
    return [p for p in panels if p]


# ---------------------------------------------------------------------- shared


def clip(text: Any, limit: int = CLIP) -> str:
    text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def ref(row: Any, record: Record) -> dict[str, Any]:
    """A related record as a link: its row, id, status and the start of its prompt."""
    return {"rid": row.rid, "id": row.id, "status": row.status, "text": clip(main_input(record), 160)}


def _related(lookup: Lookup, path: str, value: Any, rid: int | None) -> list[dict[str, Any]]:
    return [ref(row, record) for row, record in lookup.where(path, value, MAX_RELATED) if row.rid != rid]


def _json_or_text(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return None


# ---------------------------------------------------------------------- failures and drops


def failure_panel(record: Record, lookup: Lookup) -> dict[str, Any]:
    """The step that failed, why, the model's raw reply (parsed when it is JSON) and the input record."""
    raw = record.get("raw")
    return {
        "type": "failure",
        "step": record.get("step"),
        "error_type": record.get("error_type"),
        "error": record.get("error"),
        "location": record.get("location"),
        "raw": raw,
        "raw_json": _json_or_text(raw),
        "input": record.get("record"),
    }


def dropped_panel(entry: Record, lookup: Lookup) -> dict[str, Any]:
    """A record a filter step dropped: the ledger says so; its input record is shown with ``--input``."""
    source = str(entry.get("id") or "")
    return {
        "type": "dropped",
        "id": source,
        "ledger": entry,
        "input": lookup.input_record(source),
        "has_inputs": lookup.has_inputs,
    }


# ---------------------------------------------------------------------- conversations and calls


def dialogue_panel(record: Record) -> dict[str, Any] | None:
    """The conversation: ``messages`` when the record has them (Magpie), else system + history + input +
    answer. A history in a shape :func:`~joydataforge.records.normalize_history` refuses is shown raw."""
    messages = record.get("messages")
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages) and messages:
        turns = [{"role": str(m.get("role", "")), "content": as_text(m.get("content")) or ""} for m in messages]
        return {"type": "dialogue", "messages": turns}
    turns = []
    system = record.get("system")
    if isinstance(system, str) and system.strip():
        turns.append({"role": "system", "content": system})
    try:
        turns.extend(normalize_history(record.get("history")))
    except TypeError:
        turns.append({"role": "history", "content": json.dumps(record.get("history"), ensure_ascii=False)})
    prompt = main_input(record)
    if prompt:
        turns.append({"role": "user", "content": prompt})
    answer = record.get("target")
    if isinstance(answer, str) and answer.strip():
        turns.append({"role": "assistant", "content": answer})
    if not turns:
        return None
    return {"type": "dialogue", "messages": turns}


def calls_panel(record: Record) -> dict[str, Any] | None:
    meta = record.get("_meta")
    calls = meta.get("calls") if isinstance(meta, dict) else None
    if not isinstance(calls, list) or not calls:
        return None
    rows = [c for c in calls if isinstance(c, dict)]
    totals = {
        "calls": len(rows),
        "prompt_tokens": sum(int(c.get("prompt_tokens") or 0) for c in rows),
        "completion_tokens": sum(int(c.get("completion_tokens") or 0) for c in rows),
        "cached": sum(bool(c.get("cached")) for c in rows),
    }
    return {"type": "calls", "calls": rows, "totals": totals}


def source_panel(record: Record, lookup: Lookup, rid: int | None) -> dict[str, Any] | None:
    """Where an output came from: its input record (with ``--input``) and the other outputs of that input."""
    source = source_id(record)
    if not source:
        return None
    siblings = _related(lookup, "source_id", source, rid)
    own_id = record.get("id")
    if not siblings and own_id == source and not lookup.has_inputs:
        return None  # one output per input, same id: nothing to trace
    return {
        "type": "source",
        "source_id": source,
        "input": lookup.input_record(source),
        "has_inputs": lookup.has_inputs,
        "siblings": siblings,
    }


# ---------------------------------------------------------------------- DPO


def dpo_panel(record: Record) -> dict[str, Any]:
    """A preference pair: prompt, chosen and rejected side by side, and each judge's word on both."""
    source_chosen = record.get("source_chosen") if isinstance(record.get("source_chosen"), dict) else {}
    source_rejected = record.get("source_rejected") if isinstance(record.get("source_rejected"), dict) else {}
    info = record.get("dpo") if isinstance(record.get("dpo"), dict) else {}
    rationale_chosen = record.get("rationale_chosen") if isinstance(record.get("rationale_chosen"), list) else []
    rationale_rejected = record.get("rationale_rejected") if isinstance(record.get("rationale_rejected"), list) else []
    scorer = info.get("scorer") or _guess_scorer(rationale_chosen + rationale_rejected)
    prompt = record.get("prompt")
    panel: dict[str, Any] = {
        "type": "dpo",
        "prompt": prompt if isinstance(prompt, list) else ([{"role": "user", "content": prompt}] if prompt else []),
        "scorer": scorer,
        "rule": info.get("rule"),
        "judges": info.get("judges") or [],
        "candidates": info.get("candidates"),
        "sides": {
            "chosen": _side(record, "chosen", source_chosen),
            "rejected": _side(record, "rejected", source_rejected),
        },
    }
    if scorer == "pairwise":
        chosen_index = source_chosen.get("index")
        panel["pairwise"] = [
            _pairwise_judge(entry, chosen_index) for entry in rationale_chosen if isinstance(entry, dict)
        ]
    else:
        panel["pointwise"] = _pointwise_judges(rationale_chosen, rationale_rejected)
    return panel


def _guess_scorer(entries: list[Any]) -> str:
    for entry in entries:
        if isinstance(entry, dict) and ("ij" in entry or "ji" in entry):
            return "pairwise"
        if isinstance(entry, dict) and "aspects" in entry:
            return "pointwise"
    return "reward" if entries else "pointwise"


def _side(record: Record, side: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "text": as_text(record.get(side)) or "",
        "score": record.get(f"score_{side}"),
        "length": record.get(f"length_{side}"),
        "source": source,
    }


def _pointwise_judges(chosen: list[Any], rejected: list[Any]) -> list[dict[str, Any]]:
    """Per judge, its scores and per-aspect rationales for the chosen and the rejected answer."""
    judges: dict[str, dict[str, Any]] = {}
    for side, entries in (("chosen", chosen), ("rejected", rejected)):
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            name = str(entry.get("judge") or entry.get("model") or "judge")
            aspects = entry.get("aspects") if isinstance(entry.get("aspects"), dict) else {}
            judges.setdefault(name, {"judge": name})[side] = {
                "score": entry.get("score", entry.get("reward")),
                "aspects": [
                    {"name": aspect, "score": value.get("score"), "rationale": value.get("rationale")}
                    if isinstance(value, dict)
                    else {"name": aspect, "score": value, "rationale": None}
                    for aspect, value in aspects.items()
                ],
                "error": entry.get("error"),
                "raw": entry.get("raw"),
            }
    return list(judges.values())


def _pairwise_judge(entry: dict[str, Any], chosen_index: Any) -> dict[str, Any]:
    """One pairwise judge on this pair, in both orders, said in terms of chosen and rejected.

    The judge saw candidate ``a`` as A and ``b`` as B (order ``ij``), then the swap (``ji``). ``verdict`` is
    +1 when ``a`` won both orders, -1 when ``b`` did, 0 when the orders disagree (a position-bias tie).
    """
    a, b = entry.get("a"), entry.get("b")
    chosen_is_a = chosen_index == a

    def who(candidate: Any) -> str:
        if candidate == chosen_index:
            return "chosen"
        return "rejected" if candidate in (a, b) else "?"

    orders = []
    for key, first, second in (("ij", a, b), ("ji", b, a)):
        said = entry.get(key)
        if not isinstance(said, dict):
            continue
        winner = said.get("winner")
        picked = {"A": who(first), "B": who(second)}.get(winner, "tie" if winner == "tie" else None)
        orders.append(
            {
                "order": key,
                "shown_first": who(first),
                "winner": winner,
                "prefers": picked,
                "rationale": said.get("rationale"),
                "error": said.get("error"),
                "raw": said.get("raw"),
            }
        )
    verdict = entry.get("verdict")
    relative = None if verdict is None else (verdict if chosen_is_a else -verdict)
    consistent = len(orders) == 2 and orders[0]["prefers"] == orders[1]["prefers"] and orders[0]["prefers"] is not None
    return {"judge": entry.get("judge"), "orders": orders, "verdict_for_chosen": relative, "consistent": consistent}


def dpo_scores_panel(record: Record) -> dict[str, Any]:
    """DPO's ``scores`` output: every candidate with its provenance, score and judgements."""
    texts = record.get("response_candidates") if isinstance(record.get("response_candidates"), list) else []
    sources = record.get("candidate_sources") if isinstance(record.get("candidate_sources"), list) else []
    judgements = record.get("candidate_judgements") if isinstance(record.get("candidate_judgements"), list) else []
    scores_field = next(
        (k for k in ("scores", "response_scores", "candidate_scores") if isinstance(record.get(k), list)), None
    )
    scores = record.get(scores_field) if scores_field else []
    count = max(len(texts), len(sources))
    candidates = []
    for i in range(count):
        candidates.append(
            {
                "index": i,
                "text": texts[i] if i < len(texts) else None,
                "score": scores[i] if i < len(scores or []) else None,
                "source": sources[i] if i < len(sources) else {},
                "judgements": judgements[i] if i < len(judgements) else [],
            }
        )
    return {"type": "dpo_scores", "candidates": candidates, "pairwise": record.get("pairwise_verdicts") or []}


# ---------------------------------------------------------------------- votes


def vote_panel(record: Record) -> dict[str, Any]:
    """Each voter's answer (or error and raw reply), the aggregate, and a cascade's final say."""
    found = ballots(record)
    voters = []
    if found:
        for name, answer in found[1].items():
            extra = {k: v for k, v in answer.items() if k not in ("label", "reason", "error", "raw")}
            voters.append(
                {
                    "voter": name,
                    "label": answer.get("label"),
                    "reason": answer.get("reason"),
                    "error": answer.get("error"),
                    "raw": answer.get("raw"),
                    "extra": extra,
                }
            )
    summary = vote_summary(record)
    cascade = record.get("cascade") if isinstance(record.get("cascade"), dict) else None
    return {
        "type": "vote",
        "voters": voters,
        "summary": summary[1] if summary else None,
        "cascade": cascade,
        "final": {k: record.get(k) for k in ("label", "reason", "label_source") if k in record},
    }


# ---------------------------------------------------------------------- Evol-Instruct


def evol_panel(record: Record, lookup: Lookup, rid: int | None) -> dict[str, Any]:
    """The instruction's evolution tree: from the record's rounds (nested output) or from the records of
    its root (flat output)."""
    rounds_field = next(
        (
            k
            for k, v in record.items()
            if isinstance(v, list) and v and isinstance(v[0], dict) and "l_depth_instructions" in v[0]
        ),
        None,
    )
    if isinstance(record.get("wizard_root"), dict) or rounds_field:
        return _evol_nested(record, rounds_field)
    return _evol_flat(record, lookup, rid)


def _evol_node(item: dict[str, Any], state: str) -> dict[str, Any]:
    return {
        "id": item.get("id"),
        "parent_id": item.get("parent_id"),
        "text": item.get("instruction") or item.get("input") or "",
        "round": item.get("round"),
        "operation": item.get("operation"),
        "kind": item.get("kind"),
        "valid": item.get("valid"),
        "score": item.get("score"),
        "state": state,
        "reason": item.get("eliminated"),
        "detail": item.get("detail") or item.get("judge_error"),
        "answer": item.get("answer"),
        "children": [],
    }


def _evol_nested(record: Record, rounds_field: str | None) -> dict[str, Any]:
    root_info = record.get("wizard_root") if isinstance(record.get("wizard_root"), dict) else {}
    root = _evol_node({"instruction": main_input(record), **root_info}, "root")
    root["id"] = root["id"] or source_id(record) or record.get("id")
    nodes = [root]
    rounds = []
    for entry in record.get(rounds_field or "", []) or []:
        if not isinstance(entry, dict):
            continue
        for key in ("l_depth_instructions", "l_breadth_instructions"):
            for item in entry.get(key) or []:
                if isinstance(item, dict):
                    state = "carried" if item.get("selected") else ("valid" if item.get("valid") == 1 else "invalid")
                    nodes.append(_evol_node(item, state))
        for item in entry.get("l_eliminated_instructions") or []:
            if isinstance(item, dict):
                nodes.append(_evol_node(item, "eliminated"))
        rounds.append(
            {
                "round": entry.get("wizard_round_cnt"),
                "sampled": entry.get("sampled") or [],
                "selected": entry.get("selected") or [],
                "errors": entry.get("errors") or [],
            }
        )
    return {"type": "evol", "mode": "nested", "tree": _tree(nodes, root), "rounds": rounds, "count": len(nodes)}


def _evol_flat(record: Record, lookup: Lookup, rid: int | None) -> dict[str, Any]:
    evol = record.get("evol") if isinstance(record.get("evol"), dict) else {}
    root_id = evol.get("root_id")
    root = _evol_node(
        {
            "id": root_id,
            "instruction": evol.get("root_input"),
            "round": 0,
            "operation": "root",
            "score": evol.get("root_score"),
            "valid": evol.get("root_valid"),
        },
        "root",
    )
    nodes = [root]
    seen = {root_id}
    members = lookup.where("evol.root_id", root_id, MAX_TREE) if root_id else []
    if not any(row.rid == rid for row, _ in members):
        members.append((_Here(rid), record))
    parents_text: dict[str, str] = {}
    for row, member in members:
        info = member.get("evol") if isinstance(member.get("evol"), dict) else {}
        node = _evol_node(
            {
                **info,
                "id": member.get("id"),
                "input": member.get("input"),
                "score": member.get("score"),
                "valid": member.get("valid"),
                "answer": member.get("target"),
            },
            "carried" if info.get("selected") else "kept",
        )
        node["rid"] = row.rid
        node["current"] = row.rid == rid
        if node["id"] not in seen:
            seen.add(node["id"])
            nodes.append(node)
        if info.get("parent_id") and info.get("parent_input"):
            parents_text[info["parent_id"]] = info["parent_input"]
    for parent_id, text in parents_text.items():
        if parent_id not in seen:  # a parent that is not itself an output (not kept): known by its text
            seen.add(parent_id)
            nodes.append(_evol_node({"id": parent_id, "instruction": text}, "not kept"))
    return {"type": "evol", "mode": "flat", "tree": _tree(nodes, root), "rounds": [], "count": len(nodes)}


class _Here:
    """The row of the record being shown, when the index has no ``evol.root_id`` column to find it by."""

    def __init__(self, rid: int | None):
        self.rid = rid


def _tree(nodes: list[dict[str, Any]], root: dict[str, Any]) -> dict[str, Any]:
    """Nodes linked by ``parent_id``; one whose parent is unknown hangs under the root."""
    by_id = {node["id"]: node for node in nodes if node.get("id") is not None}
    for node in nodes:
        if node is root:
            continue
        parent = by_id.get(node.get("parent_id")) or root
        if parent is node:
            parent = root
        parent["children"].append(node)
    for node in nodes:
        node["children"].sort(key=lambda n: (n.get("round") or 0, str(n.get("id"))))
    return root


# ---------------------------------------------------------------------- rewrite, Magpie, dedup


def rewrite_panel(record: Record, lookup: Lookup, rid: int | None) -> dict[str, Any]:
    """The rewritten case, its parent (the run's input, with ``--input``, or a record of this file) and
    what the rewrite changed, field by field, plus the other cases of the same parent."""
    parent_id = record.get("parent_id")
    parent = lookup.input_record(str(parent_id)) if parent_id is not None else None
    if parent is None and parent_id is not None:
        found = lookup.by_id(str(parent_id), ("kept",), 1)
        parent = found[0][1] if found else None
    changes = []
    if parent is not None:
        for name, value in record.items():
            if name in ("id", "parent_id", "rewrite_type", "_meta") or name not in parent:
                continue
            before = parent.get(name)
            if before == value:
                continue
            change: dict[str, Any] = {"field": name, "before": before, "after": value}
            if isinstance(before, str) and isinstance(value, str):
                change["segments"] = diff_segments(before, value)
            changes.append(change)
    return {
        "type": "rewrite",
        "parent_id": parent_id,
        "rewrite_type": record.get("rewrite_type"),
        "parent": parent,
        "has_inputs": lookup.has_inputs,
        "changes": changes,
        "siblings": _related(lookup, "parent_id", parent_id, rid),
    }


def magpie_panel(record: Record, lookup: Lookup, rid: int | None) -> dict[str, Any]:
    """One Magpie sample: the pre-query template the model continued, its raw completion, the cleaning
    edits that made it the instruction, the answer, the judges' tags, and the slot's other samples."""
    magpie = record["magpie"]
    keys = (
        "model",
        "template",
        "template_spec",
        "template_origin",
        "pre_query",
        "stops",
        "control_task",
        "language_filter",
        "params",
        "sample",
        "attempt",
        "finish_reason",
        "raw",
        "edits",
        "samples_per_call",
        "n",
        "choice",
    )
    slot = source_id(record)
    return {
        "type": "magpie",
        **{key: magpie.get(key) for key in keys if key in magpie},
        "slot": slot,
        "instruction": as_text(record.get("input")),
        "response": as_text(record.get("target")),
        "tags": {key: record[key] for key in MAGPIE_TAGS if key in record},
        "siblings": _related(lookup, "source_id", slot, rid) if slot else [],
    }


def dedup_panel(record: Record, lookup: Lookup, rid: int | None) -> dict[str, Any]:
    """The record's near-duplicate cluster (``cluster_id``: the id of its first record), each member's
    text marked where it differs from the first record's."""
    cluster = record.get("cluster_id")
    duplicate_of = record.get("duplicate_of")
    key = cluster if cluster is not None else duplicate_of
    if key is None:
        return {"type": "dedup", "cluster_id": None, "duplicate_of": None, "members": []}
    members = lookup.where("cluster_id", key, MAX_RELATED)
    first = lookup.by_id(str(key), ("kept",), 1)
    if first and all(row.rid != first[0][0].rid for row, _ in members):
        members = first + members
    base = main_input(first[0][1]) if first else None
    out = []
    for row, member in members:
        text = main_input(member)
        item = {**ref(row, member), "text": text, "first": bool(first) and row.rid == first[0][0].rid}
        item["current"] = row.rid == rid
        if base is not None and not item["first"]:
            item["segments"] = diff_segments(base, text)
        out.append(item)
    return {"type": "dedup", "cluster_id": cluster, "duplicate_of": duplicate_of, "members": out, "base": base}


# ---------------------------------------------------------------------- critique and joint


def critique_panel(record: Record) -> dict[str, Any]:
    rounds = [r for r in record.get("critique_rounds") or [] if isinstance(r, dict)]
    summary = record.get("critique") if isinstance(record.get("critique"), dict) else None
    return {"type": "critique", "rounds": rounds, "summary": summary}


def joint_panels(record: Record) -> list[dict[str, Any]]:
    """One panel per combining step (``joint``: fuse; ``pick``...): its drafts and what it made of them."""
    panels = []
    for name, info in record.items():
        if not (isinstance(info, dict) and "fuser" in info and "mode" in info):
            continue
        drafts_field = "drafts" if name == "joint" else f"{name}_drafts"
        if not isinstance(record.get(drafts_field), list):
            drafts_field = "drafts"
        drafts = [d for d in record.get(drafts_field) or [] if isinstance(d, dict)]
        used = info.get("used_drafts") or []
        best = info.get("best")
        if info.get("mode") == "pick" and isinstance(best, int) and 0 <= best < len(drafts):
            result = as_text(drafts[best].get("text"))
        else:
            result = as_text(record.get("target")) if name == "joint" else None
        panels.append(
            {
                "type": "joint",
                "field": name,
                "mode": info.get("mode"),
                "fuser": info.get("fuser"),
                "best": info.get("best"),
                "reason": info.get("reason"),
                "drafts": [{**d, "index": i, "used": i in used} for i, d in enumerate(drafts)],
                "result": result,
            }
        )
    return panels
