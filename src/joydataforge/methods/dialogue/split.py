"""Sample labelled dialogue turns into train and test sets per label, with caps, seeded.

This is the last stage of the dialogue intent pipeline (``dialogue_intent`` step -> ``joyforge
dialogue-split``). It is not a step because it needs the whole labelled set at once: caps and test sizes
are per label over all records.

The sampling, in order (every random choice comes from one ``random.Random(seed)``):

1. Records are de-duplicated by ``id`` (a resumed run may hold a dialogue twice) and sorted by id, so
   the result does not depend on the order the file was written in (``order: completion``).
   Records without a label, or with a label outside ``labels`` when given, are left out and counted.
2. Per record and label: at most ``per_record_cap`` turns of one dialogue (``group_field``) with one
   label, so a long dialogue of small talk does not flood "其他".
3. Per label: at most ``per_label_cap`` turns.
4. Per label: ``test_size`` turns go to the test set (an integer count, or a fraction in (0, 1)); the
   rest is the train set. With ``by_dialogue``, whole dialogues go to one side, filling those quotas
   without overshooting them (see :func:`_assign_dialogues`).

Written by :func:`write_split`: ``train.jsonl``, ``test.jsonl``, ``train/<label>.jsonl``,
``test/<label>.jsonl``, ``test.xlsx`` (one sheet per label, for human review) and ``split.json``
(settings and counts). Within each file records keep their input order.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError, InputError
from ...io.readers import iter_records

Record = dict[str, Any]

#: Columns of the XLSX test set, when present in the records (others are left out of the sheet).
XLSX_COLUMNS = ("id", "dialog_id", "turn_index", "history", "input", "label", "reason")
_SHEET_BAD = re.compile(r"[\[\]:*?/\\]")
_FILE_BAD = re.compile(r"[\\/:*?\"<>|\s]+")


@dataclass
class SplitResult:
    train: list[Record]
    test: list[Record]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> {available, capped, train, test}
    dropped: Counter = field(default_factory=Counter)  # reason -> records left out
    shared_dialogues: int = 0  # dialogues with turns on both sides (0 with by_dialogue)

    def by_label(self, split: str) -> dict[str, list[Record]]:
        groups: dict[str, list[Record]] = defaultdict(list)
        for record in getattr(self, split):
            groups[record["_label"]].append(record)
        return dict(groups)


def _test_count(test_size: float, available: int) -> int:
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or test_size < 0:
        raise ConfigError(f"test_size must be a count >= 0 or a fraction in (0, 1), not {test_size!r}")
    if isinstance(test_size, float) and test_size < 1:
        return min(available, round(test_size * available))
    if isinstance(test_size, float) and not test_size.is_integer():
        raise ConfigError(f"test_size must be a whole count or a fraction in (0, 1), not {test_size!r}")
    return min(available, int(test_size))


def split_records(
    records: Iterable[Record],
    *,
    test_size: float = 0.2,
    per_label_cap: int | None = None,
    per_record_cap: int | None = None,
    seed: int = 0,
    label_field: str = "label",
    group_field: str = "dialog_id",
    labels: Sequence[str] | None = None,
    by_dialogue: bool = False,
) -> SplitResult:
    """Split labelled records into train and test sets (see the module docstring for the rules).

    ``by_dialogue`` keeps each dialogue's turns on one side (no leakage through shared context) at the cost
    of exact per-label test counts; without it turns are sampled one by one, as the seed project did, and
    ``shared_dialogues`` says how many dialogues ended up on both sides.

    Returned records are the input dicts with a private ``_label`` key removed before writing.
    """
    for name, cap in (("per_label_cap", per_label_cap), ("per_record_cap", per_record_cap)):
        if cap is not None and (not isinstance(cap, int) or cap < 1):
            raise ConfigError(f"{name} must be a positive integer, not {cap!r}")
    _test_count(test_size, 0)  # validates
    allowed = set(labels) if labels else None
    dropped: Counter = Counter()
    unique: dict[str, tuple[int, Record]] = {}
    seen: set[str] = set()
    for position, record in enumerate(records):
        key = str(record.get("id") or json.dumps(record, sort_keys=True, ensure_ascii=False, default=str))
        if key in seen:
            dropped["duplicate_id"] += 1
            continue
        seen.add(key)
        label = record.get(label_field)
        if not isinstance(label, str) or not label:
            dropped["no_label"] += 1
            continue
        if allowed is not None and label not in allowed:
            dropped["other_label"] += 1
            continue
        unique[key] = (position, {**record, "_label": label, "_position": position})
    rng = random.Random(seed)
    ordered = [unique[key][1] for key in sorted(unique)]

    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record in ordered:
        groups[(str(record.get(group_field, record.get("id"))), record["_label"])].append(record)
    per_label: dict[str, list[Record]] = defaultdict(list)
    available: Counter = Counter()
    for (_, label), members in sorted(groups.items()):
        available[label] += len(members)
        if per_record_cap is not None and len(members) > per_record_cap:
            dropped["per_record_cap"] += len(members) - per_record_cap
            members = rng.sample(members, per_record_cap)
        per_label[label].extend(members)

    selected: dict[str, list[Record]] = {}
    quotas: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    for label in sorted(per_label):
        members = sorted(per_label[label], key=lambda r: str(r.get("id")))
        rng.shuffle(members)
        capped = len(members)
        if per_label_cap is not None and capped > per_label_cap:
            dropped["per_label_cap"] += capped - per_label_cap
            members = members[:per_label_cap]
        selected[label] = members
        quotas[label] = _test_count(test_size, len(members))
        counts[label] = {"available": available[label], "after_record_cap": capped}
    if by_dialogue:
        train, test = _assign_dialogues(selected, quotas, group_field, rng)
    else:
        train = [r for label in selected for r in selected[label][quotas[label] :]]
        test = [r for label in selected for r in selected[label][: quotas[label]]]
    in_test = Counter(r["_label"] for r in test)
    for label, members in selected.items():
        counts[label].update(train=len(members) - in_test[label], test=in_test[label])
    train.sort(key=lambda r: r["_position"])
    test.sort(key=lambda r: r["_position"])
    train_dialogues = {_dialogue(r, group_field) for r in train}
    shared = len(train_dialogues & {_dialogue(r, group_field) for r in test})
    return SplitResult(train, test, counts, dropped, shared_dialogues=shared)


def _dialogue(record: Record, group_field: str) -> str:
    return str(record.get(group_field, record.get("id")))


def _assign_dialogues(
    selected: dict[str, list[Record]], quotas: dict[str, int], group_field: str, rng: random.Random
) -> tuple[list[Record], list[Record]]:
    """Whole dialogues to one side, so no test turn has its own dialogue's other turns in training.

    Dialogues are visited in a seeded order; one goes to test while it helps a label that is still short
    of its quota and pushes no label past its quota. A label may end below its quota when its turns only
    come in dialogues that would overshoot another label; ``counts`` reports what was reached.
    """
    dialogues: dict[str, list[Record]] = defaultdict(list)
    for label in sorted(selected):
        for record in selected[label]:
            dialogues[_dialogue(record, group_field)].append(record)
    order = sorted(dialogues)
    rng.shuffle(order)
    taken: Counter = Counter()
    train: list[Record] = []
    test: list[Record] = []
    for key in order:
        members = dialogues[key]
        need = Counter(r["_label"] for r in members)
        helps = any(taken[label] < quotas[label] for label in need)
        fits = all(taken[label] + k <= quotas[label] for label, k in need.items())
        if helps and fits:
            taken.update(need)
            test.extend(members)
        else:
            train.extend(members)
    return train, test


def _clean(record: Record) -> Record:
    return {k: v for k, v in record.items() if k not in ("_label", "_position")}


def _file_name(label: str) -> str:
    return _FILE_BAD.sub("_", label).strip("._") or "label"


def _sheet_names(labels: Iterable[str]) -> dict[str, str]:
    """Excel sheet names: at most 31 characters, none of []:*?/\\, unique (case-insensitively)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for label in labels:
        base = _SHEET_BAD.sub("_", label)[:31].strip("'") or "label"
        name, k = base, 2
        while name.casefold() in taken:
            suffix = f"~{k}"
            name, k = base[: 31 - len(suffix)] + suffix, k + 1
        taken.add(name.casefold())
        names[label] = name
    return names


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, ensure_ascii=False)


