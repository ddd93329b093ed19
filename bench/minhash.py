"""MinHash near-duplicate detection: ours against datasketch and rensa, measured in one run.

    python bench/minhash.py              # 100,000 records
    python bench/minhash.py --n 300000
    python bench/minhash.py --quick      # 20,000 records, smaller exact-Jaccard sample

The corpus is synthetic and deterministic (``--seed``; no downloads): English records (words drawn from
a Zipf-distributed invented vocabulary, some opening with shared templates) and Chinese records
(characters drawn from the CJK block with Chinese punctuation), and planted near-duplicates of earlier
records: case, punctuation (ASCII <-> full-width) and spacing changes, a few word or character edits, a
short suffix. The planted cluster of each record is known.

Every method gets the same texts and the same shingle definition (``joydataforge.text.shingles``:
the baselines get the shingles as Python strings from ``shingle_set``, which is how a user would feed
them) and goes from text to clusters: MinHash, LSH candidates, candidates verified against the estimated
Jaccard similarity, union-find. docs/s counts that whole path on one core. A second table times only the
MinHash kernel from ready-made shingles, to show where the time goes.

Quality: pair-counting precision/recall/F1 (a pair is "together" when both records are in the same
cluster) against the planted clusters on the whole corpus, and on a sample of whole planted clusters
against (a) the planted clusters and (b) the pairs whose exact Jaccard similarity reaches the threshold;
"exact" itself (brute-force Jaccard + union-find on the sample) is scored too, so the F1 lost to MinHash
and LSH can be read off directly.

"ours + rensa kernel" swaps rensa's MinHash (from our shingle hashes) into our pipeline, to show whether
depending on rensa would make our path faster.

Memory: tracemalloc's peak while our code streams the corpus from a generator, minus the index (the
signatures and band keys it must keep), at ``n/4`` and ``n``; flat means the two numbers are close.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from joydataforge.text.clusters import UnionFind
from joydataforge.text.lsh import DEDUP_WEIGHTS, error_areas, optimal_bands
from joydataforge.text.minhash import MinHasher
from joydataforge.text.minhash_dedup import near_duplicate_clusters
from joydataforge.text.shingles import ShingleSpec, char_classes, shingle_set

# ------------------------------------------------------------------------------------------ corpus

_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
_TEMPLATES = [
    "write a short story about",
    "explain in simple terms how",
    "give me three reasons why",
    "translate the following sentence into french",
    "summarize the main points of",
    "what is the difference between",
    "list the steps needed to",
    "compose a polite email asking",
]
_ZH_PUNCT = "，。、；：？！"
_ZH_SUFFIXES = ["请简要回答。", "谢谢！", "请详细说明。"]
_EN_SUFFIXES = ["Please answer briefly.", "Thanks!", "Explain step by step."]
_FULLWIDTH = str.maketrans({",": "，", ".": "．", "?": "？", "!": "！", ":": "："})


class Corpus:
    """Record ``i`` is a pure function of ``(seed, i)``, so the corpus can be streamed or indexed."""

    def __init__(self, n: int, seed: int = 0, dup_rate: float = 0.25, zh_share: float = 0.4):
        self.n, self.seed, self.dup_rate, self.zh_share = n, seed, dup_rate, zh_share
        rng = random.Random(f"vocab:{seed}")
        words = ("".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 10))) for _ in range(40000))
        self.vocab = list(dict.fromkeys(words))  # unique, in a deterministic order
        rng.shuffle(self.vocab)
        weights = [1.0 / (rank + 10) for rank in range(len(self.vocab))]  # Zipf-like
        self.cum = list(itertools.accumulate(weights))
        self.hanzi = [chr(0x4E00 + rng.randrange(0x5000)) for _ in range(4000)]

    def _rng(self, i: int) -> random.Random:
        return random.Random(f"{self.seed}:{i}")

    def _is_dup(self, i: int) -> bool:
        return i > 0 and self._rng(i).random() < self.dup_rate

    def origin(self, i: int) -> int:
        """The original record a planted duplicate was made from (itself for originals)."""
        if not self._is_dup(i):
            return i
        rng = self._rng(i)
        rng.random()
        j = rng.randrange(i)
        while self._is_dup(j):
            j = random.Random(f"{self.seed}:{i}:{j}").randrange(j) if j > 0 else 0
        return j

    def _original(self, i: int) -> str:
        rng = self._rng(i)
        rng.random()
        if rng.random() < self.zh_share:
            chars = [self.hanzi[int(len(self.hanzi) * rng.random() ** 2)] for _ in range(rng.randint(50, 180))]
            for pos in sorted(rng.sample(range(5, len(chars)), k=len(chars) // 15), reverse=True):
                chars.insert(pos, rng.choice(_ZH_PUNCT))
            return "".join(chars) + "。"
        total = self.cum[-1]
        words = [self.vocab[bisect.bisect(self.cum, rng.random() * total)] for _ in range(rng.randint(30, 110))]
        if rng.random() < 0.15:
            words = rng.choice(_TEMPLATES).split() + words
        for pos in range(rng.randint(6, 14), len(words), rng.randint(8, 16)):
            words[pos] += rng.choice(",.;?")
        text = " ".join(words)
        return text[0].upper() + text[1:] + "."

    def _perturb(self, text: str, rng: random.Random) -> str:
        chinese = any("\u4e00" <= c <= "\u9fff" for c in text[:10])
        edits = rng.choices([0, 1, 2, 3], weights=[30, 40, 20, 10])[0]
        if chinese:
            chars = list(text)
            for _ in range(edits):
                pos = rng.randrange(len(chars))
                op = rng.random()
                if op < 0.5:
                    chars[pos] = rng.choice(self.hanzi)
                elif op < 0.75:
                    del chars[pos]
                else:
                    chars.insert(pos, rng.choice(self.hanzi))
            text = "".join(chars)
            if rng.random() < 0.3:
                text = text.replace("，", ",").replace("。", ".")
            if rng.random() < 0.2:
                text += rng.choice(_ZH_SUFFIXES)
            return text
        words = text.split()
        for _ in range(edits):
            pos = rng.randrange(len(words))
            op = rng.random()
            if op < 0.5:
                words[pos] = self.vocab[rng.randrange(2000)]
            elif op < 0.75 and len(words) > 5:
                del words[pos]
            else:
                words.insert(pos, self.vocab[rng.randrange(2000)])
        sep = "  " if rng.random() < 0.2 else " "
        text = sep.join(words)
        if rng.random() < 0.3:
            text = text.upper() if rng.random() < 0.3 else text.lower()
        if rng.random() < 0.3:
            text = text.translate(_FULLWIDTH)
        if rng.random() < 0.2:
            text += " " + rng.choice(_EN_SUFFIXES)
        return text

    def text(self, i: int) -> str:
        j = self.origin(i)
        if j == i:
            return self._original(i)
        return self._perturb(self._original(j), random.Random(f"edit:{self.seed}:{i}"))

    def __iter__(self) -> Iterator[str]:
        return (self.text(i) for i in range(self.n))

    def labels(self) -> np.ndarray:
        return np.fromiter((self.origin(i) for i in range(self.n)), dtype=np.int64, count=self.n)


# ------------------------------------------------------------------------------------------ scoring


def _pairs_within(labels: np.ndarray) -> int:
    _, counts = np.unique(labels, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def pair_scores(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Pair-counting precision, recall, F1 of ``predicted`` cluster labels against ``truth``."""
    _, predicted = np.unique(predicted, return_inverse=True)
    _, truth = np.unique(truth, return_inverse=True)
    together = _pairs_within(predicted.astype(np.int64) * (int(truth.max()) + 1) + truth)
    p_pairs, t_pairs = _pairs_within(predicted), _pairs_within(truth)
    precision = together / p_pairs if p_pairs else 1.0
    recall = together / t_pairs if t_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def pair_set_scores(predicted: np.ndarray, true_pairs: set[tuple[int, int]]) -> tuple[float, float, float]:
    """Precision/recall/F1 of the pairs implied by cluster labels against an explicit set of pairs."""
    groups: dict[int, list[int]] = {}
    for pos, label in enumerate(predicted.tolist()):
        groups.setdefault(label, []).append(pos)
    pairs = {(a, b) for g in groups.values() if len(g) > 1 for a, b in itertools.combinations(g, 2)}
    hit = len(pairs & true_pairs)
    precision = hit / len(pairs) if pairs else 1.0
    recall = hit / len(true_pairs) if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def exact_pairs(texts: list[str], spec: ShingleSpec, threshold: float) -> set[tuple[int, int]]:
    """All pairs of ``texts`` whose exact shingle Jaccard similarity is >= threshold (inverted index)."""
    sets = [shingle_set(t, spec) for t in texts]
    postings: dict[str, list[int]] = {}
    for doc, shingles in enumerate(sets):
        for s in shingles:
            postings.setdefault(s, []).append(doc)
    shared: Counter[tuple[int, int]] = Counter()
    for docs in postings.values():
        if len(docs) > 1:
            shared.update(itertools.combinations(docs, 2))
    return {(a, b) for (a, b), inter in shared.items() if inter / (len(sets[a]) + len(sets[b]) - inter) >= threshold}


