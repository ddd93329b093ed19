"""Choosing a diverse subset: k-center greedy (farthest-point traversal) and seeded random selection.

k-center greedy picks, again and again, the record farthest from everything picked so far. It is
the classic 2-approximation of the k-center problem (Gonzalez 1985): the k picks cover the data
with a radius at most twice the best possible, which is why it keeps rare regions of a dataset
that random sampling drops. The state is one array, each record's distance to its nearest pick:
O(n k d) at worst, never an n x n matrix.

The textbook traversal makes one pass over all n x d embeddings per pick, a memory-bound
matrix-vector product (100,000 x 384 float32 is 150 MB per pick; 1,000 picks took ~60 s on our
busy 2-core box, against ~4 s for this module: ``bench/vendi.py``). We evaluate it lazily instead (:class:`_LazyTraversal`): distances only shrink as picks are added, so
each record's last computed distance is an upper bound, and the next pick is found by updating only
the records whose bounds are at the top until the best updated distance beats every other bound.
Same picks as the textbook loop (up to float rounding between near-equal distances), a fraction of
the work.

Cosine distance is handled as the Euclidean distance between unit vectors, ``sqrt(2 - 2 cos)``,
which orders records exactly as ``1 - cos`` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Mapping, Sequence
from contextlib import AbstractContextManager as ContextManager
from typing import Any, Literal

import numpy as np

from ..text.vendi import VendiAccumulator
from .entities import count_diversity, entity_metrics

Metric = Literal["cosine", "euclidean"]


def _prepare(x: np.ndarray, metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """float32 rows (unit rows for cosine) and their squared norms."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', not {metric!r}")
    data = np.asarray(x, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (records x dimensions), got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError("embeddings contain NaN or infinite values")
    if metric == "cosine":
        norms = np.linalg.norm(data, axis=1)
        zero = np.flatnonzero(norms == 0)
        if zero.size:
            raise ValueError(f"{zero.size} zero embedding row(s) (first: row {int(zero[0])}) have no cosine distance")
        data = data / norms[:, None]
        return data, np.ones(data.shape[0], dtype=np.float32)
    return np.ascontiguousarray(data), np.einsum("ij,ij->i", data, data)


def _check_indices(indices: Sequence[int] | np.ndarray | None, n: int, what: str) -> np.ndarray:
    if indices is None:
        return np.zeros(0, dtype=np.int64)
    arr = np.asarray(indices, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{what} must be record indices in [0, {n}); got {int(arr.min())}..{int(arr.max())}")
    return np.unique(arr)


def k_center_greedy(
    x: np.ndarray,
    k: int,
    *,
    metric: Metric = "cosine",
    seed: int = 0,
    start: int | None = None,
    already_selected: Sequence[int] | np.ndarray | None = None,
    block_rows: int = 2048,
) -> np.ndarray:
    """Indices of ``k`` records chosen by farthest-point traversal, in the order they were picked.

    Without ``already_selected`` the first pick is ``start``, or a record drawn with ``seed``; the
    rest follow deterministically. With ``already_selected`` (e.g.
    records kept in an earlier round, or a reference set appended to ``x``) those count as picked
    and the ``k`` new picks are the records farthest from them; they are not returned. Never picks
    a record twice: exact duplicates of picked records come last. Returns fewer than ``k`` indices
    only when fewer records remain. ``block_rows`` trades memory for speed and never changes the
    result.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    if block_rows < 1:
        raise ValueError("block_rows must be >= 1")
    data, sq = _prepare(x, metric)
    n = data.shape[0]
    chosen = _check_indices(already_selected, n, "already_selected")
    k = min(k, n - chosen.size)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if chosen.size == 0:
        first = int(start) if start is not None else int(np.random.default_rng(seed).integers(n))
        if not 0 <= first < n:
            raise ValueError(f"start must be a record index in [0, {n}), not {start}")
        chosen = np.asarray([first], dtype=np.int64)
        picked = [first]
    else:
        picked = []
    traversal = _LazyTraversal(data, sq, block_rows, capacity=chosen.size + k)
    with _one_blas_thread():
        for index in chosen:
            traversal.pick(int(index))
        traversal.refresh_all()
        while len(picked) < k:
            nxt = traversal.farthest()
            traversal.pick(nxt)
            picked.append(nxt)
    return np.asarray(picked, dtype=np.int64)


def _one_blas_thread() -> ContextManager[Any]:
    """Single-threaded BLAS for the traversal's many small products, when threadpoolctl is there.

    Each product is tiny (tens of rows); with several BLAS threads the hand-off costs more than the
    arithmetic, and on a busy machine a thread waiting for a core stalls every product (we measured
    a 5x slow-down on 2 shared cores).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class _LazyTraversal:
    """Each record's squared distance to its nearest pick, brought up to date only when it matters.

    ``bound[p]`` is exact for the picks record ``p`` has seen (``seen[p]`` of them) and, because
    distances only shrink as picks are added, an upper bound on its true distance. To find the
    farthest record we bring the records with the highest bounds up to date, a batch at a time
    (one (batch x d) @ (d x missed picks) product), and stop as soon as the best exact distance
    found is at least every other record's bound: no other record can be farther. Most picks only
    touch the few dozen records at the top, so a pick costs a small matrix product instead of a
    pass over all n x d embeddings.
    """

    POOL = 4096

    def __init__(self, data: np.ndarray, sq: np.ndarray, block_rows: int, capacity: int):
        self.pool: np.ndarray | None = None
        self.floor = -np.inf
        self.data = data
        self.sq = sq
        self.n = data.shape[0]
        self.block_rows = block_rows
        self.bound = np.full(self.n, np.inf, dtype=np.float32)
        self.seen = np.zeros(self.n, dtype=np.int64)
        self.centers = np.empty((capacity, data.shape[1]), dtype=np.float32)
        self.center_sq = np.empty(capacity, dtype=np.float32)
        self.count = 0

    def pick(self, index: int) -> None:
        self.centers[self.count] = self.data[index]
        self.center_sq[self.count] = self.sq[index]
        self.count += 1
        self.bound[index] = -np.inf  # never again, even when other records tie at distance 0

    def _update(self, rows: np.ndarray | slice, first_missed: int) -> None:
        """Bring ``rows`` up to date with picks ``first_missed..count`` (earlier ones change nothing)."""
        new = slice(first_missed, self.count)
        d2 = self.data[rows] @ self.centers[new].T
        d2 *= -2.0
        d2 += self.center_sq[new][None, :]
        nearest = d2.min(axis=1)
        nearest += self.sq[rows]
        np.maximum(nearest, 0.0, out=nearest)
        np.minimum(self.bound[rows], nearest, out=nearest)
        self.bound[rows] = nearest
        self.seen[rows] = self.count

    def refresh_all(self) -> None:
        """One full pass, in blocks: after the first picks every bound is stale (infinite)."""
        for lo in range(0, self.n, self.block_rows):
            rows = slice(lo, min(lo + self.block_rows, self.n))
            self._update(rows, 0)

    def _build_pool(self) -> None:
        """The ``POOL`` records with the highest bounds, and the highest bound of all the others.

        Bounds only go down, so every record outside the pool stays at or below ``floor`` until the
        pool is rebuilt; most picks then only look at the pool (an argpartition of 4,096 values
        instead of n).
        """
        size = min(self.POOL, self.n)
        if size == self.n:
            self.pool, self.floor = np.arange(self.n), -np.inf
            return
        split = self.n - size - 1
        part = np.argpartition(self.bound, split)
        self.pool = part[split + 1 :]
        self.floor = float(self.bound[part[split]])

    def farthest(self) -> int:
        while True:
            if self.pool is None:
                self._build_pool()
            pool = self.pool
            assert pool is not None
            batch = 32
            while True:
                batch = min(batch, pool.size)
                if batch == pool.size:
                    top, rest = pool, self.floor
                else:
                    split = pool.size - batch - 1
                    part = np.argpartition(self.bound[pool], split)
                    top = pool[part[split + 1 :]]
                    rest = max(float(self.bound[pool[part[split]]]), self.floor)
                stale = top[self.seen[top] < self.count]
                if stale.size:
                    self._update(stale, int(self.seen[stale].min()))
                values = self.bound[top]
                best = int(np.argmax(values))
                if values[best] >= rest:
                    return int(top[best])  # nothing else can be farther: its bound is <= rest
                if batch == pool.size:
                    break  # the whole pool fell below the records outside it: rebuild
                batch *= 4
            self.pool = None


def random_selection(
    n: int, k: int, *, seed: int = 0, already_selected: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """``k`` distinct record indices drawn uniformly with ``seed``, none of ``already_selected``.

    The baseline every diverse selection should beat; the same seed gives the same draw.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    chosen = _check_indices(already_selected, n, "already_selected")
    pool = np.setdiff1d(np.arange(n, dtype=np.int64), chosen, assume_unique=True)
    k = min(k, pool.size)
    return np.random.default_rng(seed).choice(pool, size=k, replace=False).astype(np.int64)


def select(
    x: np.ndarray,
    k: int,
    *,
    method: Literal["k_center", "random"] = "k_center",
    metric: Metric = "cosine",
    seed: int = 0,
    already_selected: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Dispatch by name, for configs and the command line: ``k_center`` (default) or ``random``."""
    if method in ("k_center", "k-center", "kcenter"):
        return k_center_greedy(x, k, metric=metric, seed=seed, already_selected=already_selected)
    if method == "random":
        return random_selection(len(x), k, seed=seed, already_selected=already_selected)
    raise ValueError(f"unknown selection method {method!r}: use 'k_center' or 'random'")


def coverage_radius(x: np.ndarray, indices: Sequence[int] | np.ndarray, *, metric: Metric = "cosine") -> float:
    """The k-center objective: the largest distance from any record to its nearest selected one.

    Cosine: reported as a cosine distance ``1 - cos``; Euclidean: as a distance. Lower is better.
    """
    idx = _check_indices(indices, len(x), "indices")
    if idx.size == 0:
        raise ValueError("no indices selected")
    data, sq = _prepare(x, metric)
    worst = np.full(data.shape[0], np.inf, dtype=np.float32)
    for start in range(0, idx.size, 256):
        part = idx[start : start + 256]
        d2 = sq[:, None] - 2.0 * (data @ data[part].T) + sq[part][None, :]
        worst = np.minimum(worst, np.sqrt(np.maximum(d2, 0.0)).min(axis=1))
    radius = float(worst.max())
    return radius * radius / 2.0 if metric == "cosine" else radius


def subset_metrics(
    x: np.ndarray | None,
    indices: Sequence[int] | np.ndarray,
    *,
    entity_maps: Sequence[Mapping[str, Sequence[str]]] | None = None,
    labels: Sequence[Hashable] | None = None,
    n: int | None = None,
    orders: Sequence[Any] = (1,),
    top_k: int = 20,
) -> dict[str, dict[str, Any]]:
    """Metrics of the selected records next to the full set's: ``{"full": {...}, "selected": {...}}``.

    Each side has ``records``, and where the inputs are given: ``vendi`` (Vendi scores of the
    embeddings ``x`` keyed ``q=1``..., cosine kernel), ``entities`` (:func:`entity_metrics` of
    ``entity_maps``, one per record) and ``labels`` (:func:`count_diversity` of ``labels``, one
    hashable per record, e.g. a task label). ``n`` is the record count when ``x`` is ``None``.
    """
    total = (
        len(x)
        if x is not None
        else len(entity_maps)
        if entity_maps is not None
        else len(labels)
        if labels is not None
        else n
    )
    if total is None:
        raise ValueError("give embeddings, entity maps, labels or n")
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= total):
        raise ValueError(f"indices must be in [0, {total})")
    result: dict[str, dict[str, Any]] = {"full": {"records": int(total)}, "selected": {"records": int(idx.size)}}
    if x is not None:
        full = VendiAccumulator().add(np.asarray(x))
        result["full"]["vendi"] = full.scores(orders)
        if idx.size:
            result["selected"]["vendi"] = VendiAccumulator().add(np.asarray(x)[idx]).scores(orders)
    if entity_maps is not None:
        result["full"]["entities"] = entity_metrics(entity_maps, top_k=top_k)
        result["selected"]["entities"] = entity_metrics([entity_maps[i] for i in idx], top_k=top_k)
    if labels is not None:
        result["full"]["labels"] = count_diversity(_count(labels))
        result["selected"]["labels"] = count_diversity(_count([labels[i] for i in idx]))
    return result


def _count(values: Sequence[Hashable]) -> dict[Hashable, int]:
    counts: dict[Hashable, int] = {}
    for value in values:
        if isinstance(value, list):  # a multi-label record counts each label
            for item in value:
                counts[item] = counts.get(item, 0) + 1
        else:
            counts[value] = counts.get(value, 0) + 1
    return counts
