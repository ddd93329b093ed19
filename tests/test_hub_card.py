"""The dataset card and shards ``joyforge push`` writes (``--dry-run``: no Hub needed): the numbers are
``joyforge eval``'s, the provenance is the run's, the front matter is what the Hub and ``datasets`` read."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from joydataforge.cli.evaluate import eval_command
from joydataforge.evaluate.report import fmt, pct, summary_pairs
from joydataforge.io import hub, hub_card
from joydataforge.io.readers import PARQUET_META_KEY
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import read_jsonl, run_records, write_jsonl

AGENT = Path(__file__).parent / "fixtures" / "eval" / "agent_intent.jsonl"
SEED = [
    ("咳嗽有痰可以喝什么药", "医疗问诊"),
    ("布洛芬一天吃几次", "合理用药"),
    ("这个药多少钱一盒", "商品咨询"),
    ("How long can I take ibuprofen?", "合理用药"),
    ("维生素AD滴剂怎么用", "合理用药"),
]
STEPS = [
    {"label": {"model": "m", "prompt": "zh/label", "options": {"labels": ["合理用药", "医疗问诊", "商品咨询"]}}},
    {"generate": {"model": "m", "prompt": "zh/answer", "output_field": "target"}},
]


@pytest.fixture(autouse=True)
def _caches_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOYFORGE_CACHE_DIR", str(tmp_path / "cache"))


def joyforge(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str]:
    """``joyforge ARGV`` through the real entry point, in this process: (exit status, stderr)."""
    from joydataforge.cli import main

    monkeypatch.setattr(sys, "argv", ["joyforge", *map(str, argv)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def dry_run(monkeypatch, capsys, data: Path, out: Path, *args: Any) -> str:
    code, err = joyforge(monkeypatch, capsys, "push", data, "me/ds", "--dry-run", out, *args)
    assert code == 0, err
    return (out / "README.md").read_text("utf-8")


def eval_metrics(tmp_path: Path, data: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(eval_command, [str(data), "-o", str(out), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text("utf-8"))


def table_after(card: str, heading: str) -> list[list[str]]:
    """The rows (cells, header and rule left out) of the first Markdown table after ``heading``."""
    lines = card[card.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def front_matter(card: str) -> dict[str, Any]:
    meta, _ = hub_card.split_front_matter(card)
    assert meta, card[:500]
    return meta


# --- the numbers are joyforge eval's ----------------------------------------------------------------------


def test_quality_numbers_are_those_of_joyforge_eval(tmp_path: Path, monkeypatch, capsys) -> None:
    options = ["--text-field", "query", "--embedder", "precomputed:embedding"]
    metrics = eval_metrics(tmp_path, AGENT, *options)
    card = dry_run(monkeypatch, capsys, AGENT, tmp_path / "out", *options)

    assert table_after(card, "### Quality") == [[name, value] for name, value in summary_pairs(metrics)]
    sem = metrics["semantic"]
    assert f"q=1 {fmt(sem['vendi']['q=1'])}" in card and f"per record {fmt(sem['vendi_per_record'])}" in card
    assert "by `precomputed:embedding`" in card
    dup = metrics["near_duplicates"]
    assert (
        f"{fmt(dup['duplicates'])} duplicates ({pct(dup['duplicate_ratio'])}) in {fmt(dup['clusters'])} clusters"
        in card
    )
    ents = metrics["entities"]["entities"]
    assert ents["unique"] == 11  # the fixture's Medications lists
    assert f"{fmt(ents['unique'])} unique entities in {fmt(ents['total'])} mentions" in card
    top = metrics["entities"]["entities"]["top"][0]
    assert f"most frequent: {top[0]} ({fmt(top[1])})" in card
    for name, dist in metrics["labels"].items():
        rows = table_after(card, f"**Label distribution of `{name}`**")
        assert [(value, count) for value, count, _ in rows] == [(str(v), fmt(c)) for v, c in dist["top"]]
        assert [share for _, _, share in rows] == [pct(c / dist["total"]) for _, c in dist["top"]]
    fields = {name.strip("`"): count for name, _, count in table_after(card, "### Fields")}
    assert fields == {name: fmt(count) for name, count in metrics["fields"].items()}


def test_metrics_from_an_earlier_eval_are_used_as_they_are(tmp_path: Path, monkeypatch, capsys) -> None:
    metrics = eval_metrics(tmp_path, AGENT, "--text-field", "query", "--embedder", "precomputed:embedding")
    card = dry_run(monkeypatch, capsys, AGENT, tmp_path / "out", "--metrics", tmp_path / "metrics.json")
    assert table_after(card, "### Quality") == [[name, value] for name, value in summary_pairs(metrics)]
    assert "Measured by `joyforge eval` (metrics.json)." in card

    one = tmp_path / "one.jsonl"
    write_jsonl(one, read_jsonl(AGENT)[:1])
    code, err = joyforge(
        monkeypatch, capsys, "push", one, "me/x", "--dry-run", tmp_path / "o2", "--metrics", tmp_path / "metrics.json"
    )
    assert code == 2 and "measures 10 records, but 1 are pushed" in err and len(err.strip().splitlines()) == 1


def test_no_eval_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    card = dry_run(monkeypatch, capsys, AGENT, tmp_path / "out", "--no-eval")
    assert "Not measured (pushed with `--no-eval`)" in card and "Vendi" not in card.split("### Quality")[1]


# --- how the run was made ---------------------------------------------------------------------------------


def make_run(tmp_path: Path) -> Path:
    records = [{"id": f"r{i}", "input": text, "tag": tag} for i, (text, tag) in enumerate(SEED)]
    return run_records(tmp_path / "work", records, STEPS, {"m": ScriptedBackend()}).out


def test_card_says_how_the_run_was_made(tmp_path: Path, monkeypatch, capsys) -> None:
    run = make_run(tmp_path)
    card = dry_run(monkeypatch, capsys, run, tmp_path / "out", "--embedder", "none", "--license", "apache-2.0")
    made = dict(table_after(card, "### How it was made"))
    summary = json.loads((run / "summary.json").read_text("utf-8"))
    records = read_jsonl(run / "data.jsonl")
    calls = [call for record in records for call in record["_meta"]["calls"]]
    assert made["pipeline"] == "`pipeline`"
    assert made["steps"] == "`label`, `generate`"
    assert made["produced by"] == "`generate` (5 records)"
    assert made["models"] == "`m` (scripted)"
    assert made["input"] == "`in.jsonl`"
    assert made["records"] == "5 pushed; the run folder holds 5 input records done, 0 filtered out, 0 failed"
    prompt, completion = sum(c["prompt_tokens"] for c in calls), sum(c["completion_tokens"] for c in calls)
    assert made["tokens"] == f"{fmt(prompt)} prompt + {fmt(completion)} completion in 10 calls behind these records"
    assert made["last run"].startswith(f"{fmt(summary['tokens'])} tokens, cost 0 ")
    assert made["run fingerprint"] == f"`{json.loads((run / 'run.json').read_text())['fingerprint']}`"
    per_step = table_after(card, "Model calls behind these records")
    assert [row[:5] for row in per_step] == [
        ["`label`", "`m`", "scripted", "5", "0"],
        ["`generate`", "`m`", "scripted", "5", "0"],
    ]
    usage = table_after(card, "What the last `joyforge run`")
    assert usage[0][:3] == ["`m`", fmt(summary["models"]["m"]["calls"]), "0"]
    assert dict(table_after(card, "Step counters:"))["`generate`"] == "generated 5"

    meta = front_matter(card)
    assert meta["license"] == "apache-2.0"
    assert meta["language"] == ["zh", "en"]
    assert meta["task_categories"] == ["text-generation", "text-classification"]  # records carry labels
    assert meta["size_categories"] == ["n<1K"]
    assert meta["tags"] == ["synthetic", "joydataforge", "generate"]
    assert meta["pretty_name"] == "ds"
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    shards = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.parquet"))
    assert shards == ["data/train-00000-of-00001.parquet"]
    table = pq.read_table(tmp_path / "out" / shards[0]).to_pylist()
    assert [r["id"] for r in table] == [r["id"] for r in records] and json.loads(table[0]["_meta"])[
        "pipeline"
    ] == "pipeline"


def test_data_json_from_a_run_names_the_run(tmp_path: Path, monkeypatch, capsys) -> None:
    run = make_run(tmp_path)
    card = dry_run(monkeypatch, capsys, run / "data.jsonl", tmp_path / "out", "--no-eval")
    assert "run fingerprint" in card and "last run" in card


def test_a_plain_file_says_it_has_no_provenance(tmp_path: Path, monkeypatch, capsys) -> None:
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"input": "hello there"}, {"input": "general kenobi"}])
    card = dry_run(
        monkeypatch, capsys, plain, tmp_path / "out", "--embedder", "none", "--language", "en", "--title", "Hi"
    )
    made = dict(table_after(card, "### How it was made"))
    assert made == {
        "records": "2 pushed",
        "provenance": "none recorded: the records carry no `_meta` and no run folder came with them",
    }
    meta = front_matter(card)
    assert (meta["language"], meta["task_categories"], meta["pretty_name"], meta["license"]) == (
        ["en"],
        ["text-generation"],
        "Hi",
        "unknown",
    )


# --- inputs: Parquet, dropped fields, bad records ---------------------------------------------------------


def test_parquet_input_keeps_its_types_and_drops_fields(tmp_path: Path, monkeypatch, capsys) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"input": ["a", "b"], "score": [0.5, 1.0], "embedding": [[1.0, 0.0], [0.0, 1.0]]}), source)
    card = dry_run(monkeypatch, capsys, source, tmp_path / "out", "--drop", "embedding", "--embedder", "none")
    table = pq.read_table(tmp_path / "out" / "data" / "train-00000-of-00001.parquet")
    assert table.column_names == ["input", "score"] and table.schema.field("score").type == pa.float64()
    assert [row[0] for row in table_after(card, "### Fields")] == ["`input`", "`score`"]


def test_mixed_columns_go_as_json_text(tmp_path: Path, monkeypatch, capsys) -> None:
    data = write_jsonl(
        tmp_path / "mixed.jsonl", [{"input": "a", "history": [["q", "a"]]}, {"input": "b", "history": "q\na"}]
    )
    dry_run(monkeypatch, capsys, data, tmp_path / "out", "--no-eval")
    card = (tmp_path / "out" / "README.md").read_text("utf-8")
    schema = pq.read_schema(tmp_path / "out" / "data" / "train-00000-of-00001.parquet")
    assert json.loads(schema.metadata[PARQUET_META_KEY]) == {"json_columns": ["history"]}
    assert ["`history`", "JSON text (mixed types)", "–"] in table_after(card, "### Fields")


def test_a_bad_line_stops_unless_skipped(tmp_path: Path, monkeypatch, capsys) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"input": "a"}\nnot json\n{"input": "b"}\n', "utf-8")
    code, err = joyforge(monkeypatch, capsys, "push", data, "me/x", "--dry-run", tmp_path / "o1", "--no-eval")
    assert code == 2 and f"{data}:2: not valid JSON" in err
    card = dry_run(monkeypatch, capsys, data, tmp_path / "o2", "--no-eval", "--skip-bad")
    assert "2 records in 1 Parquet shard(s)" in card


def test_dry_run_refuses_a_folder_with_other_files(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, err = joyforge(monkeypatch, capsys, "push", AGENT, "me/x", "--dry-run", tmp_path / "busy", "--no-eval")
    assert code == 2 and "the folder holds other files (notes.txt)" in err
    assert (tmp_path / "busy" / "notes.txt").exists()


# --- shards ------------------------------------------------------------------------------------------------


def test_shards_hold_at_most_the_size_asked(tmp_path: Path) -> None:
    source = tmp_path / "big.parquet"
    rows = [{"input": f"{i} " + "x" * 1000, "n": i} for i in range(300)]
    metadata = {PARQUET_META_KEY: json.dumps({"json_columns": []}).encode()}
    pq.write_table(pa.Table.from_pylist(rows).replace_schema_metadata(metadata), source)
    target = hub.PushTarget("me/ds", split="test", config="small", max_shard_bytes=50_000)
    shards = hub.write_shards(source, tmp_path / "out", target, drop=("n",))
    count = len(shards)
    assert count > 5
    assert [s.path_in_repo for s in shards] == [f"small/test-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    read = [pq.read_table(tmp_path / "out" / s.path_in_repo) for s in shards]
    assert all(t.nbytes <= 50_000 for t in read)
    assert sum(t.num_rows for t in read) == sum(s.rows for s in shards) == 300
    assert [r["input"] for t in read for r in t.to_pylist()] == [r["input"] for r in rows]
    assert read[0].column_names == ["input"] and read[0].schema.metadata == metadata
    assert not list((tmp_path / "out").rglob("*.part"))


@pytest.mark.parametrize(
    ("text", "size"), [("500MB", 500 * 10**6), ("64MiB", 64 << 20), ("1.5GB", 1_500_000_000), ("10", 10)]
)
def test_parse_size(text: str, size: int) -> None:
    assert hub.parse_size(text) == size


@pytest.mark.parametrize(
    ("count", "category"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (2_500_000, "1M<n<10M")]
)
def test_size_category(count: int, category: str) -> None:
    assert hub_card.size_category(count) == category


def test_languages_are_detected_from_the_text() -> None:
    assert hub_card.detect_languages([{"input": "布洛芬一天吃几次", "id": "abc"}]) == ["zh"]
    assert hub_card.detect_languages([{"input": "how often", "_meta": {"x": "中文中文中文"}}]) == ["en"]
    assert hub_card.detect_languages([{"input": "布洛芬一天吃几次", "target": ["take it twice a day"]}]) == ["zh", "en"]
    assert hub_card.detect_languages([{"n": 1}]) == []


# --- merging with the card already on the Hub ---------------------------------------------------------------


def test_a_new_split_keeps_the_card_on_the_hub(tmp_path: Path, monkeypatch, capsys) -> None:
    run = make_run(tmp_path)
    first = dry_run(monkeypatch, capsys, run, tmp_path / "first", "--no-eval", "--license", "mit")
    meta, body = hub_card.split_front_matter(first)
    meta["annotations_creators"] = ["machine-generated"]  # someone edited the card on the Hub
    meta["dataset_info"] = [  # and datasets.push_to_hub wrote split sizes, for this config and another
        {"config_name": "default", "splits": [{"name": "train", "num_examples": 5}]},
        {"config_name": "other", "splits": [{"name": "train", "num_examples": 9}]},
    ]
    edited = "---\n" + yaml.safe_dump(meta, allow_unicode=True) + "---\n" + body + "\n## Notes\n\nHand-written words.\n"

    source = hub.locate_data(run)
    facts = hub.RunFacts()
    for record in read_jsonl(run / "data.jsonl")[:2]:
        facts.observe(record)
    shutil.copytree(tmp_path / "first" / "data", tmp_path / "data")
    target = hub.PushTarget("me/ds", split="test")
    shards = [hub.Shard("data/test-00000-of-00001.parquet", 2, 100)]
    card = hub_card.render_card(
        hub_card.CardInput(target, source, facts, shards, [("input", "string")], languages=["zh"]), edited
    )

    meta = front_matter(card)
    assert meta["annotations_creators"] == ["machine-generated"] and meta["license"] == "mit"
    assert meta["dataset_info"] == [{"config_name": "other", "splits": [{"name": "train", "num_examples": 9}]}]
    assert meta["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-*"},
        {"split": "test", "path": "data/test-*"},
    ]
    assert card.count("<!-- joyforge:begin default/train records=5 -->") == 1
    assert card.count("<!-- joyforge:begin default/test records=2 -->") == 1
    assert card.count("<!-- joyforge:header -->") == 1 and card.count("# ds\n") == 1
    assert card.rstrip().endswith("## Notes\n\nHand-written words.")
    assert 'load_dataset("me/ds", split="test")' in card

    again = hub_card.render_card(hub_card.CardInput(target, source, facts, shards[:1], [("input", "string")]), card)
    assert again.count("<!-- joyforge:begin default/test") == 1 and again.count("Hand-written words.") == 1


# --- the human review of joyforge view ----------------------------------------------------------------------


def test_reviewed_pushes_what_the_reviewer_kept(tmp_path: Path, monkeypatch, capsys) -> None:
    from joydataforge.view.review import Review

    run = make_run(tmp_path)
    edited = {**read_jsonl(run / "data.jsonl")[2], "target": "一盒 25 元。"}
    reviews = [
        Review("r0", status="accepted"),
        Review("r1", status="rejected", note="off topic"),
        Review("r2", edited=edited),
    ]
    write_jsonl(run / "review.jsonl", [r.as_json() for r in reviews])

    card = dry_run(monkeypatch, capsys, run, tmp_path / "out", "--no-eval", "--reviewed")
    pushed = pq.read_table(tmp_path / "out" / "data" / "train-00000-of-00001.parquet").to_pylist()
    assert [r["id"] for r in pushed] == ["r0", "r2", "r3", "r4"]
    assert pushed[1]["target"] == "一盒 25 元。"
    assert dict(table_after(card, "### How it was made"))["human review"] == (
        "applied (`joyforge view`): 1 rejected and left out, 1 edited, 1 accepted"
    )
    assert "4 records in 1 Parquet shard(s)" in card

    dry_run(monkeypatch, capsys, run, tmp_path / "only", "--no-eval", "--reviewed", "--accepted-only")
    pushed = pq.read_table(tmp_path / "only" / "data" / "train-00000-of-00001.parquet").to_pylist()
    assert [r["id"] for r in pushed] == ["r0"]

    code, err = joyforge(monkeypatch, capsys, "push", AGENT, "me/x", "--dry-run", tmp_path / "none", "--reviewed")
    assert code == 2 and "no review at" in err and "review the records with `joyforge view" in err
