"""MinHash near-duplicate detection: shingles, normalisation, band maths, estimates, clusters, policies."""

from __future__ import annotations

import random

import numpy as np
import pytest

from joydataforge.text.clusters import UnionFind, clusters_from_roots
from joydataforge.text.lsh import LSHIndex, RowStore, candidate_probability, optimal_bands
from joydataforge.text.minhash import MinHasher, estimate_jaccard, exact_jaccard
from joydataforge.text.minhash_dedup import deduplicate, near_duplicate_clusters, record_text
from joydataforge.text.shingles import (
    ShingleSpec,
    choose_mode,
    normalize,
    shingle_hashes,
    shingle_set,
    tokens,
)

# ----------------------------------------------------------------------------- normalisation, shingles


def test_normalize_case_punctuation_whitespace_and_fullwidth():
    assert normalize("  Hello,   WORLD!!\n\tFoo_bar ") == "hello world foo bar"
    # NFKC folds full-width Latin letters and digits; Chinese punctuation is a separator
    assert normalize("ＡＢＣ１２３，你好。世界！“引号”《书名》【括号】") == "abc123 你好 世界 引号 书名 括号"


def test_english_word_shingles():
    assert shingle_set("The cat sat on the mat.", ShingleSpec("word", 3)) == {
        "the cat sat",
        "cat sat on",
        "sat on the",
        "on the mat",
    }


def test_chinese_character_shingles_chosen_automatically():
    text = "今天天气很好。"
    assert choose_mode(text) == "char"
    assert shingle_set(text, ShingleSpec(ngram=2)) == {"今 天", "天 天", "天 气", "气 很", "很 好"}


def test_mixed_text_splits_latin_runs_and_cjk_characters():
    assert tokens("请解释Python中的装饰器", "word") == ["请", "解", "释", "python", "中", "的", "装", "饰", "器"]
    assert tokens("ab 中", "char") == ["a", "b", "中"]
    assert choose_mode("Explain decorators in Python please, 谢谢") == "word"
    assert choose_mode("请解释一下Python中的装饰器") == "char"


def test_short_and_empty_texts():
    assert shingle_set("hello world", ShingleSpec("word", 3)) == {"hello world"}
    assert shingle_set("!!! ...", ShingleSpec()) == set()


def test_mode_setting_overrides_auto():
    assert shingle_set("ab cd", ShingleSpec("char", 2)) == {"a b", "b c", "c d"}
    with pytest.raises(ValueError):
        ShingleSpec("sentence")


TEXTS = [
    "Hello, World! This is a TEST of the shingler.",
    "hello world this is a test",
    "请解释Python中的装饰器是什么，以及如何使用。",
    "",
    "a",
    "ＡＢＣ，全角 Test",
    "日本語のテキストです",
    "tab\tseparated\nlines and  spaces",
    "\x00 embedded nul \x00 inside",
    "ﬁnance ＡＢＣ e\u0301te ΟΔΟΣ ΣΑΣ ①② ㄱㅏ ﾊﾝｶｸ",  # ligature, combining mark, final sigma, jamo, half-width
    "Café CAFÉ cafe\u0301 naïve",
]


@pytest.mark.parametrize(
    "spec", [ShingleSpec(), ShingleSpec("auto"), ShingleSpec("word", 2), ShingleSpec("char", 5), ShingleSpec(ngram=1)]
)
def test_vectorised_shingles_agree_with_reference(spec):
    batch = shingle_hashes(TEXTS, spec)
    assert len(batch) == len(TEXTS)
    for i, text in enumerate(TEXTS):
        reference = shingle_set(text, spec)
        mine = set(batch.hashes[batch.offsets[i] : batch.offsets[i + 1]].tolist())
        assert len(mine) == len(reference), text
    # same sets, not just same sizes: every pairwise Jaccard agrees
    hashed = [set(batch.hashes[batch.offsets[i] : batch.offsets[i + 1]].tolist()) for i in range(len(TEXTS))]
    strings = [shingle_set(t, spec) for t in TEXTS + ["hello world this is", "这是 测试 文本"]]
    extra = shingle_hashes(["hello world this is", "这是 测试 文本"], spec)
    hashed += [set(extra.hashes[extra.offsets[i] : extra.offsets[i + 1]].tolist()) for i in range(2)]
    for i in range(len(strings)):
        for j in range(len(strings)):
            assert exact_jaccard(hashed[i], hashed[j]) == exact_jaccard(strings[i], strings[j])


