"""Which candidates become chosen/rejected pairs: pure rules over scores, no model calls.

Every rule sees the candidates' scores (``None`` for a candidate whose scoring failed: it never takes
part, and is never read as a zero) and returns the kept pairs plus the reasons others were dropped:

- ``best_vs_worst``: the highest score against the lowest (ties for first or last place go to the lower
  candidate index, so the choice is deterministic);
- ``best_vs_random``: the highest score against one candidate drawn, with the record's seeded generator,
  from those that score lower and pass the margin and length checks;
- ``all_pairs``: every ordered pair whose gap passes the checks.

A pair (chosen ``c``, rejected ``r``) is kept when, in this order:

1. ``gap = s_c - s_r > 0`` -- else ``tie``;
2. ``verdict(c, r) > 0`` when a direct verdict exists (the pairwise judge's own comparison of exactly
   these two, both orders combined) -- ``0`` is ``tie`` (the pair flipped with the order, or both orders
   said tie), negative is ``contradicted`` (c wins overall but loses to r head to head);
3. ``gap >= margin`` -- else ``below_margin``;
4. with ``length_penalty = λ > 0``, the gap still passes once what length alone can buy is taken off:
   ``gap - λ·log2(len_c / len_r) >= margin`` and ``> 0`` -- else ``length_decided``. λ is in score points
   per doubling of length: a chosen answer twice as long as the rejected one must win by ``λ`` more than
   the margin. Only a longer chosen answer is penalised (a shorter one that wins is no length effect).

With verified candidates (``dpo``'s ``require_verified``) the rule runs over two pools: the chosen comes from
the candidates that passed the check (``chosen_from``), the rejected from those that failed it
(``rejected_from``), and the checks above still apply to each pair. An empty pool makes no pair
(``no_passing_candidate``, ``no_failing_candidate``).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import get_args

from .config import PairRule

RULES: tuple[str, ...] = get_args(PairRule)
DROP_REASONS = ("tie", "contradicted", "below_margin", "length_decided")

Verdict = Callable[[int, int], float | None]


@dataclass
class Selection:
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (chosen index, rejected index)
    dropped: Counter[str] = field(default_factory=Counter)


def length_adjusted_gap(gap: float, chosen_length: int, rejected_length: int, length_penalty: float) -> float:
    """The gap minus ``λ·log2(len_c/len_r)`` when the chosen is longer; lengths below 1 count as 1."""
    ratio = max(chosen_length, 1) / max(rejected_length, 1)
    return gap - length_penalty * math.log2(ratio) if ratio > 1 else gap


def pair_verdict(
    scores: Sequence[float | None],
    chosen: int,
    rejected: int,
    *,
    margin: float = 0.0,
    verdict: Verdict | None = None,
    lengths: Sequence[int] | None = None,
    length_penalty: float = 0.0,
) -> str | None:
    """``None`` when (chosen, rejected) is a valid pair, else the drop reason (see the module doc)."""
    s_c, s_r = scores[chosen], scores[rejected]
    if s_c is None or s_r is None:
        raise ValueError("pair_verdict: both candidates need a score")
    gap = s_c - s_r
    if gap <= 0:
        return "tie"
    if verdict is not None:
        direct = verdict(chosen, rejected)
        if direct is None or direct == 0:
            return "tie"
        if direct < 0:
            return "contradicted"
    if gap < margin:
        return "below_margin"
    if length_penalty > 0 and lengths is not None:
        adjusted = length_adjusted_gap(gap, lengths[chosen], lengths[rejected], length_penalty)
        if adjusted <= 0 or adjusted < margin:
            return "length_decided"
    return None


def select_pairs(
    scores: Sequence[float | None],
    rule: str,
    *,
    margin: float = 0.0,
    rng: random.Random | None = None,
    verdict: Verdict | None = None,
    lengths: Sequence[int] | None = None,
    length_penalty: float = 0.0,
    chosen_from: set[int] | None = None,
    rejected_from: set[int] | None = None,
) -> Selection:
    """Apply ``rule`` to one record's candidate scores. Fewer than two scored candidates give no pair
    (the caller decides whether that is a failure; it is not a drop reason of the rules). ``chosen_from`` and
    ``rejected_from``: the verified pools (see the module doc)."""
    if rule not in RULES:
        raise ValueError(f"unknown pair rule {rule!r} (known: {', '.join(RULES)})")
    scored = [i for i, s in enumerate(scores) if s is not None]
    selection = Selection()
    if len(scored) < 2:
        return selection

    def check(chosen: int, rejected: int) -> str | None:
        return pair_verdict(
            scores, chosen, rejected, margin=margin, verdict=verdict, lengths=lengths, length_penalty=length_penalty
        )

    if chosen_from is None and rejected_from is None:
        # Every unordered pair once, the higher score chosen (the lower index on a tie).
        ordered = [
            (a, b) if scores[a] >= scores[b] else (b, a)  # type: ignore[operator]
            for n, a in enumerate(scored)
            for b in scored[n + 1 :]
        ]
        return _apply_rule(scores, rule, scored, scored, ordered, check, rng)
    winners = [i for i in scored if chosen_from is None or i in chosen_from]
    losers = [i for i in scored if rejected_from is None or i in rejected_from]
    if not winners or not losers:
        selection.dropped["no_passing_candidate" if not winners else "no_failing_candidate"] += 1
        return selection
    return _apply_rule(scores, rule, winners, losers, [(c, r) for c in winners for r in losers if c != r], check, rng)


def _apply_rule(
    scores: Sequence[float | None],
    rule: str,
    winners: list[int],
    losers: list[int],
    all_pairs: list[tuple[int, int]],
    check: Callable[[int, int], str | None],
    rng: random.Random | None,
) -> Selection:
    """The rule over a pool: the chosen from ``winners``, the rejected from ``losers`` (for ``all_pairs``, the
    (chosen, rejected) pairs given). Highest score first; among equal scores the lower index, at both ends."""
    selection = Selection()
    best = min(winners, key=lambda i: (-scores[i], i))  # type: ignore[operator]
    rest = [i for i in losers if i != best]
    if rule in ("best_vs_worst", "best_vs_random") and not rest:
        selection.dropped["no_failing_candidate"] += 1
        return selection
    if rule == "best_vs_worst":
        worst = min(rest, key=lambda i: (scores[i], i))  # type: ignore[index]
        reason = check(best, worst)
        if reason is None:
            selection.pairs.append((best, worst))
        else:
            selection.dropped[reason] += 1
    elif rule == "best_vs_random":
        reasons = {r: check(best, r) for r in rest}
        eligible = [r for r, reason in reasons.items() if reason is None]
        if eligible:
            if rng is None:
                raise ValueError("best_vs_random needs a seeded random generator")
            selection.pairs.append((best, rng.choice(eligible)))
        else:
            # Report the most lenient failure: if any lower candidate only missed on length, that is why.
            found = set(reasons.values())
            for reason in reversed(DROP_REASONS):
                if reason in found:
                    selection.dropped[reason] += 1
                    break
    else:
        for chosen, rejected in all_pairs:
            reason = check(chosen, rejected)
            if reason is None:
                selection.pairs.append((chosen, rejected))
            else:
                selection.dropped[reason] += 1
    return selection
