"""Mixed Chinese/English text: one shingling for both scripts, no per-record cutoff (``mode: mixed``).

The old default (``auto``) chose word or character shingles per record by a 30% share of Han characters;
two records one word apart on either side of that share shared no shingle and were never matched. The
measurement on mixed prompts (``bench/mixed_shingles.py``) runs here on a smaller corpus.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from joydataforge.cli.evaluate import SHINGLE_MODES, dedup_command, eval_command
from joydataforge.methods.dedup.step import MinHashDedupStep
from joydataforge.text.minhash import MinHasher, exact_jaccard
from joydataforge.text.minhash_dedup import deduplicate
from joydataforge.text.shingles import MODES, ShingleSpec, cjk_ratio, shingle_hashes, shingle_set, tokens
from tests.support.harness import read_jsonl, write_jsonl

# One word apart ("practice" -> "use"); the shorter word lifts the Han share over 30%.
BELOW = (
    "Please explain how the Python decorator pattern works in practice, 请用中文详细回答并给出一个简单的例子和说明谢谢"
)
ABOVE = "Please explain how the Python decorator pattern works in use, 请用中文详细回答并给出一个简单的例子和说明谢谢"


def _bench():
    path = Path(__file__).resolve().parent.parent / "bench" / "mixed_shingles.py"
    spec = importlib.util.spec_from_file_location("bench_mixed_shingles", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_records_either_side_of_the_old_cutoff_share_shingles_and_match() -> None:
    assert cjk_ratio(BELOW) < 0.3 <= cjk_ratio(ABOVE)
    old = ShingleSpec("auto")
    assert exact_jaccard(shingle_set(BELOW, old), shingle_set(ABOVE, old)) == 0.0  # the failure being fixed
    assert len(deduplicate([{"input": BELOW}, {"input": ABOVE}], mode="auto").kept) == 2
    new = ShingleSpec()  # mixed, the default
    assert new.mode == "mixed"
    assert exact_jaccard(shingle_set(BELOW, new), shingle_set(ABOVE, new)) > 0.8
    result = deduplicate([{"id": "a", "input": BELOW}, {"id": "b", "input": ABOVE}])
    assert [r["id"] for r in result.kept] == ["a"] and result.removed[0]["duplicate_of"] == "a"


async def test_the_step_matches_them_by_default() -> None:
    step = MinHashDedupStep()
    assert step.hasher.mode == "mixed"
    kept = [await step.run({"id": "a", "input": BELOW}, None), await step.run({"id": "b", "input": ABOVE}, None)]  # type: ignore[arg-type]
    assert kept[0] is not None and kept[1] is None
    old = MinHashDedupStep(mode="auto")
    both = [await old.run({"id": "a", "input": BELOW}, None), await old.run({"id": "b", "input": ABOVE}, None)]  # type: ignore[arg-type]
    assert all(r is not None for r in both)


def test_mixed_is_one_stream_of_han_characters_and_words() -> None:
    text = "请用Python写一个decorator"
    assert tokens(text, "word") == ["请", "用", "python", "写", "一", "个", "decorator"]
    assert shingle_set(text, ShingleSpec("mixed", 3)) == {
        "请 用 python",
        "用 python 写",
        "python 写 一",
        "写 一 个",
        "一 个 decorator",
    }
    # pure texts: English gets word 3-grams, Chinese character 3-grams, the same for every record
    assert shingle_set("the cat sat on the mat") == shingle_set("the cat sat on the mat", ShingleSpec("word"))
    assert shingle_set("今天天气很好") == {"今 天 天", "天 天 气", "天 气 很", "气 很 好"}


def test_mixed_hashes_agree_with_the_readable_sets() -> None:
    texts = [BELOW, ABOVE, "今天天气很好", "hello world", "", "请解释 ＰＹＴＨＯＮ 中的装饰器", "a 中 b 文 c"]
    batch = shingle_hashes(texts, ShingleSpec("mixed"))
    sets = [set(batch.hashes[batch.offsets[i] : batch.offsets[i + 1]].tolist()) for i in range(len(texts))]
    strings = [shingle_set(t, ShingleSpec("mixed")) for t in texts]
    for i in range(len(texts)):
        assert len(sets[i]) == len(strings[i])
        for j in range(len(texts)):
            assert exact_jaccard(sets[i], sets[j]) == exact_jaccard(strings[i], strings[j])
    assert not batch.char_mode.any()


def test_mixed_minhash_estimates_jaccard() -> None:
    hasher = MinHasher(num_perm=512, seed=4)
    sig = hasher.signatures([BELOW, ABOVE])
    exact = exact_jaccard(shingle_set(BELOW), shingle_set(ABOVE))
    estimate = float(np.mean(sig[0] == sig[1]))
    assert abs(estimate - exact) < 4 * np.sqrt(exact * (1 - exact) / 512)


def test_more_one_token_edits_are_matched_than_with_the_cutoff() -> None:
    bench = _bench()
    pairs = bench.corpus(1500, seed=1)
    old = bench.measure(pairs, "auto")
    new = bench.measure(pairs, "mixed")
    assert old.disjoint > 0 and new.disjoint == 0  # the cutoff's pairs without any shared shingle
    assert new.exact > old.exact and new.dedup > old.dedup
    assert new.exact >= 0.99 and new.dedup >= 0.97
    assert new.dedup_near_cutoff > old.dedup_near_cutoff


def test_modes_are_the_same_everywhere() -> None:
    assert SHINGLE_MODES == MODES
    from joydataforge.methods.dedup.config import MinHashDedupConfig

    annotation = MinHashDedupConfig.model_fields["mode"].annotation
    assert tuple(annotation.__args__) == MODES  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="'mixed', 'auto', 'word' or 'char'"):
        ShingleSpec("sentence")  # type: ignore[arg-type]


def test_shingle_mode_from_the_command_line(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": "a", "input": BELOW}, {"id": "b", "input": ABOVE}])
    runner = CliRunner()
    for mode, kept in (("mixed", ["a"]), ("auto", ["a", "b"])):
        out = tmp_path / f"{mode}.jsonl"
        result = runner.invoke(dedup_command, [str(data), "-o", str(out), "--shingle-mode", mode])
        assert result.exit_code == 0, result.output
        assert [r["id"] for r in read_jsonl(out)] == kept
    for mode, duplicates in (("mixed", 1), ("auto", 0)):
        metrics = tmp_path / f"{mode}.json"
        result = runner.invoke(
            eval_command, [str(data), "-o", str(metrics), "--embedder", "none", "--shingle-mode", mode]
        )
        assert result.exit_code == 0, result.output
        near = json.loads(metrics.read_text("utf-8"))["near_duplicates"]
        assert near["shingle_mode"] == mode and near["duplicates"] == duplicates
    wrong = runner.invoke(dedup_command, [str(data), "-o", str(tmp_path / "x.jsonl"), "--shingle-mode", "chars"])
    assert wrong.exit_code == 2 and "'chars' is not one of" in wrong.output