def test_table_normalisation_equals_unicodedata():
    # texts without context-dependent characters are normalised by a lookup table; it must agree
    plain = ["ＦＵＬＬ－ＷＩＤＴＨ １２３ ＡＢＣ", "Ｃａｆé ℌello ㍿", "今天，天气。很好！"]
    tricky = ["e\u0301te", "ΟΔΟΣ ΣΑΣ", "ㄱㅏ ﾊﾝｶｸ", "ﬁne"]
    spec = ShingleSpec(ngram=1)
    for text in plain + tricky:
        batch = shingle_hashes([text], spec)
        alone = shingle_hashes([text, "x y z"], spec)
        assert len(set(batch.hashes.tolist())) == len(shingle_set(text, spec)), text
        assert set(batch.hashes.tolist()) == set(alone.hashes[: alone.offsets[1]].tolist())
    # the same word written in two ways hashes alike
    batch = shingle_hashes(["café", "cafe\u0301", "ＣＡＦÉ"], spec)
    assert batch.hashes[0] == batch.hashes[1] == batch.hashes[2]


def test_equal_shingles_hash_equally_across_texts_and_batches():
    a = shingle_hashes(["one two three four", "x"], ShingleSpec("word", 2))
    b = shingle_hashes(["zero one two three"], ShingleSpec("word", 2))
    first = set(a.hashes[a.offsets[0] : a.offsets[1]].tolist())
    second = set(b.hashes.tolist())
    assert len(first & second) == 2  # "one two", "two three"
    long_word = "x" * 5000 + "y"
    c = shingle_hashes([long_word, "a b " + long_word], ShingleSpec("word", 1))
    assert c.hashes[0] == c.hashes[-1] and len(set(c.hashes.tolist())) == 3


# ----------------------------------------------------------------------------- bands and rows


def test_optimal_bands_minimises_weighted_error():
    bands, rows = optimal_bands(0.8, 128)
    assert bands * rows <= 128
    assert (bands, rows) == (9, 13)  # also what datasketch 1.6 picks
    # the S-curve crosses about the threshold
    assert candidate_probability(0.6, bands, rows) < 0.1 < 0.9 < candidate_probability(0.95, bands, rows)


def test_optimal_bands_move_with_threshold_and_weights():
    low = optimal_bands(0.5, 128)
    high = optimal_bands(0.95, 128)
    assert low[1] < high[1]  # more rows per band for a higher threshold
    recall_heavy = optimal_bands(0.8, 128, 0.1, 0.9)
    assert candidate_probability(0.8, *recall_heavy) > candidate_probability(0.8, *optimal_bands(0.8, 128))


def test_dedup_index_weighs_recall_over_precision():
    index = LSHIndex(0.8, 128)
    assert (index.bands, index.rows) == (16, 8)
    assert candidate_probability(0.8, index.bands, index.rows) > 0.9
    assert (LSHIndex(0.8, 128, false_positive_weight=0.5, false_negative_weight=0.5).bands) == 9
    with pytest.raises(ValueError):
        LSHIndex(0.8, 64, bands=10, rows=10)


def test_optimal_bands_matches_datasketch():
    lsh = pytest.importorskip("datasketch.lsh")
    for threshold in (0.5, 0.7, 0.85, 0.9):
        for num_perm in (64, 128):
            assert optimal_bands(threshold, num_perm) == lsh._optimal_param(threshold, num_perm, 0.5, 0.5)


def test_optimal_bands_rejects_bad_input():
    with pytest.raises(ValueError):
        optimal_bands(0.0, 128)
    with pytest.raises(ValueError):
        optimal_bands(0.8, 128, 0, 0)


