"""Locality-sensitive hashing over MinHash signatures: bands, rows, and candidate pairs.

Banding. A signature of ``num_perm`` values is cut into ``b`` bands of ``r`` rows (``b * r <=
num_perm``). Two texts become *candidates* when all ``r`` values of at least one band agree. For a pair
with Jaccard similarity ``s`` one band agrees with probability ``s**r``, so the pair is a candidate
with probability

    P(s) = 1 - (1 - s**r)**b,

an S-curve that rises steeply around ``(1/b)**(1/r)``. We want it near 0 below the threshold ``t`` and
near 1 above it. Following datasketch, the two kinds of error are measured as areas under the curve:

    false positives  FP(b, r) = integral from 0 to t of P(s) ds
    false negatives  FN(b, r) = integral from t to 1 of (1 - P(s)) ds

and :func:`optimal_bands` returns the ``(b, r)`` with ``b * r <= num_perm`` that minimises
``w_fp * FP + w_fn * FN``. Candidates are only proposals: every candidate pair is then checked against
the full-signature estimate of its Jaccard similarity (:meth:`LSHIndex.verify`), so a false positive
costs only time, while a false negative is lost for good. That is why a higher ``w_fn`` is sometimes
worth it.

Candidate pairs in batch. For each band the band keys (one 64-bit hash of the ``r`` rows) are sorted;
texts with equal keys sit next to each other in input order. Every pair within a group of up to
``window`` texts is a candidate; in larger groups (thousands of copies of one boilerplate text) each
text is paired with the ``window - 1`` texts before it and with the group's first text, which keeps the
work linear while still connecting the whole group when its members really are near-duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .minhash import EMPTY, estimate_jaccard
from .shingles import mix64

DEDUP_WEIGHTS = (0.05, 0.95)
"""Default (false positive, false negative) weights for dedup. Every candidate is verified against its
signature estimate, so a false positive costs one 128-value comparison while a false negative loses a
duplicate for good: recall is worth far more. At threshold 0.8 and 128 permutations this picks 16 bands
of 8 rows (a pair at J = 0.8 becomes a candidate with probability 0.95) instead of the 9 x 13 that equal
weights give (0.40). :func:`optimal_bands` itself keeps datasketch's equal weights as its default."""

