"""Did evolution make the set harder and more diverse? Mean difficulty and Vendi score per round.

Reads what the ``evol_instruct`` step writes, in either form: ``nested`` records (the seed's shape,
``wizard_llm_querys`` + ``wizard_root``) or ``flat`` records (one per kept instruction, with ``evol``
lineage). Round 0 is the root queries, judged by the same judge as their children (``judge_root``), so
the scores are comparable. For each round it counts what was generated, eliminated (by reason),
judged, valid and carried on, and computes over that round's *valid* instructions:

* the mean difficulty ``score`` (the judge's 0-100 scale);
* the Vendi score (cosine kernel, q=1, :func:`~joydataforge.text.vendi.vendi_score`): the effective
  number of distinct instructions. It grows with the number of instructions, so ``vendi_per_item``
  (Vendi / n, 1.0 = all mutually unrelated) is the column to compare between rounds of different sizes.

Vectors come from any :class:`~joydataforge.evaluate.embeddings.Embedder` (the offline default is the
multilingual USE model; the CLI also takes a served model); without one the Vendi columns are empty.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...text.vendi import vendi_score

Record = dict[str, Any]


@dataclass
class RoundStats:
    """One round of evolution over a whole dataset (round 0 = the roots)."""

    round: int
    generated: int = 0
    judged: int = 0
    valid: int = 0
    carried: int = 0
    eliminated: Counter = field(default_factory=Counter)
    scores: list[int] = field(default_factory=list)  # of the valid instructions
    texts: list[str] = field(default_factory=list)  # the valid instructions
    vendi: float | None = None

    @property
    def mean_score(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None

    @property
    def vendi_per_item(self) -> float | None:
        return self.vendi / len(self.texts) if self.vendi is not None and self.texts else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "generated": self.generated,
            "eliminated": dict(self.eliminated),
            "judged": self.judged,
            "valid": self.valid,
            "carried": self.carried,
            "mean_score": _round(self.mean_score),
            "vendi": _round(self.vendi),
            "vendi_per_item": _round(self.vendi_per_item),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def collect_rounds(records: Iterable[Record], field_name: str = "wizard_llm_querys") -> list[RoundStats]:
    """Per-round counts, scores and texts from nested or flat ``evol_instruct`` output."""
    rounds: dict[int, RoundStats] = {}

    def at(number: int) -> RoundStats:
        return rounds.setdefault(number, RoundStats(number))

    seen_roots: set[str] = set()
    for record in records:
        if isinstance(record.get(field_name), list):
            _add_nested(record, field_name, at)
        elif isinstance(record.get("evol"), dict):
            _add_flat(record, at, seen_roots)
        else:
            raise ValueError(
                f"record {record.get('id')!r} is not evol_instruct output "
                f"(no '{field_name}' list and no 'evol' lineage)"
            )
    return [rounds[k] for k in sorted(rounds)]


def _add_nested(record: Record, field_name: str, at: Any) -> None:
    root = record.get("wizard_root") or {}
    stats = at(0)
    stats.generated += 1
    if isinstance(root.get("valid"), int):
        stats.judged += 1
    if root.get("valid") == 1 and isinstance(root.get("score"), int):
        stats.valid += 1
        stats.scores.append(root["score"])
        stats.texts.append(root["instruction"])
    stats.carried += 1
    for entry in record[field_name]:
        stats = at(int(entry.get("wizard_round_cnt", 0)))
        judged = list(entry.get("l_depth_instructions", [])) + list(entry.get("l_breadth_instructions", []))
        dropped = list(entry.get("l_eliminated_instructions", []))
        stats.generated += len(judged) + len(dropped)
        stats.judged += len(judged)
        stats.eliminated.update(d.get("eliminated", "?") for d in dropped)
        stats.carried += len(entry.get("selected", []))
        for candidate in judged:
            if candidate.get("valid") == 1 and isinstance(candidate.get("score"), int):
                stats.valid += 1
                stats.scores.append(candidate["score"])
                stats.texts.append(candidate["instruction"])


def _add_flat(record: Record, at: Any, seen_roots: set[str]) -> None:
    """Flat records hold only kept (valid) instructions, so generated/eliminated stay unknown (0)."""
    evol = record["evol"]
    if evol.get("root_id") not in seen_roots:
        seen_roots.add(evol.get("root_id"))
        stats = at(0)
        stats.generated += 1
        if evol.get("root_valid") == 1 and isinstance(evol.get("root_score"), int):
            stats.valid += 1
            stats.scores.append(evol["root_score"])
            stats.texts.append(evol.get("root_input", ""))
    stats = at(int(evol.get("round", 0)))
    stats.judged += 1
    stats.valid += 1
    stats.carried += int(bool(evol.get("selected")))
    if isinstance(record.get("score"), int):
        stats.scores.append(record["score"])
    stats.texts.append(record.get("input", ""))


def all_texts(stats: Sequence[RoundStats]) -> list[str]:
    """Every round's valid instructions, round after round: the order :func:`add_vendi` expects vectors in."""
    return [text for s in stats for text in s.texts]


def add_vendi(stats: Sequence[RoundStats], vectors: np.ndarray) -> None:
    """Fill in each round's Vendi score from ``vectors``, one row per text of :func:`all_texts`."""
    expected = sum(len(s.texts) for s in stats)
    if len(vectors) != expected:
        raise ValueError(f"{len(vectors)} vectors for {expected} instructions")
    start = 0
    for s in stats:
        rows = vectors[start : start + len(s.texts)]
        start += len(s.texts)
        s.vendi = vendi_score(rows) if len(rows) else None


async def evol_report(
    records: Iterable[Record], embedder: Any | None = None, field_name: str = "wizard_llm_querys"
) -> list[RoundStats]:
    """The per-round report; ``embedder`` (an :class:`~joydataforge.evaluate.embeddings.Embedder`) adds Vendi."""
    stats = collect_rounds(records, field_name)
    texts = all_texts(stats)
    if embedder is not None and texts:
        add_vendi(stats, np.asarray(await embedder.embed(texts)))
    return stats


def format_report(stats: Sequence[RoundStats]) -> str:
    """A plain-text table (for logs and tests; the CLI prints a rich one)."""
    header = (
        f"{'round':>5} {'generated':>9} {'eliminated':>10} {'judged':>6} {'valid':>5} {'carried':>7} "
        f"{'mean score':>10} {'vendi':>7} {'vendi/n':>7}"
    )
    lines = [header]
    for s in stats:
        mean = f"{s.mean_score:.1f}" if s.mean_score is not None else "-"
        vendi = f"{s.vendi:.2f}" if s.vendi is not None else "-"
        per = f"{s.vendi_per_item:.3f}" if s.vendi_per_item is not None else "-"
        lines.append(
            f"{s.round:>5} {s.generated:>9} {sum(s.eliminated.values()):>10} {s.judged:>6} {s.valid:>5} "
            f"{s.carried:>7} {mean:>10} {vendi:>7} {per:>7}"
        )
    reasons = Counter()
    for s in stats:
        reasons.update(s.eliminated)
    if reasons:
        lines.append("eliminated: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    return "\n".join(lines)
