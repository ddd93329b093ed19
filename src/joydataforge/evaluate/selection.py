"""Choosing a diverse subset: k-center greedy (farthest-point traversal) and seeded random selection.

k-center greedy picks, again and again, the record farthest from everything picked so far. It is
the classic 2-approximation of the k-center problem (Gonzalez 1985): the k picks cover the data
with a radius at most twice the best possible, which is why it keeps rare regions of a dataset
that random sampling drops. The state is one array, each record's distance to its nearest pick,
so one step is one pass over the embeddings: O(n k d) in all, no n x n matrix.

The textbook traversal makes one pass over all n x d embeddings per pick, a memory-bound
matrix-vector product (100,000 x 384 float32 is 150 MB per pick, 1,000 picks ~ 20 s here). We
evaluate it lazily instead (:class:`_LazyTraversal`): distances only shrink as picks are added, so a
block of rows whose stale farthest distance is already below the best candidate cannot hold the next
pick and need not be updated yet; a block that must be updated catches up on all the picks it
missed in one matrix-matrix product. Same picks, a fraction of the time.

Cosine distance is handled as the Euclidean distance between unit vectors, ``sqrt(2 - 2 cos)``,
which orders records exactly as ``1 - cos`` does.
"""
from __future__ import annotations

from typing import Any, Hashable, Literal, Mapping, Sequence

import numpy as np

from .entities import count_diversity, entity_metrics
from .vendi import VendiAccumulator

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


def k_center_greedy(x: np.ndarray, k: int, *, metric: Metric = "cosine", seed: int = 0,
                    start: int | None = None, already_selected: Sequence[int] | np.ndarray | None = None,
                    block_rows: int = 2048) -> np.ndarray:
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
    # Rows are visited in an order that groups similar records into the same blocks, so that the
    # lazy traversal can leave whole regions alone (see _LazyTraversal); picks are mapped back.
    order = _locality_order(data, block_rows, seed)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    traversal = _LazyTraversal(data[order], sq[order], block_rows, capacity=chosen.size + k)
    for index in chosen:
        traversal.pick(int(position[index]))
    while len(picked) < k:
        nxt = traversal.farthest()
        traversal.pick(nxt)
        picked.append(int(order[nxt]))
    return np.asarray(picked, dtype=np.int64)


def _locality_order(data: np.ndarray, block_rows: int, seed: int) -> np.ndarray:
    """A row order that puts records near the same pivot (a seeded sample of rows) next to each other.

    Only speed depends on it: blocks of similar records have distinct distance bounds, and a pick
    in one region leaves the other regions' blocks untouched. Costs one n x 64 product.
    """
    n = data.shape[0]
    if n <= block_rows:
        return np.arange(n)
    pivots = data[np.random.default_rng(seed + 1).choice(n, size=min(64, n), replace=False)]
    nearest = np.empty(n, dtype=np.int64)
    for lo in range(0, n, 65536):
        nearest[lo:lo + 65536] = np.argmax(data[lo:lo + 65536] @ pivots.T, axis=1)
    return np.argsort(nearest, kind="stable")


