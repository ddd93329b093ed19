"""The Vendi score: how many really different records a dataset holds.

Friedman & Dieng (2023) define it for ``n`` samples and a positive semi-definite similarity matrix
``K`` with ``K[i, i] = 1`` as ``exp(H(lambda))``, where ``lambda`` are the eigenvalues of ``K / n``
(they sum to 1) and ``H`` is their Shannon entropy, natural log. It reads as an effective number
of distinct samples: ``n`` identical records score 1, ``n`` orthogonal ones score ``n``.

We use the cosine kernel, ``K = X X^T`` for the rows of ``X`` scaled to unit length. Two facts make
it cheap at scale:

* ``X X^T / n`` (n x n) and ``X^T X / n`` (d x d) have the same nonzero eigenvalues, so when
  ``n > d`` we diagonalise the d x d matrix: one pass over the data (O(n d^2), BLAS ``syrk``) and
  an O(d^3) eigendecomposition, exact, not an approximation. A million 384-d records cost seconds.
* ``X^T X`` is a sum over records, so it can be built chunk by chunk, or per partition on a
  cluster and added up: :class:`VendiAccumulator`.

Order ``q`` (the paper's section on Hill numbers) swaps the Shannon entropy for the Renyi entropy
of order ``q``: ``q=1`` is the usual score, ``q=2`` is ``1 / sum(lambda^2)`` and weighs the big
eigenvalues more, ``q=inf`` is ``1 / max(lambda)`` (the most conservative), ``q=0`` is the rank.
Small ``q`` gives rare directions more say, large ``q`` only counts the dominant ones.

Eigenvalues below the round-off floor of the eigensolver are dropped before the entropy. They
are noise (a rank-d matrix of size n > d has n - d true zeros that come out as +-1e-17) and do
not change ``q >= 1`` scores, but for ``q < 1`` they would each add ``(1e-17)^q``, which is why
this module and the n x n ``vendi-score`` package can disagree for ``q < 1`` when ``n > d``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

Order = float | int | str
"""An order q: a number >= 0, ``float('inf')`` or the string ``"inf"``."""

DEFAULT_CHUNK_ROWS = 16384
"""Rows per BLAS call when accumulating; bounds the float64 working copy to ~50 MB at d=384."""


def _as_order(q: Order) -> float:
    if isinstance(q, str):
        if q.strip().lower() in ("inf", "infinity"):
            return math.inf
        raise ValueError(f"order q must be a number >= 0 or 'inf', not {q!r}")
    value = float(q)
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"order q must be >= 0 (or 'inf'), not {q!r}")
    return value


def _clean_spectrum(eigenvalues: np.ndarray, matrix_size: int) -> np.ndarray:
    """Positive eigenvalues above the solver's round-off floor, as float64.

    The floor is ``size * eps * largest``, the tolerance ``numpy.linalg.matrix_rank`` uses: the
    error of a symmetric eigensolver is a small multiple of ``eps * ||A||``.
    """
    w = np.asarray(eigenvalues, dtype=np.float64)
    if w.size == 0:
        return w
    top = float(w.max())
    if top <= 0:
        return w[:0]
    floor = max(matrix_size, 1) * np.finfo(np.float64).eps * top
    return w[w > floor]


def hill_number(p: np.ndarray, q: Order = 1) -> float:
    """``exp(Renyi entropy of order q)`` of a distribution ``p`` (natural log), the effective count.

    ``p`` need not be normalised exactly (eigenvalues of ``K/n`` sum to 1 up to round-off, or to
    less if the caller passed a zero row); it is used as given, like the Vendi paper does, so the
    score equals the one computed from the full n x n kernel. Zeros are ignored (0 log 0 = 0).
    """
    order = _as_order(q)
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0]
    if p.size == 0:
        return 0.0
    if order == 1:
        return float(np.exp(-np.sum(p * np.log(p))))
    if math.isinf(order):
        return float(1.0 / p.max())
    if order == 0:
        return float(p.size)
    return float(np.exp(np.log(np.sum(p**order)) / (1.0 - order)))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (the cosine kernel's feature map), as float64.

    A zero row has no direction, so its cosine with anything is undefined; we refuse it rather
    than silently scoring it as "similar to nothing" (which would inflate the score).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (records x dimensions), got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    bad = np.flatnonzero(~(norms > 0) | ~np.isfinite(norms))
    if bad.size:
        raise ValueError(
            f"{bad.size} embedding row(s) are zero or not finite (first: row {int(bad[0])}); "
            "the cosine kernel needs a direction for every record: drop or re-embed them"
        )
    return x / norms[:, None]


def vendi_spectrum(x: np.ndarray, *, normalize: bool = True, weights: np.ndarray | None = None) -> np.ndarray:
    """Eigenvalues of ``K/n`` (or of the ``weights``-weighted kernel), largest first, noise dropped.

    Picks the smaller of the n x n and the d x d matrix; both give the same nonzero eigenvalues.
    ``normalize=False`` uses the rows as they are (a linear kernel; rows should then have unit
    norm already, or the eigenvalues will not sum to 1).
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"need a 2-D array with at least one embedding row, got shape {x.shape}")
    n, d = x.shape
    p = _weights(weights, n)
    if n > d:
        # rows are normalised chunk by chunk inside the accumulator: no float64 copy of all of x
        acc = VendiAccumulator(d)
        acc.add(x, weights=None if weights is None else p, normalize=normalize)
        return acc.spectrum()
    x = unit_rows(x) if normalize else x.astype(np.float64)
    xs = x * np.sqrt(p)[:, None]
    matrix = xs @ xs.T
    w = np.linalg.eigvalsh(matrix)
    return np.sort(_clean_spectrum(w, matrix.shape[0]))[::-1]