# ----------------------------------------------------------------------------- signatures


def _vocab(rng: random.Random, size: int = 3000) -> list[str]:
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(size)]


def test_signature_shape_dtype_and_empty_rows():
    sig = MinHasher(num_perm=64).signatures(["some text here", "", "...", "其他文本"])
    assert sig.shape == (4, 64) and sig.dtype == np.uint32
    assert MinHasher.empty_rows(sig).tolist() == [False, True, True, False]


def test_estimates_track_exact_jaccard():
    rng = random.Random(7)
    vocab = _vocab(rng)
    hasher = MinHasher(num_perm=256, seed=3)
    pairs = []
    for _ in range(200):
        words = [rng.choice(vocab) for _ in range(rng.randint(20, 60))]
        other = list(words)
        for _ in range(rng.randint(0, 12)):
            other[rng.randrange(len(other))] = rng.choice(vocab)
        pairs.append((" ".join(words), " ".join(other)))
    sig = hasher.signatures([t for p in pairs for t in p])
    exact = np.array([exact_jaccard(shingle_set(a), shingle_set(b)) for a, b in pairs])
    estimate = estimate_jaccard(sig[0::2], sig[1::2])
    error = estimate - exact
    assert abs(error.mean()) < 0.01  # unbiased
    expected_sd = np.sqrt((exact * (1 - exact) / 256).mean())
    assert np.sqrt((error**2).mean()) < 1.5 * expected_sd + 1e-9
    assert exact.min() < 0.5 < 0.9 < exact.max()  # the sample spans low and high similarities


def test_identical_texts_have_identical_signatures_and_normalisation_counts():
    sig = MinHasher().signatures(["Hello, World!", "hello world", "HELLO   WORLD.", "hello there"])
    assert (sig[0] == sig[1]).all() and (sig[0] == sig[2]).all()
    assert estimate_jaccard(sig[0], sig[3]) < 0.2


def test_chunking_and_seed_determinism():
    texts = [f"document {i} about subject {i % 7} and more" for i in range(50)]
    whole = MinHasher(seed=5).signatures(texts)
    chunked = MinHasher(seed=5).signatures(iter(texts), chunk_size=7)
    assert np.array_equal(whole, chunked)
    assert not np.array_equal(whole, MinHasher(seed=6).signatures(texts))


def test_long_text_spanning_several_blocks():
    rng = random.Random(1)
    vocab = _vocab(rng)
    long_text = " ".join(rng.choice(vocab) for _ in range(30000))  # > one 8192-shingle block
    hasher = MinHasher(num_perm=32)
    together = hasher.signatures(["short one", long_text, "another short"])
    alone = hasher.signatures([long_text])
    assert np.array_equal(together[1], alone[0])


def test_workers_give_the_same_signatures():
    texts = [f"text number {i} with words" for i in range(40)]
    hasher = MinHasher(num_perm=16)
    assert np.array_equal(hasher.signatures(texts, chunk_size=10, workers=2), hasher.signatures(texts))


def test_bad_parameters():
    with pytest.raises(ValueError):
        MinHasher(num_perm=0)
    with pytest.raises(ValueError):
        MinHasher(ngram=0)


# ----------------------------------------------------------------------------- LSH index and clusters


def test_union_find_root_is_smallest_and_clusters():
    sets = UnionFind(6)
    sets.union(4, 2)
    sets.union(2, 5)
    sets.union(0, 1)
    assert sets.find(5) == 2 and sets.find(4) == 2 and sets.find(1) == 0
    assert clusters_from_roots(sets.roots()) == [[0, 1], [2, 4, 5]]
    assert clusters_from_roots(sets.roots(), min_size=1)[-1] == [3]


def test_union_find_grows():
    sets = UnionFind()
    ids = [sets.add() for _ in range(100)]
    sets.union(ids[99], ids[40])
    assert len(sets) == 100 and sets.find(99) == 40 and sets.roots()[99] == 40


