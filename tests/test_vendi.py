"""Vendi score: the seed's value, agreement with the reference package, the dual and streaming forms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from joydataforge.text.vendi import (
    VendiAccumulator,
    hill_number,
    unit_rows,
    vendi_score,
    vendi_score_from_kernel,
    vendi_scores,
    vendi_spectrum,
)

FIXTURES = Path(__file__).parent / "fixtures"
SEED_VENDI = 5.7984950145107295  # results/data_select_and_evaluation/evaluation_res.json, row "random"


def seed_embeddings() -> np.ndarray:
    return np.asarray(json.loads((FIXTURES / "agent_intent_embeddings.json").read_text()), dtype=np.float64)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_reproduces_the_seed_value():
    x = seed_embeddings()
    assert x.shape == (10, 768)
    assert vendi_score(x) == pytest.approx(SEED_VENDI, abs=1e-9)


def test_seed_value_through_the_dual_and_streaming_paths():
    x = seed_embeddings()
    acc = VendiAccumulator()
    for chunk in (x[:3], x[3:4], x[4:]):
        acc.add(chunk)
    assert acc.count == 10
    assert acc.score() == pytest.approx(SEED_VENDI, abs=1e-9)


def test_hand_computed_cases():
    # n identical records: one effective record; n orthogonal ones: n
    assert vendi_score(np.tile([[1.0, 2.0, 3.0]], (5, 1))) == pytest.approx(1.0, abs=1e-12)
    assert vendi_score(np.eye(4)) == pytest.approx(4.0, abs=1e-12)
    assert vendi_score(np.eye(4), q="inf") == pytest.approx(4.0, abs=1e-12)
    # two at 60 degrees: K = [[1, .5], [.5, 1]], K/2 has eigenvalues .75 and .25
    x = np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert vendi_score(x) == pytest.approx(math.exp(h), abs=1e-12)
    assert vendi_score(x, q=2) == pytest.approx(1 / (0.75**2 + 0.25**2), abs=1e-12)
    assert vendi_score(x, q="inf") == pytest.approx(1 / 0.75, abs=1e-12)
    assert vendi_score(x, q=0) == pytest.approx(2.0)
    # scale does not matter under the cosine kernel
    assert vendi_score(x * [[3.0], [0.2]]) == pytest.approx(math.exp(h), abs=1e-12)


def test_hill_number_orders():
    p = np.array([0.5, 0.25, 0.25, 0.0])
    assert hill_number(p, 1) == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25))))
    assert hill_number(p, 2) == pytest.approx(1 / (0.25 + 0.0625 * 2))
    assert hill_number(p, 3) == pytest.approx((0.125 + 2 * 0.25**3) ** (1 / (1 - 3)))
    assert hill_number(p, float("inf")) == pytest.approx(2.0)
    assert hill_number(p, 0) == 3.0
    # orders are ordered: D_0 >= D_1 >= D_2 >= D_inf
    assert hill_number(p, 0) >= hill_number(p, 1) >= hill_number(p, 2) >= hill_number(p, "inf")
    with pytest.raises(ValueError):
        hill_number(p, -1)
    with pytest.raises(ValueError):
        hill_number(p, "many")


@pytest.mark.parametrize("n,d", [(40, 64), (300, 16), (400, 8)])
@pytest.mark.parametrize("q", [1, 2, "inf", 0.5, 3.5])
def test_agrees_with_vendi_score_package(n, d, q):
    vendi = pytest.importorskip("vendi_score.vendi")
    rng = np.random.default_rng(n * 31 + d)
    # correlated features so that the spectrum is far from flat
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    ours = vendi_score(x, q=q)
    # Each reference form diagonalises one matrix whole: score_K the n x n one, score_dual the d x d
    # one. The larger of the two has |n - d| round-off eigenvalues of ~1e-17 that orders q < 1
    # amplify (see the module docstring; we drop them), so for q < 1 only the smaller form compares.
    robust = q in (1, 2, "inf", 3.5)
    if n >= d or robust:
        theirs_dual = float(vendi.score_dual(x, q=q))
        assert ours == pytest.approx(theirs_dual, abs=1e-9, rel=0)
    if n <= d or robust:
        xn = unit(x)
        theirs_k = float(vendi.score_K(xn @ xn.T, q=q))
        assert ours == pytest.approx(theirs_k, abs=1e-9, rel=0)
        assert vendi_score_from_kernel(xn @ xn.T, q=q) == pytest.approx(theirs_k, abs=1e-9, rel=0)


def test_weighted_agrees_with_vendi_score_package():
    vendi = pytest.importorskip("vendi_score.vendi")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, 12))
    w = rng.uniform(0.1, 3.0, size=50)
    xn = unit(x)
    theirs = float(vendi.score_K(xn @ xn.T, p=w / w.sum()))
    assert vendi_score(x, weights=w) == pytest.approx(theirs, abs=1e-9)
    # integer weights are the same as repeating records
    counts = rng.integers(1, 4, size=50)
    assert vendi_score(x, weights=counts) == pytest.approx(vendi_score(np.repeat(x, counts, axis=0)), abs=1e-9)


def test_dual_equals_primal_on_both_sides_of_n_equals_d():
    rng = np.random.default_rng(3)
    for n in (31, 32, 33):
        x = rng.normal(size=(n, 32))
        xn = unit(x)
        assert vendi_score(x) == pytest.approx(vendi_score_from_kernel(xn @ xn.T), abs=1e-9)


def test_streaming_matches_one_shot_and_merges_like_partitions():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(5000, 24)).astype(np.float32)
    whole = vendi_score(x)
    streamed = VendiAccumulator()
    for start in range(0, len(x), 777):
        streamed.add(x[start : start + 777], chunk_rows=100)
    assert streamed.count == 5000
    assert streamed.score() == pytest.approx(whole, abs=1e-9)
    # per-partition accumulators summed, as a Ray executor would
    parts = [VendiAccumulator().add(p) for p in np.array_split(x, 4)]
    total = parts[0] + parts[1]
    total.merge(parts[2]).merge(parts[3])
    assert total.count == 5000
    assert total.score(2) == pytest.approx(vendi_score(x, q=2), abs=1e-9)
    assert total.scores((1, "inf")) == pytest.approx({"q=1": whole, "q=inf": vendi_score(x, q="inf")}, abs=1e-9)


def test_more_spread_scores_higher():
    rng = np.random.default_rng(5)
    centre = rng.normal(size=32)
    tight = centre + 0.1 * rng.normal(size=(200, 32))
    loose = centre + 3.0 * rng.normal(size=(200, 32))
    assert vendi_score(loose) > vendi_score(tight) + 5


def test_spectrum_sums_to_one_and_drops_noise():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 3)) @ rng.normal(size=(3, 50))  # rank 3 in 50 dimensions
    spectrum = vendi_spectrum(x)
    assert spectrum.sum() == pytest.approx(1.0, abs=1e-12)
    assert len(spectrum) == 3
    assert vendi_score(x, q=0) == 3.0


def test_vendi_scores_keys():
    x = np.eye(3)
    assert vendi_scores(x, (1, 2, "inf", 0.5)) == pytest.approx({"q=1": 3.0, "q=2": 3.0, "q=inf": 3.0, "q=0.5": 3.0})


def test_errors_say_what_to_change():
    with pytest.raises(ValueError, match="row 1"):
        vendi_score(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="2-D"):
        vendi_score(np.ones(3))
    with pytest.raises(ValueError, match="empty"):
        VendiAccumulator().score()
    acc = VendiAccumulator(4)
    with pytest.raises(ValueError, match="dimensions"):
        acc.add(np.ones((2, 3)))
    with pytest.raises(ValueError, match="weights"):
        vendi_score(np.eye(3), weights=[1, 2])
    with pytest.raises(ValueError, match="cannot merge"):
        VendiAccumulator().add(np.eye(3)).merge(VendiAccumulator().add(np.eye(4)))
    assert unit_rows(np.array([[3.0, 4.0]])) == pytest.approx(np.array([[0.6, 0.8]]))


def test_accumulator_travels_between_processes():
    """A Ray task returns its partition's accumulator by pickling it; nothing may be lost on the way."""
    import pickle

    rng = np.random.default_rng(13)
    x = rng.normal(size=(400, 16))
    part = pickle.loads(pickle.dumps(VendiAccumulator().add(x[:250])))
    total = part.merge(VendiAccumulator().add(x[250:]))
    assert total.count == 400
    assert total.score() == pytest.approx(vendi_score(x), abs=1e-9)
