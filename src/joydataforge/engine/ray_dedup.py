"""Distributed evaluation on Ray: MinHash near-duplicate clusters and the Vendi score, exact.

MinHash dedup, in three Ray stages, with the single-machine code's own pieces
(:class:`~joydataforge.text.minhash.MinHasher`, :class:`~joydataforge.text.lsh.LSHIndex`'s band
keys and verification rule, :class:`~joydataforge.text.clusters.UnionFind`):

1. **signatures per block**: one task per block of texts computes its signatures (kept in the object
   store, on the node that computed them) and its band keys, already split by band group;
2. **bands grouped across the cluster**: one task per band group gathers that group's keys from every
   block and emits the candidate pairs of its bands, by the same windowed rule as
   :meth:`LSHIndex.candidate_pairs` (ids sorted, a pair per equal key within ``window``, big groups
   linked to their first member), so both give the very same candidates;
3. **verification** where the signatures lie: candidate pairs are grouped by the blocks of their two
   ids, and one task per block pair compares the two signatures (estimated Jaccard >= threshold).

The driver then only holds the verified pairs and a ``UnionFind`` over ids (8 bytes per text) and
builds the connected components, as :func:`~joydataforge.text.minhash_dedup.near_duplicate_clusters`
does. The result is a :class:`ClusterResult` equal to the local one, so
:func:`ray_deduplicate` applies the very same policies (first, longest, tag, reference).

Vendi: the score depends on the data only through ``K/n``'s spectrum, i.e. through the d x d matrix
``sum_i x_i x_i^T``, which is a sum over records. Each task adds its block into a
:class:`~joydataforge.text.vendi.VendiAccumulator` (embedding the block's texts there first when an
``embed`` function is given: embeddings computed where the data lies); the driver adds the d x d sums.
Exact, not an approximation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..text.clusters import UnionFind
from ..text.lsh import DEDUP_WEIGHTS, LSHIndex, Pairs
from ..text.minhash import MinHasher
from ..text.minhash_dedup import ClusterResult, DedupResult, TextFields, deduplicate
from ..text.vendi import Order, VendiAccumulator
from .ray_executor import _require_ray

Record = dict[str, Any]


def _band_pairs(keys: np.ndarray, live: np.ndarray, window: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Candidate pairs of one band: the per-band body of :meth:`LSHIndex.candidate_pairs`, unchanged."""
    band_keys = keys[live]
    order = np.argsort(band_keys, kind="stable")
    ids = live[order]
    sorted_keys = band_keys[order]
    found: list[tuple[np.ndarray, np.ndarray]] = []
    for d in range(1, window):
        same = sorted_keys[d:] == sorted_keys[:-d]
        if not same.any():
            break
        found.append((ids[:-d][same], ids[d:][same]))
    else:  # some group is larger than the window: also link each member to its group's first
        boundary = np.ones(len(ids), dtype=bool)
        boundary[1:] = sorted_keys[1:] != sorted_keys[:-1]
        first = np.maximum.accumulate(np.where(boundary, np.arange(len(ids)), 0))
        far = np.arange(len(ids)) - first >= window
        found.append((ids[first[far]], ids[far]))
    return found


def _signatures_task(hasher: MinHasher, index: LSHIndex, texts: list[str], groups: list[list[int]]) -> tuple:
    """Stage 1: a block's signatures, its empty mask, and its band keys split by band group."""
    signatures = hasher.signatures(texts)
    keys = index.band_keys(signatures)
    empty = hasher.empty_rows(signatures)
    return (signatures, empty, *[np.ascontiguousarray(keys[:, group]) for group in groups])


def _bands_task(window: int, n: int, blocks: int, *arrays: np.ndarray) -> np.ndarray:
    """Stage 2: candidate pairs of one group of bands over the whole corpus, packed ``left * n + right``.

    ``arrays`` are every block's empty mask, then every block's keys of this group (top-level arguments,
    so Ray fetches them from wherever they were computed).
    """
    empty_blocks, key_blocks = arrays[:blocks], arrays[blocks:]
    empty = np.concatenate(empty_blocks) if empty_blocks else np.zeros(0, bool)
    keys = np.concatenate(key_blocks) if key_blocks else np.zeros((0, 0), np.uint64)
    live = np.flatnonzero(~empty)
    lefts, rights = [], []
    for band in range(keys.shape[1]):
        for left, right in _band_pairs(keys[:, band], live, window):
            lefts.append(left)
            rights.append(right)
    if not lefts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(lefts).astype(np.int64) * n + np.concatenate(rights))


def _verify_task(
    threshold: float,
    left: np.ndarray,
    right: np.ndarray,
    left_first: int,
    right_first: int,
    left_sigs: np.ndarray,
    right_sigs: np.ndarray,
) -> np.ndarray:
    """Stage 3: which pairs reach the threshold, by :meth:`LSHIndex.verify`'s estimate."""
    estimate = (left_sigs[left - left_first] == right_sigs[right - right_first]).mean(axis=1)
    return estimate >= threshold


