"""The metric set of ``joyforge eval`` and the HTML report, without a browser (see test_report_browser.py)."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from joydataforge.evaluate import report_charts as charts
from joydataforge.evaluate.embeddings import vectors_from_records
from joydataforge.evaluate.metrics import (
    EvalOptions,
    collect_lengths,
    evaluate_records,
    label_distribution,
    length_stats,
    near_duplicate_stats,
)
from joydataforge.evaluate.report import diff_segments, metric_rows, pca_2d, render_report
from joydataforge.io.readers import iter_records
from joydataforge.text.minhash_dedup import record_text

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
SEED_VENDI = 5.7984950145107295  # the seed README's Vendi score of its 10 embeddings


def _records(name: str) -> list[dict]:
    return [item.record for item in iter_records(FIXTURES / name)]


@pytest.fixture(scope="module")
def agent_intent() -> list[dict]:
    return _records("agent_intent.jsonl")


@pytest.fixture(scope="module")
def instructions() -> list[dict]:
    return _records("instructions.jsonl")


# --- metrics --------------------------------------------------------------------------------------


def test_length_stats_by_hand() -> None:
    stats = length_stats([1, 2, 3, 4, 100])
    assert stats["count"] == 5 and stats["min"] == 1 and stats["max"] == 100
    assert stats["mean"] == 22.0 and stats["median"] == 3.0
    assert stats["p90"] == pytest.approx(4 + 0.6 * 96)  # numpy's linear interpolation
    assert length_stats([]) == {"count": 0}


def test_label_distribution_counts_each_label_of_a_list_once_per_record() -> None:
    records = [{"task_label": ["a", "b", "a"]}, {"task_label": ["a"]}, {"task_label": []}, {"tag": "x"}]
    dist = label_distribution(records, "task_label", top=1)
    assert dist["records_with_value"] == 2
    assert dist["top"] == [["a", 2]] and dist["other"] == 1  # b
    assert dist["total"] == 3 and dist["unique"] == 2
    p = np.array([2 / 3, 1 / 3])
    assert dist["shannon_entropy_nats"] == pytest.approx(-(p * np.log(p)).sum())
    assert dist["gini_simpson"] == pytest.approx(1 - (p**2).sum())
    assert dist["inverse_simpson"] == pytest.approx(1 / (p**2).sum())


def test_near_duplicates_find_the_planted_clusters(instructions: list[dict]) -> None:
    texts = [record_text(r, ["input", "history"]) for r in instructions]
    summary, clusters = near_duplicate_stats(texts, threshold=0.8, num_perm=128)
    ids = [[instructions[i]["id"] for i in c] for c in clusters]
    assert ids[0] == ["191bbb6b-699f-4bc3-9eaa-038f4818aeda", "planted-dup-0a", "planted-dup-0b"]
    assert sorted(map(tuple, ids[1:])) == [("en-1", "en-2"), ("fce38dac-611d-4615-ac89-6a12f2db686a", "planted-dup-4")]
    assert summary["duplicates"] == 4 and summary["clusters"] == 3 and summary["largest_cluster"] == 3
    assert summary["records_in_clusters"] == 7 and summary["exact_duplicates"] == 1
    assert summary["duplicate_ratio"] == pytest.approx(4 / 16)


def test_full_metric_set_on_the_seed_records(agent_intent: list[dict]) -> None:
    vectors = vectors_from_records(agent_intent, "embedding")
    evaluation = evaluate_records(
        agent_intent, EvalOptions(text_fields=("query",)), vectors=vectors, embedder="precomputed:embedding"
    )
    m = evaluation.metrics
    json.dumps(m, allow_nan=False)  # plain JSON, no NaN
    assert m["records"] == 10 and m["text_fields"] == ["query"]
    assert m["semantic"]["vendi"]["q=1"] == pytest.approx(SEED_VENDI, abs=1e-6)
    assert m["semantic"]["vendi"]["q=inf"] <= m["semantic"]["vendi"]["q=2"] <= m["semantic"]["vendi"]["q=1"]
    assert m["semantic"]["dim"] == 768 and m["semantic"]["vendi_per_record"] == pytest.approx(SEED_VENDI / 10, abs=1e-6)
    ents = m["entities"]
    # 11 mentions in 9 records: Medications x4, Symptoms x3, Anatomical Parts x2, Diseases, Medical Professionals
    assert ents["records_with_entities"] == 9 and ents["entities"]["total"] == 11 and ents["entities"]["unique"] == 11
    assert ents["types"]["top"][0] == ["Medications", 4]
    assert "query" not in ents["per_type"] and "target" not in ents["per_type"]  # text is never split into entities
    assert m["labels"]["intent"]["unique"] == 6 and m["labels"]["intent"]["top"][0] == [
        "get_medical_consultation_response",
        4,
    ]
    assert m["near_duplicates"]["duplicates"] == 0
    assert m["lengths"]["text"]["max"] == max(len(r["query"]) for r in agent_intent)


def test_entity_fields_can_be_named_or_switched_off(agent_intent: list[dict]) -> None:
    only = evaluate_records(agent_intent, EvalOptions(text_fields=("query",), entity_fields=("Medications",))).metrics
    assert list(only["entities"]["per_type"]) == ["Medications"] and only["entities"]["entities"]["total"] == 4
    assert (
        "entities" not in evaluate_records(agent_intent, EvalOptions(text_fields=("query",), entity_fields=())).metrics
    )


def test_lengths_skip_fields_that_are_empty_everywhere_and_count_dialogue_turns(instructions: list[dict]) -> None:
    texts = [record_text(r, ["input"]) for r in instructions]
    lengths = collect_lengths(instructions, texts, ["input"])
    assert "target" not in lengths  # the fixture's targets are all ""
    assert "input" not in lengths  # the joined text is the input already
    assert lengths["history"][0] == len(instructions[0]["history"])


def test_vectors_must_match_records(agent_intent: list[dict]) -> None:
    with pytest.raises(ValueError, match="one vector per record"):
        evaluate_records(agent_intent, vectors=np.ones((3, 4)))


# --- report pieces --------------------------------------------------------------------------------


def test_pca_map_keeps_planar_geometry_and_is_stable() -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(16, 2)))[0].T  # 2 orthonormal directions in 16-d
    x = rng.normal(size=(40, 2)) @ basis + 5 * rng.normal(size=16)  # a plane, off the origin
    units = x / np.linalg.norm(x, axis=1, keepdims=True)
    points, (v1, v2) = pca_2d(x)
    centred = units - units.mean(axis=0)
    full = np.linalg.norm(centred[:, None] - centred[None], axis=-1)
    mapped = np.linalg.norm(points[:, None] - points[None], axis=-1)
    # unit-normalising bends the plane slightly, so most (not all) of the variance is in two axes
    assert v1 >= v2 and v1 + v2 > 0.9
    assert np.corrcoef(full.ravel(), mapped.ravel())[0, 1] > 0.95
    order = rng.permutation(40)
    again, _ = pca_2d(x[order])
    np.testing.assert_allclose(again, points[order], atol=1e-9)  # signs fixed: no flipping


def test_diff_segments_mark_what_changed() -> None:
    segs = diff_segments("how often, and what dose", "how often and what max dose")
    assert "".join(p for p, kind in segs if kind != "gone") == "how often and what max dose"
    # the comma is punctuation, which dedup ignores: only the inserted word is marked
    assert segs == [("how often and what ", "same"), ("max", "changed"), (" dose", "same")]
    assert diff_segments("same", "same") == [("same", "same")]
    segs = diff_segments("take two tablets daily", "take tablets daily")
    assert ("two", "gone") in segs


def test_diff_segments_ignore_what_dedup_ignores() -> None:
    # case, punctuation, full-width forms and spacing: nothing to mark
    for base, text in [
        ("How OFTEN, and what dose?", "how often and what dose"),
        ("请解释Python中的装饰器。", "请解释 ＰＹＴＨＯＮ 中的装饰器！"),
        ("Café,  naïve!", "cafe\u0301 NAÏVE"),
    ]:
        segs = diff_segments(base, text)
        assert [kind for _, kind in segs] == ["same"], (base, text, segs)
        assert "".join(p for p, _ in segs) == text
    # a changed word inside Chinese text is marked, the punctuation around it is not
    segs = diff_segments("请解释Python中的装饰器。", "请解释Java中的装饰器！")
    assert segs == [("请解释", "same"), ("Java", "changed"), ("中的装饰器！", "same")]
    # with character shingles every letter is a token
    segs = diff_segments("colour", "color", mode="char")
    assert ("u", "gone") in segs and all(kind != "changed" for _, kind in segs)


def test_histogram_bins_hold_every_value() -> None:
    small = [3, 3, 4, 10, 10, 10, 12]  # a short range: one bin per integer
    svg = charts.histogram(small, label="chars")
    assert "chars 10: 3 records" in svg and "chars 3: 2 records" in svg
    wide = list(range(0, 1000, 7)) + [5000]  # a long range: bins of whole units, every value in one
    svg = charts.histogram(wide, label="chars", max_bins=30)
    counts = [int(n) for n in re.findall(r": (\d+) records</title>", svg)]
    assert sum(counts) == len(wide) and len(counts) <= 30
    ranges = re.findall(r"chars (\d+)–(\d+):", svg)
    assert ranges and all(int(a) < int(b) for a, b in ranges)
    assert charts.histogram([], label="x").startswith("<p")


def test_nice_ticks() -> None:
    assert charts.nice_ticks(0, 10, 5) == [0, 2, 4, 6, 8, 10]
    assert charts.nice_ticks(0, 1, 4) == [0, 0.25, 0.5, 0.75, 1.0]
    assert charts.nice_ticks(5, 5) == [5]


def test_every_metric_row_says_what_it_means(agent_intent: list[dict]) -> None:
    evaluation = evaluate_records(
        agent_intent,
        EvalOptions(text_fields=("query",)),
        vectors=vectors_from_records(agent_intent, "embedding"),
        embedder="seed",
    )
    rows = metric_rows(evaluation.metrics)
    assert {r.section for r in rows} == {"Size", "Near-duplicates", "Meaning", "Entities", "Labels", "Lengths"}
    assert all(len(r.meaning) > 30 and r.value for r in rows)


# --- the page -------------------------------------------------------------------------------------


class _PageParser(HTMLParser):
    """Collects what a self-contained page must not have: external resources."""

    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []
        self.scripts: list[dict] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.append(attributes["id"])
        if tag == "script":
            self.scripts.append(attributes)
        for name in ("src", "href"):
            value = attributes.get(name)
            if value and not value.startswith(("#", "data:")):
                self.external.append(f"{tag} {name}={value}")


def _page(records: list[dict], **options) -> tuple[str, object]:
    vectors = np.random.default_rng(1).normal(size=(len(records), 8)) if records else None
    evaluation = evaluate_records(records, EvalOptions(text_fields=("input",)), vectors=vectors, embedder="test")
    return render_report(evaluation, title="测试报告", source="x.jsonl", **options), evaluation


def test_page_is_self_contained_and_carries_its_metrics(instructions: list[dict]) -> None:
    html, evaluation = _page(instructions)
    parser = _PageParser()
    parser.feed(html)
    assert parser.external == []
    assert all("src" not in s for s in parser.scripts)
    assert len(parser.ids) == len(set(parser.ids)), "duplicate element ids"
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)  # only the SVG namespace URI
    data = re.search(r'<script type="application/json" id="metrics-data">(.*?)</script>', html, re.S).group(1)
    assert json.loads(data) == evaluation.metrics
    assert "测试报告" in html and "合理用药-用法用量" in html  # Chinese as text, not escaped
    assert '"Noto Sans CJK SC"' in html and "Microsoft YaHei" in html
    for section in ("metrics", "lengths", "labels", "duplicates", "map"):
        assert f'<section id="{section}">' in html
    assert html.count('class="cluster"') == 3
    assert html.count('<circle class="pt"') == len(instructions)
    assert "PCA" in html and "SVD" in html


def test_user_text_cannot_break_out_of_the_page() -> None:
    evil = "</script><script>alert(1)</script><b onmouseover=x>"
    records = [{"input": evil, "tag": evil}, {"input": evil, "tag": evil}, {"input": "fine", "tag": "</svg>"}]
    html, evaluation = _page(records)
    assert "<script>alert(1)" not in html and "<b onmouseover" not in html
    data = re.search(r'<script type="application/json" id="metrics-data">(.*?)</script>', html, re.S).group(1)
    assert json.loads(data) == evaluation.metrics  # the JSON survives, "<" written as \\u003c


def test_map_samples_large_datasets() -> None:
    records = [{"input": f"record number {i}", "label": "ab"[i % 2]} for i in range(60)]
    html, _ = _page(records, max_map_points=25)
    assert html.count('<circle class="pt"') == 25 and "A random sample of 25 of 60 records" in html


def test_an_empty_dataset_still_renders() -> None:
    html, evaluation = _page([])
    assert evaluation.metrics["records"] == 0 and "<html" in html and "No near-duplicates" in html
    assert not math.isnan(len(html))


def test_backticks_become_code_but_markup_stays_text() -> None:
    from joydataforge.evaluate.report import inline_code

    assert inline_code("run `joyforge dedup` now") == "run <code>joyforge dedup</code> now"
    assert inline_code("`<b>x</b>`") == "<code>&lt;b&gt;x&lt;/b&gt;</code>"


def test_map_legend_keeps_ten_groups_and_merges_the_rest() -> None:
    records = [{"input": f"text {i}", "tag": f"tag{i % 25}"} for i in range(100)]
    html, _ = _page(records)
    legend = re.findall(r'<button type="button" data-group="([^"]+)">', html)
    assert len(legend) == 10 and "(other: 16 values)" in legend  # 9 most frequent tags + the rest
    assert html.count('<circle class="pt"') == 100
    assert "tag24" in html  # the tooltip keeps the real tag


def test_lengths_in_the_json_say_their_unit(instructions: list[dict]) -> None:
    m = evaluate_records(instructions, EvalOptions(text_fields=("input", "history"))).metrics
    assert m["lengths"]["text"]["unit"] == "chars" and m["lengths"]["history"]["unit"] == "turns"
    assert m["lengths"]["input"]["max"] == max(len(r["input"]) for r in instructions)


# --- near-duplicate clusters in the report -----------------------------------------------------------


def _pairs_page() -> str:
    records = _records("pairs.jsonl")  # five pairs, each differing in one word plus case/punctuation
    evaluation = evaluate_records(records, EvalOptions())
    return render_report(evaluation, title="pairs", generated=None)


def test_near_duplicate_card_counts_records_in_clusters() -> None:
    page = _pairs_page()
    card = re.search(r'<div class="k">Near-duplicates</div>.*?<div class="d">(.*?)</div>', page, re.S)
    assert card is not None
    assert "10 records in 5 clusters" in card.group(1) and "5 to remove" in card.group(1)
    assert "5 records in 5 clusters" not in page


def test_cluster_diffs_mark_only_the_changed_words() -> None:
    page = _pairs_page()
    texts = re.findall(r'<div class="text">(.*?)</div>', page, re.S)
    assert len(texts) == 10
    marked = [m for text in texts for m in re.findall(r"<mark>(.*?)</mark>", text)]
    # one changed word per pair; case, punctuation, spacing and full-width letters are never marked
    assert sorted(marked) == sorted(["tea", "after", "事项", "方", "three"]), marked
    assert not any('class="gone"' in text for text in texts)  # nothing dedup compares is missing
    assert page.count("same words") == 0 and page.count("near-duplicate</span>") == 5