class _LazyTraversal:
    """Distances to the nearest pick, brought up to date one block of rows at a time, only when needed.

    Each block keeps the number of picks it has seen and an upper bound on its farthest record
    (distances only shrink as picks are added, so a stale maximum is still an upper bound). To find
    the farthest record we bring blocks up to date in order of their bounds and stop as soon as the
    best exact distance found beats every remaining bound. Bringing a block up to date against the
    ``m`` picks it missed is one (rows x d) @ (d x m) product: BLAS-3, compute-bound, where the
    textbook traversal does one memory-bound matrix-vector pass over all the data per pick.
    """

    def __init__(self, data: np.ndarray, sq: np.ndarray, block_rows: int, capacity: int):
        self.data = data
        self.sq = sq
        self.n = data.shape[0]
        self.block_rows = block_rows
        self.starts = np.arange(0, self.n, block_rows)
        blocks = len(self.starts)
        self.min_d2 = np.full(self.n, np.inf, dtype=np.float32)  # squared distance to the nearest pick
        self.seen = np.zeros(blocks, dtype=np.int64)  # picks each block is up to date with
        self.bound = np.full(blocks, np.inf, dtype=np.float64)  # >= the block's largest min_d2
        self.centers = np.empty((capacity, data.shape[1]), dtype=np.float32)
        self.center_sq = np.empty(capacity, dtype=np.float32)
        self.count = 0

    def pick(self, index: int) -> None:
        self.centers[self.count] = self.data[index]
        self.center_sq[self.count] = self.sq[index]
        self.count += 1
        self.min_d2[index] = -np.inf  # never again, even when other records tie at distance 0

    def _refresh(self, block: int) -> tuple[float, int]:
        lo = int(self.starts[block])
        hi = min(lo + self.block_rows, self.n)
        new = slice(int(self.seen[block]), self.count)
        if new.start < new.stop:
            d2 = self.data[lo:hi] @ self.centers[new].T
            d2 *= -2.0
            d2 += self.center_sq[new][None, :]
            nearest = d2.min(axis=1) + self.sq[lo:hi]
            np.maximum(nearest, 0.0, out=nearest)
            np.minimum(self.min_d2[lo:hi], nearest, out=self.min_d2[lo:hi])
            self.seen[block] = self.count
        local = int(np.argmax(self.min_d2[lo:hi]))
        value = float(self.min_d2[lo + local])
        self.bound[block] = value
        return value, lo + local

    def farthest(self) -> int:
        best_value, best_index = -np.inf, -1
        for block in np.argsort(-self.bound, kind="stable"):
            if self.bound[block] < best_value:
                break  # no record of this block (or of any later one) can beat the best found
            value, index = self._refresh(int(block))
            if value > best_value or (value == best_value and index < best_index):
                best_value, best_index = value, index
        return best_index


def random_selection(n: int, k: int, *, seed: int = 0,
                     already_selected: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """``k`` distinct record indices drawn uniformly with ``seed``, none of ``already_selected``.

    The baseline every diverse selection should beat; the same seed gives the same draw.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    chosen = _check_indices(already_selected, n, "already_selected")
    pool = np.setdiff1d(np.arange(n, dtype=np.int64), chosen, assume_unique=True)
    k = min(k, pool.size)
    return np.random.default_rng(seed).choice(pool, size=k, replace=False).astype(np.int64)


def select(x: np.ndarray, k: int, *, method: Literal["k_center", "random"] = "k_center", metric: Metric = "cosine",
           seed: int = 0, already_selected: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
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
        part = idx[start:start + 256]
        d2 = sq[:, None] - 2.0 * (data @ data[part].T) + sq[part][None, :]
        worst = np.minimum(worst, np.sqrt(np.maximum(d2, 0.0)).min(axis=1))
    radius = float(worst.max())
    return radius * radius / 2.0 if metric == "cosine" else radius


def subset_metrics(x: np.ndarray | None, indices: Sequence[int] | np.ndarray, *,
                   entity_maps: Sequence[Mapping[str, Sequence[str]]] | None = None,
                   labels: Sequence[Hashable] | None = None, n: int | None = None,
                   orders: Sequence[Any] = (1,), top_k: int = 20) -> dict[str, dict[str, Any]]:
    """Metrics of the selected records next to the full set's: ``{"full": {...}, "selected": {...}}``.

    Each side has ``records``, and where the inputs are given: ``vendi`` (Vendi scores of the
    embeddings ``x`` keyed ``q=1``..., cosine kernel), ``entities`` (:func:`entity_metrics` of
    ``entity_maps``, one per record) and ``labels`` (:func:`count_diversity` of ``labels``, one
    hashable per record, e.g. a task label). ``n`` is the record count when ``x`` is ``None``.
    """
    total = len(x) if x is not None else len(entity_maps) if entity_maps is not None else len(labels) if labels is not None else n
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