def test_row_store_spans_blocks():
    store = RowStore((3,), np.uint32, first_block=4, max_block=8)
    rows = np.arange(60, dtype=np.uint32).reshape(20, 3)
    store.append(rows[:5])
    store.append(rows[5:])
    assert len(store) == 20 and len(store.blocks) > 2
    assert np.array_equal(store.take(np.array([19, 0, 7, 7])), rows[[19, 0, 7, 7]])
    assert np.array_equal(store.column(1), rows[:, 1])


def test_union_find_transitive_chain():
    sets = UnionFind(5)
    for a, b in [(3, 4), (2, 3), (1, 2)]:
        sets.union(a, b)
    assert sets.roots().tolist() == [0, 1, 1, 1, 1]


def test_lsh_candidates_and_verification():
    hasher = MinHasher()
    base = "the committee met on tuesday to discuss the annual budget and the new library building plans"
    texts = [
        base,
        base.replace("tuesday", "wednesday"),
        "an entirely unrelated sentence about mountains and rivers",
        base + " in detail",
        "",
    ]
    index = LSHIndex(0.8, hasher.num_perm)
    index.add(hasher.signatures(texts))
    pairs = index.candidate_pairs()
    verified, estimates = index.verify(pairs)
    assert (0, 3) in set(zip(verified.left.tolist(), verified.right.tolist()))
    assert all(e >= 0.8 for e in estimates)
    assert 4 not in set(pairs.left.tolist()) | set(pairs.right.tolist())  # empty text never pairs
    assert index.query(hasher.signatures([base])[0])[0] == 0


def test_small_groups_give_every_pair_and_verification_rejects_weak_candidates():
    index = LSHIndex(0.8, 8, bands=8, rows=1)  # one value in common makes a candidate
    same = np.array([[1, 2, 3, 4, 5, 6, 7, 8]] * 3, dtype=np.uint32)
    weak = np.array([[1, 9, 9, 9, 9, 9, 9, 9]], dtype=np.uint32)  # shares one of eight values
    index.add(np.vstack([same, weak]))
    pairs = index.candidate_pairs()
    assert set(zip(pairs.left.tolist(), pairs.right.tolist())) == {(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)}
    verified, estimates = index.verify(pairs)
    assert set(zip(verified.left.tolist(), verified.right.tolist())) == {(0, 1), (0, 2), (1, 2)}
    assert estimates.tolist() == [1.0, 1.0, 1.0]
    assert [c for c, _ in index.query_verified(weak[0])] == [3]


def test_signature_is_the_minimum_of_each_hash_function():
    hasher = MinHasher(num_perm=8, seed=9)
    batch = hasher.shingle(["alpha beta gamma delta epsilon", "zeta eta theta"])
    sig = hasher.signatures_of_batch(batch)
    a, b = hasher._a[:, 0].tolist(), hasher._b[:, 0].tolist()
    for row in range(2):
        xs = batch.hashes[batch.offsets[row] : batch.offsets[row + 1]].tolist()
        expected = [min((a[j] * x + b[j]) % 2**32 for x in xs) for j in range(8)]
        assert sig[row].tolist() == expected


def test_big_groups_stay_connected_without_quadratic_pairs():
    hasher = MinHasher(num_perm=64)
    texts = ["the very same boilerplate disclaimer text"] * 100
    found = near_duplicate_clusters(texts, hasher=hasher)
    assert set(found.roots.tolist()) == {0}
    assert found.candidate_pairs < 100 * 20  # window + star, not 100*99/2


# ----------------------------------------------------------------------------- deduplicate()


def _records():
    return [
        {"id": "a", "input": "The quick brown fox jumps over the lazy dog near the river bank today"},
        {"id": "b", "input": "the quick brown fox jumps over the lazy dog near the river bank today!! and so on"},
        {"id": "c", "input": "Something completely different here, about cooking pasta at home."},
        {"id": "d", "input": "请解释Python中的装饰器是什么，以及如何在实际项目中使用它们。"},
        {"id": "e", "input": "请解释 Python 中的装饰器是什么?以及如何在实际项目中使用它们"},
        {"id": "f", "input": ""},
        {"id": "g", "input": ""},
        {"id": "h", "input": "THE QUICK BROWN FOX jumps over the lazy dog, near the river bank today."},
    ]


