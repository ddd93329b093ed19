"""Union-find: turning verified near-duplicate pairs into clusters.

Near-duplication is not transitive (A~B and B~C do not make A~C), so "the duplicates of a record" is
not well defined pair by pair. We use connected components of the graph of verified pairs, the usual
choice of MinHash dedup tools: a cluster is everything reachable through verified pairs, and exactly one
record per cluster survives. Union-find builds the components in near-linear time.

The root of each set is always its smallest id. Ids are assigned in input order (reference records
first), so the root is the earliest record of the cluster: exactly the one "keep first" keeps, and the
one a streaming filter saw first.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class UnionFind:
    """Disjoint sets over ids ``0..n-1`` that grow on demand; the smallest id is the root.

    Parents live in a numpy array (8 bytes per id, doubling on growth) rather than a Python list of
    int objects, which would cost several times more per record on large corpora.
    """

    def __init__(self, size: int = 0):
        self._parent = np.arange(max(size, 16), dtype=np.int64)
        self._size = size

    def __len__(self) -> int:
        return self._size

    def add(self) -> int:
        """A new singleton set; returns its id."""
        if self._size == len(self._parent):
            grown = np.arange(2 * len(self._parent), dtype=np.int64)
            grown[: self._size] = self._parent
            self._parent = grown
        self._size += 1
        return self._size - 1

    def find(self, item: int) -> int:
        parent = self._parent
        item = int(item)
        while True:
            up = int(parent[item])
            if up == item:
                return item
            parent[item] = parent[up]  # path halving keeps later finds short
            item = int(parent[item])

    def union(self, a: int, b: int) -> int:
        """Merge the sets of ``a`` and ``b``; returns the root (the smaller of the two roots)."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return root_a
        if root_b < root_a:
            root_a, root_b = root_b, root_a
        self._parent[root_b] = root_a
        return root_a

    def union_pairs(self, left: Iterable[int], right: Iterable[int]) -> None:
        for a, b in zip(left, right):
            self.union(a, b)

    def roots(self) -> np.ndarray:
        """The root of every id, as an array (each id's cluster label), by pointer jumping."""
        roots = self._parent[: self._size].copy()
        while True:
            jumped = roots[roots]
            if np.array_equal(jumped, roots):
                return roots
            roots = jumped


def clusters_from_roots(roots: np.ndarray, min_size: int = 2) -> list[list[int]]:
    """Members of each cluster with at least ``min_size`` members, ids ascending, clusters by first id."""
    if len(roots) == 0:
        return []
    order = np.argsort(roots, kind="stable")
    sorted_roots = roots[order]
    cuts = np.flatnonzero(sorted_roots[1:] != sorted_roots[:-1]) + 1
    groups = np.split(order, cuts)
    return [g.tolist() for g in groups if len(g) >= min_size]