def ray_near_duplicate_clusters(
    texts: Iterable[str],
    *,
    threshold: float = 0.8,
    hasher: MinHasher | None = None,
    reference: Iterable[str] | None = None,
    workers: int = 1,
    chunk_size: int = 2048,
    band_groups: int | None = None,
    false_positive_weight: float = DEDUP_WEIGHTS[0],
    false_negative_weight: float = DEDUP_WEIGHTS[1],
) -> ClusterResult:
    """:func:`~joydataforge.text.minhash_dedup.near_duplicate_clusters` on the Ray cluster (same result).

    ``chunk_size`` texts make one block (one signature task); ``workers`` is accepted for the same
    signature and ignored (the cluster's CPUs decide). Joins the running Ray instance (``ray.init`` it
    first for a remote cluster), or starts a local one.
    """
    block_size = max(1, chunk_size)
    ray = _require_ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    started = time.perf_counter()
    hasher = hasher or MinHasher()
    index = LSHIndex(
        threshold,
        hasher.num_perm,
        false_positive_weight=false_positive_weight,
        false_negative_weight=false_negative_weight,
    )
    reference_texts = list(reference) if reference is not None else []
    all_texts = reference_texts + list(texts)
    n = len(all_texts)
    lengths = np.fromiter((len(t) for t in all_texts), dtype=np.int64, count=n)
    groups_count = band_groups or max(1, min(index.bands, int(ray.cluster_resources().get("CPU", 1))))
    groups = [list(range(g, index.bands, groups_count)) for g in range(groups_count)]
    starts = list(range(0, n, block_size))
    signatures_remote = ray.remote(num_returns=2 + len(groups))(_signatures_task)
    hasher_ref, index_ref = ray.put(hasher), ray.put(index)
    blocks = [signatures_remote.remote(hasher_ref, index_ref, all_texts[s : s + block_size], groups) for s in starts]
    empties = [block[1] for block in blocks]
    bands_remote = ray.remote(_bands_task)
    packed_parts = ray.get(
        [
            bands_remote.remote(index.window, n, len(blocks), *empties, *[block[2 + g] for block in blocks])
            for g in range(len(groups))
        ]
    )
    packed = np.unique(np.concatenate(packed_parts)) if packed_parts else np.zeros(0, np.int64)
    candidates = Pairs(packed // max(n, 1), packed % max(n, 1))

    # Stage 3: verify each (left block, right block) group where those signatures are.
    verify_remote = ray.remote(_verify_task)
    left_block, right_block = candidates.left // block_size, candidates.right // block_size
    group_key = left_block * max(len(starts), 1) + right_block
    order = np.argsort(group_key, kind="stable")
    cuts = np.flatnonzero(np.diff(group_key[order])) + 1
    futures, members = [], []
    for part in np.split(order, cuts) if len(order) else []:
        lb, rb = int(left_block[part[0]]), int(right_block[part[0]])
        futures.append(
            verify_remote.remote(
                threshold,
                candidates.left[part],
                candidates.right[part],
                starts[lb],
                starts[rb],
                blocks[lb][0],
                blocks[rb][0],
            )
        )
        members.append(part)
    keep = np.zeros(len(candidates), dtype=bool)
    for part, ok in zip(members, ray.get(futures)):
        keep[part] = ok
    sets = UnionFind(n)
    sets.union_pairs(candidates.left[keep].tolist(), candidates.right[keep].tolist())
    empty = np.concatenate(ray.get(empties)) if empties else np.zeros(0, bool)
    return ClusterResult(
        roots=sets.roots(),
        empty=empty,
        lengths=lengths,
        n_reference=len(reference_texts),
        candidate_pairs=len(candidates),
        verified_pairs=int(keep.sum()),
        bands=index.bands,
        rows=index.rows,
        index_bytes=n * (hasher.num_perm * 4 + index.bands * 8 + 1),
        seconds=time.perf_counter() - started,
    )


def ray_deduplicate(
    records: Iterable[Record],
    text_fields: TextFields = "input",
    threshold: float = 0.8,
    policy: str = "first",
    reference: Iterable[Record] | None = None,
    **options: Any,
) -> DedupResult:
    """:func:`~joydataforge.text.minhash_dedup.deduplicate` with the clustering done on Ray.

    Same arguments and the same :class:`DedupResult` (kept, removed, clusters, stats) as the local one.
    """
    return deduplicate(
        records,
        text_fields,
        threshold,
        policy,
        reference,  # type: ignore[arg-type]
        clusterer=ray_near_duplicate_clusters,
        **options,
    )


def _vendi_task(block: Any, embed: Callable[[Sequence[str]], np.ndarray] | None, normalize: bool) -> VendiAccumulator:
    vectors = np.asarray(embed(block) if embed is not None else block)
    return VendiAccumulator().add(vectors, normalize=normalize)


def ray_vendi_scores(
    blocks: Iterable[Any],
    orders: Iterable[Order] = (1, 2, "inf"),
    *,
    embed: Callable[[Sequence[str]], np.ndarray] | None = None,
    normalize: bool = True,
) -> dict[str, float]:
    """Vendi scores of the union of ``blocks`` (arrays of vectors, or lists of texts with ``embed``).

    Each block is added into its own accumulator by a Ray task (embedding its texts there when ``embed``
    is given); the d x d sums are merged on the driver. Blocks may be Ray object refs, so data that
    already lives on the cluster is not brought to the driver.
    """
    ray = _require_ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    task = ray.remote(_vendi_task)
    total = VendiAccumulator()
    for part in ray.get([task.remote(block, embed, normalize) for block in blocks]):
        total.merge(part)
    return total.scores(orders)
