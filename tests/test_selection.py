"""Selection: k-center greedy against a plain reference traversal, random selection, subset metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from joydataforge.evaluate.selection import (
    coverage_radius,
    k_center_greedy,
    random_selection,
    select,
    subset_metrics,
)


def reference_k_center(x: np.ndarray, k: int, first: int | None, already=(), metric: str = "cosine") -> list[int]:
    """The textbook farthest-point traversal in float64, one full pass per pick."""
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    centers = list(already) if already else [first]
    picks = [] if already else [first]
    nearest = np.full(len(x), np.inf)
    for c in centers:
        nearest = np.minimum(nearest, np.linalg.norm(x - x[c], axis=1))
    nearest[centers] = -np.inf
    while len(picks) < k:
        c = int(np.argmax(nearest))
        picks.append(c)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[c], axis=1))
        nearest[c] = -np.inf
    return picks


def clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * 3
    return centres[rng.integers(clusters, size=n)] + rng.normal(size=(n, d))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block_rows", [1, 37, 4096])
def test_same_picks_as_the_textbook_traversal(metric, block_rows):
    x = clustered(900, 12, 15, seed=4)
    ours = k_center_greedy(x, 60, metric=metric, seed=3, block_rows=block_rows)
    assert list(ours) == reference_k_center(x, 60, int(ours[0]), metric=metric)


def test_seeded_start_and_explicit_start():
    x = clustered(500, 8, 5, seed=1)
    a = k_center_greedy(x, 20, seed=7)
    assert list(a) == list(k_center_greedy(x, 20, seed=7))
    assert int(a[0]) == int(np.random.default_rng(7).integers(500))
    assert k_center_greedy(x, 5, start=42)[0] == 42
    assert list(k_center_greedy(x, 5, start=42)) == reference_k_center(x, 5, 42)


def test_continues_from_already_selected_records():
    x = clustered(600, 10, 8, seed=2)
    earlier = [5, 17, 300]
    more = k_center_greedy(x, 25, already_selected=earlier, block_rows=50)
    assert not set(more) & set(earlier)
    assert list(more) == reference_k_center(x, 25, None, already=earlier)
    # continuing a traversal gives the same picks as running it longer in one go
    whole = k_center_greedy(x, 30, start=9)
    assert list(k_center_greedy(x, 20, already_selected=whole[:10])) == list(whole[10:])


def test_never_picks_twice_even_with_duplicates():
    base = np.random.default_rng(0).normal(size=(10, 4))
    x = np.vstack([base, base, base])  # every record three times
    picks = k_center_greedy(x, 30, seed=0, block_rows=7)
    assert sorted(picks) == list(range(30))
    # the 10 distinct directions come first, duplicates only after
    assert len({int(p) % 10 for p in picks[:10]}) == 10
    assert len(k_center_greedy(x, 100)) == 30  # no more than there are
    assert len(k_center_greedy(x, 5, already_selected=range(28))) == 2
    assert len(k_center_greedy(x, 0)) == 0


def test_k_center_covers_better_than_random():
    x = clustered(2000, 16, 40, seed=9)
    for k in (10, 40, 100):
        kc = k_center_greedy(x, k, seed=1)
        rnd = random_selection(len(x), k, seed=1)
        # Gonzalez: the traversal's radius is at most twice the optimum, which is at most random's
        assert coverage_radius(x, kc) <= 2 * coverage_radius(x, rnd)
    kc, rnd = k_center_greedy(x, 40, seed=1), random_selection(len(x), 40, seed=1)
    assert coverage_radius(x, kc) < coverage_radius(x, rnd)
    # well separated clusters: the first 40 picks land in 40 different clusters
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 16)) * 20
    members = rng.integers(40, size=2000)
    far = centres[members] + rng.normal(size=(2000, 16))
    picks = k_center_greedy(far, 40, metric="euclidean", seed=0, block_rows=128)
    assert len(set(members[picks])) == 40


def test_random_selection():
    a = random_selection(100, 10, seed=5)
    assert list(a) == list(random_selection(100, 10, seed=5))
    assert list(a) != list(random_selection(100, 10, seed=6))
    assert len(set(a)) == 10
    b = random_selection(12, 50, seed=1, already_selected=[0, 1, 2])
    assert sorted(b) == list(range(3, 12))
    assert list(select(np.eye(5), 3, method="random", seed=2)) == list(random_selection(5, 3, seed=2))


def test_errors():
    with pytest.raises(ValueError, match="row 1"):
        k_center_greedy(np.array([[1.0, 0.0], [0.0, 0.0]]), 1)
    with pytest.raises(ValueError, match="metric"):
        k_center_greedy(np.eye(3), 1, metric="manhattan")
    with pytest.raises(ValueError, match="already_selected"):
        k_center_greedy(np.eye(3), 1, already_selected=[3])
    with pytest.raises(ValueError, match="start"):
        k_center_greedy(np.eye(3), 1, start=5)
    with pytest.raises(ValueError, match="unknown selection"):
        select(np.eye(3), 1, method="best")


def test_subset_metrics_side_by_side():
    x = np.eye(4)
    entity_maps = [{"Drug": ["a"]}, {"Drug": ["a"]}, {"Disease": ["b"]}, {}]
    labels = ["x", "x", "y", "z"]
    report = subset_metrics(x, [0, 2], entity_maps=entity_maps, labels=labels, orders=(1, "inf"))
    full, sel = report["full"], report["selected"]
    assert full["records"] == 4 and sel["records"] == 2
    assert full["vendi"] == pytest.approx({"q=1": 4.0, "q=inf": 4.0})
    assert sel["vendi"] == pytest.approx({"q=1": 2.0, "q=inf": 2.0})
    assert full["entities"]["entities"]["unique"] == 2 and full["entities"]["coverage"] == pytest.approx(0.75)
    assert sel["entities"]["coverage"] == pytest.approx(1.0)
    assert sel["entities"]["per_type"]["Drug"]["coverage"] == pytest.approx(0.5)
    assert full["labels"]["shannon_entropy_nats"] == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert sel["labels"]["unique"] == 2 and sel["labels"]["gini_simpson"] == pytest.approx(0.5)
    # entities alone, without embeddings
    only = subset_metrics(None, [1], entity_maps=entity_maps)
    assert "vendi" not in only["full"] and only["selected"]["entities"]["entities"]["top"] == [["a", 1]]
    with pytest.raises(ValueError, match="indices"):
        subset_metrics(x, [4])


@pytest.mark.parametrize("pool", [1, 16, 100])
def test_small_candidate_pools_change_nothing(monkeypatch, pool):
    """Datasets below 4,096 records fit in one pool; force small pools to exercise the rebuilds."""
    from joydataforge.evaluate import selection

    monkeypatch.setattr(selection._LazyTraversal, "POOL", pool)
    x = clustered(700, 10, 12, seed=8)
    ours = k_center_greedy(x, 80, seed=2, block_rows=64)
    assert list(ours) == reference_k_center(x, 80, int(ours[0]))
    more = k_center_greedy(x, 30, already_selected=[1, 2, 3], metric="euclidean")
    assert list(more) == reference_k_center(x, 30, None, already=[1, 2, 3], metric="euclidean")