def write_xlsx(path: Path, groups: dict[str, list[Record]], columns: Sequence[str] = XLSX_COLUMNS) -> None:
    """One sheet per label; columns are those of ``columns`` that any record has, in that order."""
    from openpyxl import Workbook
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    workbook = Workbook()
    workbook.remove(workbook.active)
    names = _sheet_names(groups)
    for label, records in groups.items():
        sheet = workbook.create_sheet(names[label])
        present = [c for c in columns if any(c in r for r in records)]
        sheet.append(present)
        for record in records:
            row = [_cell(record.get(c)) for c in present]
            sheet.append([ILLEGAL_CHARACTERS_RE.sub("", v) if isinstance(v, str) else v for v in row])
    if not groups:
        workbook.create_sheet("empty")
    workbook.save(path)


def _write_jsonl(path: Path, records: Iterable[Record]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(_clean(record), ensure_ascii=False) + "\n")
            n += 1
    return n


def write_split(
    result: SplitResult, out_dir: str | Path, *, xlsx: bool = True, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write the split (files listed in the module docstring); returns what ``split.json`` holds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        folder = out / split
        if folder.is_dir():  # labels from an earlier split into the same folder must not linger
            for stale in folder.glob("*.jsonl"):
                stale.unlink()
        _write_jsonl(out / f"{split}.jsonl", getattr(result, split))
        for label, records in sorted(result.by_label(split).items()):
            _write_jsonl(folder / f"{_file_name(label)}.jsonl", records)
    if xlsx:
        write_xlsx(
            out / "test.xlsx",
            {label: [_clean(r) for r in records] for label, records in sorted(result.by_label("test").items())},
        )
    summary = {
        "settings": settings or {},
        "labels": result.counts,
        "dropped": dict(result.dropped),
        "train": len(result.train),
        "test": len(result.test),
        "shared_dialogues": result.shared_dialogues,
    }
    (out / "split.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", "utf-8")
    return summary


def read_labelled(path: str | Path) -> list[Record]:
    """All records of a labelled file or folder; an unreadable line stops with its file and line."""
    records = []
    for item in iter_records(path):
        if item.error is not None:
            raise item.error
        assert item.record is not None
        records.append(item.record)
    if not records:
        raise InputError("no records to split", None)
    return records