def labels_from_pairs(n: int, pairs) -> np.ndarray:
    sets = UnionFind(n)
    for a, b in pairs:
        sets.union(a, b)
    return sets.roots()


# ------------------------------------------------------------------------------------------ methods


def run_ours(texts: list[str], hasher: MinHasher, threshold: float, weights: tuple[float, float], workers: int = 1):
    found = near_duplicate_clusters(
        texts,
        threshold=threshold,
        hasher=hasher,
        workers=workers,
        false_positive_weight=weights[0],
        false_negative_weight=weights[1],
    )
    return found.roots, found.seconds, f"bands={found.bands} rows={found.rows} candidates={found.candidate_pairs}"


def run_datasketch(texts: list[str], spec: ShingleSpec, threshold: float, num_perm: int, seed: int, weights):
    from datasketch import MinHash, MinHashLSH

    started = time.perf_counter()
    signatures = []
    for text in texts:
        shingles = shingle_set(text, spec)
        m = MinHash(num_perm=num_perm, seed=seed)
        m.update_batch([s.encode("utf-8") for s in shingles])
        signatures.append(m if shingles else None)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
    for i, m in enumerate(signatures):
        if m is not None:
            lsh.insert(i, m)
    sets = UnionFind(len(texts))
    candidates = 0
    for i, m in enumerate(signatures):
        if m is None:
            continue
        for j in lsh.query(m):
            if j > i:
                candidates += 1
                if m.jaccard(signatures[j]) >= threshold:
                    sets.union(i, j)
    roots = sets.roots()
    return roots, time.perf_counter() - started, f"bands={lsh.b} rows={lsh.r} candidates={candidates}"