def test_policy_first():
    result = deduplicate(_records(), threshold=0.7, policy="first")
    assert [r["id"] for r in result.kept] == ["a", "c", "d", "f", "g"]
    assert {(r["id"], r["duplicate_of"]) for r in result.removed} == {("b", "a"), ("h", "a"), ("e", "d")}
    assert result.clusters == [["a", "b", "h"], ["d", "e"]]
    assert result.stats["removed"] == 3 and result.stats["empty_texts"] == 2


def test_policy_longest():
    result = deduplicate(_records(), threshold=0.7, policy="longest")
    assert [r["id"] for r in result.kept] == ["b", "c", "e", "f", "g"]
    assert {(r["id"], r["duplicate_of"]) for r in result.removed} == {("a", "b"), ("h", "b"), ("d", "e")}


def test_policy_tag_keeps_everything():
    records = _records()
    result = deduplicate(records, threshold=0.7, policy="tag")
    assert result.removed == []
    tags = {r["id"]: (r["cluster_id"], r["duplicate_of"]) for r in result.kept}
    assert tags["a"] == ("a", None) and tags["b"] == ("a", "a") and tags["h"] == ("a", "a")
    assert tags["c"] == (None, None) and tags["e"] == ("d", "d")
    assert "cluster_id" not in records[0]  # inputs are not modified


def test_reference_dataset():
    records = _records()
    result = deduplicate(records[2:], threshold=0.7, reference=records[:2])
    assert [r["id"] for r in result.kept] == ["c", "d", "f", "g"]
    assert {(r["id"], r["duplicate_of"]) for r in result.removed} == {("h", "a"), ("e", "d")}
    assert result.stats["removed_as_reference_duplicates"] == 1
    longest = deduplicate(records[2:], threshold=0.7, reference=records[:1], policy="longest")
    assert "h" not in [r["id"] for r in longest.kept]  # reference wins even if shorter


def test_text_fields_history_shapes_and_lists():
    pairs = {"input": "q", "history": [["hello there friend", "hi how are you today"]]}
    messages = {
        "input": "q",
        "history": [
            {"role": "user", "content": "hello there friend"},
            {"role": "assistant", "content": "hi how are you today"},
        ],
    }
    joined = {"input": "q", "history": "用户: hello there friend\n助手: hi how are you today"}
    texts = {record_text(r, ["input", "history"]) for r in (pairs, messages, joined)}
    assert texts == {"q\nhello there friend\nhi how are you today"}
    assert record_text({"other": 3}, "input") == ""
    assert record_text({"x": "a", "y": "b"}, lambda r: r["y"]) == "b"
    records = [dict(pairs, id="1"), dict(messages, id="2", input="q"), dict(joined, id="3")]
    assert len(deduplicate(records, text_fields=["input", "history"]).kept) == 1
    assert len(deduplicate(records, text_fields="output").kept) == 3  # all empty: nothing to compare


def test_dedup_is_deterministic_and_scales_to_planted_duplicates():
    rng = random.Random(11)
    vocab = _vocab(rng)
    records = []
    for i in range(300):
        words = [rng.choice(vocab) for _ in range(40)]
        records.append({"id": f"o{i}", "input": " ".join(words)})
        if i % 3 == 0:
            words = list(words)
            words[rng.randrange(40)] = rng.choice(vocab)
            records.append({"id": f"d{i}", "input": " ".join(words)})
    rng.shuffle(records)
    first = deduplicate(records, threshold=0.7, seed=4)
    again = deduplicate(records, threshold=0.7, seed=4)
    assert [r["id"] for r in first.kept] == [r["id"] for r in again.kept]
    assert len(first.kept) == 300 and len(first.removed) == 100
    assert all(r["duplicate_of"][1:] == r["id"][1:] for r in first.removed)


def test_deduplicate_rejects_unknown_policy():
    with pytest.raises(ValueError, match="policy"):
        deduplicate([], policy="random")