def _weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    p = np.asarray(weights, dtype=np.float64).reshape(-1)
    if p.shape[0] != n:
        raise ValueError(f"weights has {p.shape[0]} entries for {n} records")
    if np.any(p < 0) or not np.all(np.isfinite(p)) or p.sum() <= 0:
        raise ValueError("weights must be finite, >= 0 and not all zero")
    return p / p.sum()


def vendi_score(x: np.ndarray, q: Order = 1, *, normalize: bool = True, weights: np.ndarray | None = None) -> float:
    """Vendi score of order ``q`` of embeddings ``x`` (n x d) under the cosine kernel.

    ``q=1`` (default) is the score of the paper and of the seed's tool; see the module docstring
    for the other orders. ``weights`` (one per record, any scale) gives records different mass,
    e.g. a cluster's size after dedup; ``None`` is uniform.
    """
    return hill_number(vendi_spectrum(x, normalize=normalize, weights=weights), q)


def vendi_score_from_kernel(k: np.ndarray, q: Order = 1, *, weights: np.ndarray | None = None) -> float:
    """Vendi score of a given n x n similarity matrix (PSD, ones on the diagonal).

    For kernels other than the cosine one (e.g. an RBF over embeddings, or a string kernel).
    Costs O(n^3): for embeddings use :func:`vendi_score`, which never builds the n x n matrix.
    """
    k = np.asarray(k, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ValueError(f"kernel must be a non-empty square matrix, got shape {k.shape}")
    n = k.shape[0]
    p = _weights(weights, n)
    s = np.sqrt(p)
    w = np.linalg.eigvalsh(k * np.outer(s, s))
    return hill_number(_clean_spectrum(w, n), q)


class VendiAccumulator:
    """The Vendi score built from chunks: keeps only the d x d sum ``sum_i w_i x_i x_i^T``.

    Memory is O(d^2) whatever the number of records, chunks can come from a stream, and two
    accumulators over disjoint parts (e.g. Ray partitions) add up with :meth:`merge` or ``+``
    to exactly the accumulator of the whole: this is what lets a cluster compute the score of a
    dataset that no machine holds.

    >>> acc = VendiAccumulator()
    >>> for chunk in chunks:          # each an (m, d) array
    ...     acc.add(chunk)
    >>> acc.score()                   # q=1; acc.score(2), acc.score("inf") ...

    The sums are kept in float64 whatever the input dtype, so a million float32 rows lose no
    precision to accumulation.
    """

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.gram: np.ndarray | None = None if dim is None else np.zeros((dim, dim), dtype=np.float64)
        self.total_weight = 0.0
        self.count = 0

    def add(
        self,
        chunk: np.ndarray,
        *,
        weights: np.ndarray | None = None,
        normalize: bool = True,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> "VendiAccumulator":
        """Add the records of ``chunk`` (m x d); ``weights`` gives each a mass (default 1 each).

        Large chunks are processed ``chunk_rows`` rows at a time so that the float64 copy made for
        the unit-norm rows stays small.
        """
        chunk = np.asarray(chunk)
        if chunk.ndim != 2:
            raise ValueError(f"a chunk must be a 2-D array (records x dimensions), got shape {chunk.shape}")
        m, d = chunk.shape
        if self.dim is None:
            self.dim = d
            self.gram = np.zeros((d, d), dtype=np.float64)
        elif d != self.dim:
            raise ValueError(f"chunk has {d} dimensions, this accumulator holds {self.dim}")
        if weights is not None:
            w_all = np.asarray(weights, dtype=np.float64).reshape(-1)
            if w_all.shape[0] != m:
                raise ValueError(f"weights has {w_all.shape[0]} entries for a chunk of {m} records")
            if np.any(w_all < 0) or not np.all(np.isfinite(w_all)):
                raise ValueError("weights must be finite and >= 0")
        assert self.gram is not None
        for start in range(0, m, chunk_rows):
            part = chunk[start : start + chunk_rows]
            part = unit_rows(part) if normalize else np.asarray(part, dtype=np.float64)
            if weights is None:
                # x.T @ x on the same buffer lets numpy use the symmetric rank-k update (half the flops)
                self.gram += part.T @ part
                self.total_weight += part.shape[0]
            else:
                w = w_all[start : start + chunk_rows]
                scaled = part * np.sqrt(w)[:, None]
                self.gram += scaled.T @ scaled
                self.total_weight += float(w.sum())
        self.count += m
        return self

    def merge(self, other: "VendiAccumulator") -> "VendiAccumulator":
        """Add another accumulator's records into this one (in place) and return self."""
        if other.gram is None:
            return self
        if self.gram is None:
            self.dim = other.dim
            self.gram = np.zeros_like(other.gram)
        if other.dim != self.dim:
            raise ValueError(f"cannot merge a {other.dim}-d accumulator into a {self.dim}-d one")
        self.gram += other.gram
        self.total_weight += other.total_weight
        self.count += other.count
        return self

    def __add__(self, other: "VendiAccumulator") -> "VendiAccumulator":
        result = VendiAccumulator(self.dim)
        return result.merge(self).merge(other)

    def spectrum(self) -> np.ndarray:
        """Eigenvalues of the weighted ``K/n``, largest first, round-off noise dropped."""
        if self.gram is None or self.total_weight <= 0:
            raise ValueError("no records added: the Vendi score of an empty set is undefined")
        matrix = self.gram / self.total_weight
        w = np.linalg.eigvalsh((matrix + matrix.T) / 2)  # symmetrise away round-off before the solver
        return np.sort(_clean_spectrum(w, matrix.shape[0]))[::-1]

    def score(self, q: Order = 1) -> float:
        """Vendi score of order ``q`` of everything added so far."""
        return hill_number(self.spectrum(), q)

    def scores(self, orders: Iterable[Order] = (1, 2, "inf")) -> dict[str, float]:
        """Several orders from one eigendecomposition, keyed ``q=1``, ``q=2``, ``q=inf``..."""
        spectrum = self.spectrum()
        return {f"q={_order_label(q)}": hill_number(spectrum, q) for q in orders}


def _order_label(q: Order) -> str:
    value = _as_order(q)
    if math.isinf(value):
        return "inf"
    return str(int(value)) if value.is_integer() else repr(value)


def vendi_scores(
    x: np.ndarray, orders: Iterable[Order] = (1, 2, "inf"), *, normalize: bool = True, weights: np.ndarray | None = None
) -> dict[str, float]:
    """Several orders of the Vendi score from one eigendecomposition, keyed ``q=1``, ``q=2``..."""
    spectrum = vendi_spectrum(x, normalize=normalize, weights=weights)
    return {f"q={_order_label(q)}": hill_number(spectrum, q) for q in orders}