def rensa_bands(threshold: float, num_perm: int, weights) -> tuple[int, int]:
    """rensa needs bands to divide num_perm: the best such (bands, rows) under the same weights."""
    options = [(b, num_perm // b) for b in range(1, num_perm + 1) if num_perm % b == 0]
    fp, fn = error_areas(threshold, np.array([o[0] for o in options], float), np.array([o[1] for o in options], float))
    return options[int(np.argmin(weights[0] * fp + weights[1] * fn))]


def run_rensa(texts: list[str], spec: ShingleSpec, threshold: float, num_perm: int, seed: int, weights):
    from rensa import RMinHash, RMinHashLSH

    bands, rows = rensa_bands(threshold, num_perm, weights)
    started = time.perf_counter()
    shingles = [list(shingle_set(t, spec)) for t in texts]
    signatures = RMinHash.from_token_sets(shingles, num_perm, seed)
    lsh = RMinHashLSH(threshold, num_perm, bands)
    lsh.insert_pairs([(i, m) for i, m in enumerate(signatures) if shingles[i]])
    sets = UnionFind(len(texts))
    candidates = 0
    for i, found in enumerate(lsh.query_all(signatures)):
        if not shingles[i]:
            continue
        for j in found:
            if j > i:
                candidates += 1
                if signatures[i].jaccard(signatures[j]) >= threshold:
                    sets.union(i, j)
    roots = sets.roots()
    return roots, time.perf_counter() - started, f"bands={bands} rows={rows} candidates={candidates}"


def run_hybrid(texts: list[str], hasher: MinHasher, threshold: float, weights):
    """Our shingling, index and clustering with rensa's MinHash kernel: would rensa serve us better?

    Same shingle hashes as ours; rensa computes the signatures (its own hash family, full-set
    R-MinHash) and they are copied out through ``to_rows`` (rensa exposes no buffer), which this timing
    includes.
    """
    from rensa import RMinHash

    from joydataforge.text.lsh import LSHIndex

    started = time.perf_counter()
    index = LSHIndex(threshold, hasher.num_perm, false_positive_weight=weights[0], false_negative_weight=weights[1])
    for start in range(0, len(texts), 2048):
        batch = hasher.shingle(texts[start : start + 2048])
        matrix = RMinHash.digest_matrix_from_flat_token_hashes(
            batch.hashes.astype(np.uint64), batch.offsets.astype(np.uint64), hasher.num_perm, hasher.seed
        )
        signatures = np.array(matrix.to_rows(), dtype=np.uint32)
        signatures[batch.counts() == 0] = 0xFFFFFFFF  # empty texts: never duplicates, as in ours
        index.add(signatures)
    verified, _ = index.verify(index.candidate_pairs())
    sets = UnionFind(len(texts))
    sets.union_pairs(verified.left.tolist(), verified.right.tolist())
    roots = sets.roots()
    return roots, time.perf_counter() - started, f"bands={index.bands} rows={index.rows} (rensa kernel)"


def kernel_table(texts: list[str], hasher: MinHasher, spec: ShingleSpec) -> None:
    """Only the MinHash step, from shingles prepared beforehand (untimed), per implementation."""
    from datasketch import MinHash
    from rensa import RMinHash

    chunks = [texts[i : i + 2048] for i in range(0, len(texts), 2048)]
    start = time.perf_counter()
    batches = [hasher.shingle(chunk) for chunk in chunks]
    shingling = len(texts) / (time.perf_counter() - start)
    flat = [(b.hashes.astype(np.uint64), b.offsets.astype(np.uint64)) for b in batches]
    string_sets = [list(shingle_set(t, spec)) for t in texts[:20000]]
    rows = []
    start = time.perf_counter()
    for batch in batches:
        hasher.signatures_of_batch(batch)
    rows.append(("ours, from our 32-bit shingle hashes", len(texts) / (time.perf_counter() - start)))
    start = time.perf_counter()
    for hashes, offsets in flat:
        RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, hasher.num_perm, hasher.seed)
    rows.append(("rensa digest_matrix_from_flat_token_hashes, same hashes", len(texts) / (time.perf_counter() - start)))
    start = time.perf_counter()
    RMinHash.digest_matrix_from_token_sets(string_sets, hasher.num_perm, hasher.seed)
    rows.append(
        ("rensa digest_matrix_from_token_sets, string shingles", len(string_sets) / (time.perf_counter() - start))
    )
    few = string_sets[:3000]
    start = time.perf_counter()
    for s in few:
        m = MinHash(num_perm=hasher.num_perm, seed=hasher.seed)
        m.update_batch([x.encode("utf-8") for x in s])
    rows.append(("datasketch MinHash.update_batch, string shingles", len(few) / (time.perf_counter() - start)))
    start = time.perf_counter()
    for t in texts[:20000]:
        shingle_set(t, spec)
    rows.append(
        (
            "(python shingle_set alone, what the baselines pay first)",
            min(20000, len(texts)) / (time.perf_counter() - start),
        )
    )
    rows.append(("(our vectorised shingling alone, chunks of 2048)", shingling))
    print("\nMinHash kernel only (shingles prepared beforehand), docs/s, one core:")
    for name, rate in rows:
        print(f"  {name:<60} {rate:>12,.0f}")


def memory_check(corpus_n: int, seed: int, hasher: MinHasher, threshold: float, weights) -> None:
    print("\nMemory while streaming the corpus from a generator (tracemalloc):")
    for n in (corpus_n // 4, corpus_n):
        corpus = Corpus(n, seed)
        tracemalloc.start()
        found = near_duplicate_clusters(
            iter(corpus),
            threshold=threshold,
            hasher=hasher,
            false_positive_weight=weights[0],
            false_negative_weight=weights[1],
        )
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(
            f"  n={n:>9,}: peak {peak / 2**20:8.1f} MiB, index {found.index_bytes / 2**20:8.1f} MiB, "
            f"peak minus index {(peak - found.index_bytes) / 2**20:8.1f} MiB"
        )


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="records in the corpus (default 100,000)")
    parser.add_argument("--quick", action="store_true", help="20,000 records and a smaller exact-Jaccard sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument(
        "--fp-weight", type=float, default=DEDUP_WEIGHTS[0], help="LSH false positive weight (all methods)"
    )
    parser.add_argument(
        "--fn-weight", type=float, default=DEDUP_WEIGHTS[1], help="LSH false negative weight (all methods)"
    )
    parser.add_argument(
        "--sample-clusters",
        type=int,
        default=None,
        help="planted clusters in the exact-Jaccard sample (default 5,000; 1,000 with --quick)",
    )
    parser.add_argument("--workers", type=int, default=2, help="also time ours with this many processes (0: skip)")
    parser.add_argument("--skip-datasketch", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.n
    sample_clusters = args.sample_clusters or (1000 if args.quick else 5000)
    weights = (args.fp_weight, args.fn_weight)
    spec = ShingleSpec()
    hasher = MinHasher(num_perm=args.num_perm, seed=1)
    char_classes()  # built once per process; not part of any timing

    started = time.perf_counter()
    corpus = Corpus(n, args.seed)
    texts = list(corpus)
    truth = corpus.labels()
    planted = int((truth != np.arange(n)).sum())
    zh = sum(1 for t in texts if any("\u4e00" <= c <= "\u9fff" for c in t[:10]))
    print(
        f"corpus: {n:,} records ({zh:,} Chinese, {n - zh:,} English), {planted:,} planted near-duplicates, "
        f"{len(set(truth.tolist())):,} planted clusters; built in {time.perf_counter() - started:.1f}s"
    )
    print(
        f"threshold={args.threshold} num_perm={args.num_perm} LSH weights fp={weights[0]} fn={weights[1]}; "
        f"our bands/rows {optimal_bands(args.threshold, args.num_perm, *weights)}"
    )

    results: dict[str, tuple[np.ndarray, float, str]] = {}
    results["ours"] = run_ours(texts, hasher, args.threshold, weights)
    results["rensa"] = run_rensa(texts, spec, args.threshold, args.num_perm, 1, weights)
    if not args.skip_datasketch:
        results["datasketch"] = run_datasketch(texts, spec, args.threshold, args.num_perm, 1, weights)
    again = run_ours(texts, hasher, args.threshold, weights)
    results["ours (repeat)"] = again
    results["ours + rensa kernel"] = run_hybrid(texts, hasher, args.threshold, weights)
    if args.workers > 1:
        results[f"ours, workers={args.workers}"] = run_ours(texts, hasher, args.threshold, weights, args.workers)

    # The exact-Jaccard sample: whole planted clusters, picked at random.
    rng = random.Random(args.seed)
    roots = sorted(set(truth.tolist()))
    chosen = set(rng.sample(roots, min(sample_clusters, len(roots))))
    sample = np.array([i for i in range(n) if truth[i] in chosen])
    sample_texts = [texts[i] for i in sample]
    started = time.perf_counter()
    exact = exact_pairs(sample_texts, spec, args.threshold)
    exact_labels = labels_from_pairs(len(sample), exact)
    exact_seconds = time.perf_counter() - started
    print(
        f"exact-Jaccard sample: {len(sample):,} records in {len(chosen):,} planted clusters, "
        f"{len(exact):,} pairs >= {args.threshold} ({exact_seconds:.1f}s brute force)"
    )

    print(
        f"\n{'method':<22} {'docs/s':>10} {'seconds':>8}   planted (all) P / R / F1    "
        f"sample vs planted P / R / F1   sample vs exact-J pairs P / R / F1   LSH"
    )
    f1_sample = {}
    p, r, f = pair_scores(exact_labels, truth[sample])
    f1_sample["exact"] = f
    pe, re_, fe = pair_set_scores(exact_labels, exact)
    print(
        f"{'exact Jaccard':<22} {'':>10} {exact_seconds:>8.1f}   {'(sample only)':<27} "
        f"{p:.3f} / {r:.3f} / {f:.3f}        {pe:.3f} / {re_:.3f} / {fe:.3f}"
    )
    for name, (labels, seconds, info) in results.items():
        p, r, f = pair_scores(labels, truth)
        sp, sr, sf = pair_scores(labels[sample], truth[sample])
        ep, er, ef = pair_set_scores(labels[sample], exact)
        f1_sample[name] = sf
        print(
            f"{name:<22} {n / seconds:>10,.0f} {seconds:>8.2f}   {p:.3f} / {r:.3f} / {f:.3f}         "
            f"{sp:.3f} / {sr:.3f} / {sf:.3f}        {ep:.3f} / {er:.3f} / {ef:.3f}        {info}"
        )

    ours_rate = n / min(results["ours"][1], results["ours (repeat)"][1])
    rensa_rate = n / results["rensa"][1]
    hybrid_rate = n / results["ours + rensa kernel"][1]
    print(f"\nratios (ours = best of the two single-core runs, {ours_rate:,.0f} docs/s):")
    print(
        f"  ours / (ours + rensa kernel) = {ours_rate / hybrid_rate:6.2f}x   (below 1: rensa's kernel would serve us better)"
    )
    print(
        f"  ours / rensa      = {ours_rate / rensa_rate:6.2f}x   (target >= 1)  "
        f"{'MET' if ours_rate >= rensa_rate else 'NOT MET'}"
    )
    if "datasketch" in results:
        ds_rate = n / results["datasketch"][1]
        print(
            f"  ours / datasketch = {ours_rate / ds_rate:6.2f}x   (target >= 10) "
            f"{'MET' if ours_rate >= 10 * ds_rate else 'NOT MET'}"
        )
    gap = f1_sample["exact"] - f1_sample["ours"]
    side = "ours lower" if gap > 0 else "ours higher"
    print(
        f"  F1 vs planted on the sample: exact {f1_sample['exact']:.4f}, ours {f1_sample['ours']:.4f}, "
        f"difference {gap:+.4f} ({side}; target |difference| <= 0.01) {'MET' if abs(gap) <= 0.01 else 'NOT MET'}"
    )

    kernel_table(texts, hasher, spec)
    if not args.no_memory:
        memory_check(n, args.seed, hasher, args.threshold, weights)


if __name__ == "__main__":
    main()