_ROW_MULT = mix64(np.arange(1, 257, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)


def error_areas(
    threshold: float, bands: np.ndarray, rows: np.ndarray, points: int = 1001
) -> tuple[np.ndarray, np.ndarray]:
    """FP and FN areas for arrays of (bands, rows), by the trapezoid rule on ``points`` nodes each."""

    def area(lo: float, hi: float, false_negative: bool) -> np.ndarray:
        if hi <= lo:
            return np.zeros(len(bands))
        s = np.linspace(lo, hi, points)
        p = 1.0 - (1.0 - s[None, :] ** rows[:, None]) ** bands[:, None]
        y = 1.0 - p if false_negative else p
        return ((y[:, 1:] + y[:, :-1]) * 0.5).sum(axis=1) * (s[1] - s[0])  # trapezoid rule

    return area(0.0, threshold, False), area(threshold, 1.0, True)


def optimal_bands(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """The ``(bands, rows)`` minimising the weighted false positive and false negative areas.

    Ties go to the smallest ``bands``, then the smallest ``rows``, the order datasketch searches in, so
    both pick the same parameters for the same inputs (up to integration error).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], not {threshold!r}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be positive, not {num_perm!r}")
    if false_positive_weight < 0 or false_negative_weight < 0 or false_positive_weight + false_negative_weight == 0:
        raise ValueError("the false positive and false negative weights must be >= 0 and not both 0")
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([p[0] for p in pairs], dtype=float)
    rows = np.array([p[1] for p in pairs], dtype=float)
    fp, fn = error_areas(threshold, bands, rows)
    error = false_positive_weight * fp + false_negative_weight * fn
    return pairs[int(np.argmin(error))]


def candidate_probability(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """``1 - (1 - s**rows)**bands``: how likely a pair of similarity ``s`` becomes a candidate."""
    return 1.0 - (1.0 - np.asarray(similarity, dtype=float) ** rows) ** bands


@dataclass(frozen=True)
class Pairs:
    """Pairs of integer ids with ``left < right``, sorted, each pair once."""

    left: np.ndarray
    right: np.ndarray

    def __len__(self) -> int:
        return len(self.left)


class RowStore:
    """Append-only rows in blocks that double up to ``max_block`` rows.

    Why not one array grown by doubling: every growth copies the whole index and briefly holds it
    twice, so peak memory would jump with the corpus size. Blocks are never copied; the last one is at
    most half empty.
    """

    def __init__(self, shape: tuple[int, ...], dtype: type, first_block: int = 1024, max_block: int = 65536):
        self.shape, self.dtype = shape, dtype
        self.first_block, self.max_block = first_block, max_block
        self.blocks: list[np.ndarray] = []
        self.starts: list[int] = []
        self.size = 0

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.blocks)

    def append(self, rows: np.ndarray) -> None:
        done = 0
        while done < len(rows):
            capacity = self.starts[-1] + len(self.blocks[-1]) if self.blocks else 0
            if self.size == capacity:
                length = min(self.max_block, max(self.first_block, capacity))
                self.blocks.append(np.zeros((length,) + self.shape, dtype=self.dtype))
                self.starts.append(capacity)
                continue
            block, start = self.blocks[-1], self.starts[-1]
            take = min(len(rows) - done, start + len(block) - self.size)
            block[self.size - start : self.size - start + take] = rows[done : done + take]
            self.size += take
            done += take

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows at ``ids`` (any order, repeats allowed)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids),) + self.shape, dtype=self.dtype)
        which = np.searchsorted(np.asarray(self.starts), ids, side="right") - 1
        for b in np.unique(which).tolist():
            mask = which == b
            out[mask] = self.blocks[b][ids[mask] - self.starts[b]]
        return out

    def column(self, j: int | slice = slice(None)) -> np.ndarray:
        """Column ``j`` of all rows as one array (for 1-D rows, all values)."""
        parts = [b[:, j] if self.shape else b for b in self.blocks]
        return np.concatenate(parts)[: self.size] if parts else np.zeros(0, dtype=self.dtype)


class LSHIndex:
    """Band keys and signatures of every text added, for batch pairs and streaming queries.

    Ids are consecutive integers in the order texts were added. Signatures are kept (``num_perm`` x 4
    bytes per text) because candidates are verified against them; that and the band keys (8 bytes per
    band per text) are the index's whole memory.
    """

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        *,
        bands: int | None = None,
        rows: int | None = None,
        false_positive_weight: float = DEDUP_WEIGHTS[0],
        false_negative_weight: float = DEDUP_WEIGHTS[1],
        window: int = 16,
    ):
        if (bands is None) != (rows is None):
            raise ValueError("give both bands and rows, or neither (then they follow from the threshold)")
        if bands is None or rows is None:
            bands, rows = optimal_bands(threshold, num_perm, false_positive_weight, false_negative_weight)
        if bands * rows > num_perm:
            raise ValueError(f"bands * rows = {bands * rows} exceeds num_perm = {num_perm}")
        if rows > len(_ROW_MULT):
            raise ValueError(f"rows may be at most {len(_ROW_MULT)}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands = bands
        self.rows = rows
        self.window = max(2, window)
        self._signatures = RowStore((num_perm,), np.uint32)
        self._keys = RowStore((bands,), np.uint64)
        self._empty = RowStore((), bool)
        self._tables: list[dict[int, list[int]]] = [{} for _ in range(bands)]
        self._tabled = 0  # ids below this are in the per-band dicts used by query()

    def __len__(self) -> int:
        return len(self._signatures)

    @property
    def nbytes(self) -> int:
        """Memory held by the index (allocated blocks, including the unused end of the last one)."""
        return self._signatures.nbytes + self._keys.nbytes + self._empty.nbytes

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """One 64-bit key per band: a hash of that band's ``rows`` signature values."""
        n = len(signatures)
        used = signatures[:, : self.bands * self.rows].reshape(n, self.bands, self.rows).astype(np.uint64)
        keys = (used * _ROW_MULT[: self.rows]).sum(axis=2, dtype=np.uint64)
        return mix64(keys)

    def add(self, signatures: np.ndarray) -> np.ndarray:
        """Index a ``[n, num_perm]`` block; returns the ids given to its rows."""
        signatures = np.asarray(signatures, dtype=np.uint32)
        if signatures.ndim != 2 or signatures.shape[1] != self.num_perm:
            raise ValueError(f"signatures must have shape [n, {self.num_perm}], not {signatures.shape}")
        first = len(self)
        self._signatures.append(signatures)
        self._keys.append(self.band_keys(signatures))
        self._empty.append((signatures == EMPTY).all(axis=1))
        return np.arange(first, first + len(signatures))

    def empty_mask(self) -> np.ndarray:
        """True for indexed texts without shingles (never candidates)."""
        return self._empty.column()

    def signature(self, ids: np.ndarray | int) -> np.ndarray:
        if isinstance(ids, (int, np.integer)):
            return self._signatures.take(np.array([ids]))[0]
        return self._signatures.take(ids)

    # ------------------------------------------------------------------ streaming

    def _update_tables(self) -> None:
        if self._tabled == len(self):
            return
        new = np.arange(self._tabled, len(self))
        keys = self._keys.take(new).tolist()
        empty = self._empty.take(new).tolist()
        for doc, row, skip in zip(new.tolist(), keys, empty):
            if skip:
                continue
            for table, key in zip(self._tables, row):
                table.setdefault(key, []).append(doc)
        self._tabled = len(self)

    def query(self, signature: np.ndarray) -> list[int]:
        """Ids sharing at least one band with ``signature`` (unverified), in increasing order."""
        signature = np.asarray(signature, dtype=np.uint32).reshape(1, self.num_perm)
        if (signature == EMPTY).all():
            return []
        self._update_tables()
        found: set[int] = set()
        for table, key in zip(self._tables, self.band_keys(signature)[0].tolist()):
            found.update(table.get(key, ()))
        return sorted(found)

    def query_verified(self, signature: np.ndarray) -> list[tuple[int, float]]:
        """Candidates whose estimated Jaccard similarity reaches the threshold, with that estimate."""
        candidates = self.query(signature)
        if not candidates:
            return []
        estimates = estimate_jaccard(self._signatures.take(candidates), np.asarray(signature).reshape(1, -1))
        return [(c, float(e)) for c, e in zip(candidates, np.atleast_1d(estimates)) if e >= self.threshold]

    # ------------------------------------------------------------------ batch

    def candidate_pairs(self) -> Pairs:
        """Every pair of indexed texts that shares a band (see the module docstring for big groups)."""
        n = len(self)
        live = np.flatnonzero(~self._empty.column())
        lefts: list[np.ndarray] = []
        rights: list[np.ndarray] = []
        for band in range(self.bands):
            keys = self._keys.column(band)[live]
            order = np.argsort(keys, kind="stable")
            ids = live[order]
            sorted_keys = keys[order]
            for d in range(1, self.window):
                same = sorted_keys[d:] == sorted_keys[:-d]
                if not same.any():
                    break
                lefts.append(ids[:-d][same])
                rights.append(ids[d:][same])
            else:  # some group is larger than the window: also link each member to its group's first
                boundary = np.ones(len(ids), dtype=bool)
                boundary[1:] = sorted_keys[1:] != sorted_keys[:-1]
                first = np.maximum.accumulate(np.where(boundary, np.arange(len(ids)), 0))
                far = np.arange(len(ids)) - first >= self.window
                lefts.append(ids[first[far]])
                rights.append(ids[far])
        if not lefts:
            empty = np.zeros(0, dtype=np.int64)
            return Pairs(empty, empty)
        packed = np.unique(np.concatenate(lefts).astype(np.int64) * n + np.concatenate(rights))
        return Pairs(packed // n, packed % n)

    def verify(self, pairs: Pairs, block: int = 65536) -> tuple[Pairs, np.ndarray]:
        """Keep the pairs whose estimated Jaccard similarity is at least the threshold."""
        keep: list[np.ndarray] = []
        values: list[np.ndarray] = []
        sigs = self._signatures
        for start in range(0, len(pairs), block):
            left = pairs.left[start : start + block]
            right = pairs.right[start : start + block]
            estimate = (sigs.take(left) == sigs.take(right)).mean(axis=1)
            ok = estimate >= self.threshold
            keep.append(np.flatnonzero(ok) + start)
            values.append(estimate[ok])
        if not keep:
            return pairs, np.zeros(0)
        chosen = np.concatenate(keep)
        return Pairs(pairs.left[chosen], pairs.right[chosen]), np.concatenate(values)
