"""Pair-selection rules: every rule, ties, margins, direct verdicts, length control, failed scores."""

import math
import random

import pytest

from joydataforge.methods.dpo.pairs import length_adjusted_gap, pair_verdict, select_pairs


def test_best_vs_worst_picks_extremes_and_breaks_ties_by_index():
    sel = select_pairs([5.0, 9.0, 1.0, 9.0, 1.0], "best_vs_worst")
    assert sel.pairs == [(1, 2)] and not sel.dropped


def test_all_equal_scores_is_a_tie_not_a_pair():
    sel = select_pairs([7.0, 7.0, 7.0], "best_vs_worst")
    assert sel.pairs == [] and sel.dropped == {"tie": 1}


def test_failed_scores_never_take_part_and_are_not_zero():
    # Candidate 1 failed: if it were read as 0 it would be the rejected one.
    sel = select_pairs([4.0, None, 6.0, 5.0], "best_vs_worst")
    assert sel.pairs == [(2, 0)]
    assert select_pairs([4.0, None], "best_vs_worst").pairs == []
    with pytest.raises(ValueError):
        pair_verdict([4.0, None], 0, 1)


def test_margin_drops_close_pairs_and_counts_them():
    sel = select_pairs([6.0, 5.5], "best_vs_worst", margin=1.0)
    assert sel.pairs == [] and sel.dropped == {"below_margin": 1}
    assert select_pairs([6.0, 5.0], "best_vs_worst", margin=1.0).pairs == [(0, 1)]  # exactly the margin passes


def test_best_vs_random_is_seeded_and_only_draws_eligible_lower_candidates():
    scores = [9.0, 8.5, 3.0, 2.0, 1.0, 9.0]
    draws = {select_pairs(scores, "best_vs_random", margin=1.0, rng=random.Random(seed)).pairs[0] for seed in range(60)}
    assert draws == {(0, 2), (0, 3), (0, 4)}  # never 1 (below margin), never 5 (a tie with the best)
    first = select_pairs(scores, "best_vs_random", rng=random.Random(3)).pairs
    assert first == select_pairs(scores, "best_vs_random", rng=random.Random(3)).pairs


def test_best_vs_random_reports_why_no_pair():
    assert select_pairs([5.0, 5.0], "best_vs_random", rng=random.Random(0)).dropped == {"tie": 1}
    assert select_pairs([5.0, 4.8, 5.0], "best_vs_random", margin=1, rng=random.Random(0)).dropped == {
        "below_margin": 1
    }


def test_all_pairs_counts_each_dropped_pair_by_reason():
    sel = select_pairs([9.0, 5.0, 5.0, 4.5], "all_pairs", margin=1.0)
    assert sorted(sel.pairs) == [(0, 1), (0, 2), (0, 3)]
    assert sel.dropped == {"tie": 1, "below_margin": 2}


def test_direct_verdict_flip_is_a_tie_and_contradiction_is_counted():
    scores = [0.75, 0.5, 0.25]
    flips = {(0, 2): 0.0}
    sel = select_pairs(scores, "best_vs_worst", verdict=lambda c, r: flips.get((c, r), 1.0))
    assert sel.pairs == [] and sel.dropped == {"tie": 1}
    sel = select_pairs(scores, "best_vs_worst", verdict=lambda c, r: -1.0)
    assert sel.dropped == {"contradicted": 1}
    assert select_pairs(scores, "best_vs_worst", verdict=lambda c, r: None).dropped == {"tie": 1}  # all judges failed


def test_length_penalty_rejects_pairs_that_length_alone_decides():
    # Chosen is 4x longer (two doublings): with lambda=1 it must win by margin + 2.
    assert length_adjusted_gap(3.0, 400, 100, 1.0) == pytest.approx(1.0)
    assert length_adjusted_gap(3.0, 100, 400, 1.0) == 3.0  # a shorter winner is not penalised
    scores = [7.0, 5.0]
    selection = select_pairs(scores, "best_vs_worst", lengths=[400, 100], length_penalty=1.0)
    assert selection.dropped == {"length_decided": 1}
    assert select_pairs(scores, "best_vs_worst", lengths=[150, 100], length_penalty=1.0).pairs == [(0, 1)]
    assert select_pairs(scores, "best_vs_worst", lengths=[100, 400], length_penalty=1.0).pairs == [(0, 1)]
    # Without the penalty, length is only reported, never decisive.
    assert select_pairs(scores, "best_vs_worst", lengths=[400, 100]).pairs == [(0, 1)]
    gap = 2.0 - math.log2(2.0)
    assert gap == 1.0 and select_pairs(
        [3.0, 1.0], "best_vs_worst", margin=1.0, lengths=[200, 100], length_penalty=1.0
    ).pairs == [(0, 1)]


def test_best_vs_random_skips_length_decided_candidates():
    scores = [8.0, 6.0, 5.0]
    sel = select_pairs(scores, "best_vs_random", lengths=[800, 100, 800], length_penalty=1.0, rng=random.Random(0))
    assert sel.pairs == [(0, 2)]  # candidate 1 loses only because it is 8x shorter


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown pair rule"):
        select_pairs([1.0, 2.0], "best_of_n")
