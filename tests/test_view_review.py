"""Human review: an append-only sidecar where the last line of a record wins, and ``joyforge export --reviewed``.

The review is written the way the viewer writes it (ViewIndex.put_review, what the page's buttons post),
read back by a second store (another viewer, or the export), and applied to real example outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from joydataforge.cli import cli
from joydataforge.io.exports import export_file
from joydataforge.view.review import Review, ReviewApplier, ReviewStore, review_path_for
from tests.support.view_runs import built_index, read_lines, run_folder


def test_last_line_of_a_record_wins_and_clearing_forgets_it(tmp_path: Path) -> None:
    path = tmp_path / "review.jsonl"
    store = ReviewStore(path)
    store.put("a", status="accepted", note="good")
    store.put("b", status="rejected")
    store.put("a", 2, edited={"id": "a", "input": "fixed"})
    store.put("a", status="rejected", note="second look: wrong label")
    store.put("b")  # cleared
    assert store.get("a") == Review("a", 1, "rejected", "second look: wrong label", None, store.get("a").at)
    assert store.get("a", 2).edited == {"id": "a", "input": "fixed"} and store.get("a", 2).status is None
    assert store.get("b") is None
    assert store.counts() == {"accepted": 0, "rejected": 1, "edited": 1, "noted": 1}
    lines = read_lines(path)
    assert len(lines) == 5 and lines[0]["status"] == "accepted"  # nothing rewritten: the history stays
    again = ReviewStore(path)
    assert {(r.id, r.n): r.status for r in again} == {("a", 1): "rejected", ("a", 2): None}


def test_a_second_store_sees_appends_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "review.jsonl"
    mine, theirs = ReviewStore(path), ReviewStore(path)
    theirs.put("x", status="accepted")
    assert mine.get("x") is None and mine.refresh() and mine.get("x").status == "accepted"
    with open(path, "ab") as handle:
        handle.write(b'{"id": "y", "status": "acc')  # a crash in the middle of a write
    assert not mine.refresh() and mine.get("y") is None
    mine.put("z", status="rejected")  # starts on a fresh line
    fresh = ReviewStore(path)
    assert fresh.get("z").status == "rejected" and fresh.get("x").status == "accepted"
    assert fresh.bad_lines == 1  # the torn line, now complete but not a review
    assert path.read_bytes().count(b"\n") == 3


def test_invalid_reviews_are_refused(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "review.jsonl")
    with pytest.raises(ValueError, match="status"):
        store.put("a", status="maybe")
    with pytest.raises(ValueError, match="edited"):
        store.put("a", edited=["not", "an", "object"])  # type: ignore[arg-type]
    assert not (tmp_path / "review.jsonl").exists()


def test_sidecar_paths(tmp_path: Path) -> None:
    folder = run_folder(tmp_path / "run", "fake_vllm/dpo")
    assert review_path_for(folder) == folder / "review.jsonl"
    assert review_path_for(folder / "data.jsonl") == folder / "review.jsonl"
    assert review_path_for(tmp_path / "pairs.parquet") == tmp_path / "pairs.review.jsonl"
    assert review_path_for(tmp_path / "data.jsonl") == tmp_path / "data.review.jsonl"  # not a run folder


def test_applier_drops_rejected_applies_edits_and_counts_repeated_ids(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "review.jsonl")
    store.put("x", 2, status="rejected")
    store.put("x", 3, edited={"id": "x", "input": "edited third"}, note="typo")
    store.put("y", status="accepted")
    records = [{"id": "x", "input": str(k)} for k in range(4)] + [{"id": "y", "input": "y"}, {"id": "z", "input": "z"}]
    applier = ReviewApplier(store)
    out = [applier(r) for r in records]
    assert out == [records[0], None, {"id": "x", "input": "edited third"}, records[3], records[4], records[5]]
    assert applier.unmatched() == 0
    kept = ReviewApplier(store, keep_notes=True, accepted_only=True)
    out = [kept(r) for r in records]
    assert out == [None] * 4 + [{"id": "y", "input": "y", "review": {"status": "accepted", "note": ""}}, None]
    short = ReviewApplier(store)
    [short(r) for r in records[:2]]
    assert short.unmatched() == 2  # x#3 and y: the data ended before them


def test_export_file_transform_drops_and_counts(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "input": f"q{i}", "target": f"a{i}"}) + "\n" for i in range(5)))
    report = export_file(source, tmp_path / "out.jsonl", "records", transform=lambda r: r if r["id"] % 2 else None)
    assert (report.read, report.written, report.dropped) == (5, 2, 3)
    assert read_lines(tmp_path / "out.jsonl") == [
        {"id": 1, "input": "q1", "target": "a1"},
        {"id": 3, "input": "q3", "target": "a3"},
    ]


# ---------------------------------------------------------------------- joyforge export --reviewed


@pytest.fixture
def reviewed_run(tmp_path: Path) -> Path:
    """A run of real outputs reviewed through the viewer: one accepted with a note, one rejected, one edited."""
    folder = run_folder(tmp_path / "run", "fake_vllm/critique")
    index = built_index(folder)
    rows = [row for row, _ in index.page([], limit=10).rows]
    record = index.read(rows[2])
    index.put_review(rows[0], status="accepted", note="clear answer")
    index.put_review(rows[1], status="rejected", note="off topic")
    index.put_review(rows[2], edited={**record, "target": "a better answer, written by hand"})
    index.close()
    return folder


def test_export_reviewed_records(reviewed_run: Path, tmp_path: Path) -> None:
    data = read_lines(reviewed_run / "data.jsonl")
    out = tmp_path / "reviewed.jsonl"
    result = CliRunner().invoke(cli, ["export", str(reviewed_run), str(out), "--reviewed"])
    assert result.exit_code == 0, result.output
    assert "1 rejected dropped, 1 edited, 1 accepted" in result.output
    exported = read_lines(out)
    assert exported == [data[0], {**data[2], "target": "a better answer, written by hand"}, *data[3:]]
    assert read_lines(reviewed_run / "data.jsonl") == data  # the data itself is never rewritten


def test_export_reviewed_sharegpt_with_notes_and_accepted_only(reviewed_run: Path, tmp_path: Path) -> None:
    data = read_lines(reviewed_run / "data.jsonl")
    out = tmp_path / "train.jsonl"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            str(reviewed_run),
            str(out),
            "--format",
            "sharegpt",
            "--reviewed",
            "--keep-notes",
            "--accepted-only",
        ],
    )
    assert result.exit_code == 0, result.output
    (only,) = read_lines(out)
    assert only["review"] == {"status": "accepted", "note": "clear answer"}
    assert only["conversations"][-1] == {"from": "gpt", "value": data[0]["target"]}
    everything = CliRunner().invoke(
        cli, ["export", str(reviewed_run / "data.jsonl"), str(tmp_path / "all.jsonl"), "--format", "openai"]
    )
    assert everything.exit_code == 0 and len(read_lines(tmp_path / "all.jsonl")) == len(data)


def test_export_reviewed_needs_a_review_and_says_what_matched_nothing(reviewed_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(
        cli,
        [
            "export",
            str(reviewed_run),
            str(tmp_path / "o.jsonl"),
            "--reviewed",
            "--review-file",
            str(tmp_path / "none.jsonl"),
        ],
    )
    assert missing.exit_code != 0 and "no review at" in str(missing.exception or missing.output)
    alone = runner.invoke(cli, ["export", str(reviewed_run), str(tmp_path / "o.jsonl"), "--keep-notes"])
    assert alone.exit_code == 2 and "go with --reviewed" in alone.output
    other = tmp_path / "other.review.jsonl"
    ReviewStore(other).put("not-in-this-run", status="rejected")
    result = runner.invoke(
        cli, ["export", str(reviewed_run), str(tmp_path / "o.jsonl"), "--reviewed", "--review-file", str(other)]
    )
    assert result.exit_code == 0 and "1 review(s) matched no record" in result.output
