"""The viewer's index: every line found by offset, any field a filter, search in any script, rebuilt on change.

Records are real example outputs (tests/fixtures/golden) in run folders (tests/support/view_runs.py), plus
small files made here where a test needs a shape the examples do not have (repeated ids, broken lines,
free text). Every expected count is computed from the records themselves, not copied from a run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from joydataforge.errors import InputError
from joydataforge.io.writers import jsonl_to_parquet
from joydataforge.view import build
from joydataforge.view.dataset import open_dataset
from joydataforge.view.index import ViewIndex
from joydataforge.view.query import FilterError, parse_condition
from tests.support.view_runs import EXAMPLES, GOLDEN, built_index, read_lines, run_folder


def page(index: ViewIndex, *filters: str, search: str = "", limit: int = 500):
    return index.page([parse_condition(f) for f in filters], search, limit=limit)


def ids(index: ViewIndex, *filters: str, search: str = "") -> list[str]:
    return [row.id for row, _ in page(index, *filters, search=search).rows]


def write(path: Path, records: list[object]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records), "utf-8"
    )
    return path


@pytest.fixture
def vote_run(tmp_path: Path) -> ViewIndex:
    folder = run_folder(tmp_path / "run", "fake_vllm/vote", "fake_vllm/joint", filtered=("dropped-input-1",))
    index = built_index(folder)
    yield index
    index.close()


# ---------------------------------------------------------------------- rows and statuses


def test_every_line_of_a_run_folder_is_a_row_with_its_status(vote_run: ViewIndex) -> None:
    folder = vote_run.dataset.path
    data, failures = read_lines(folder / "data.jsonl"), read_lines(folder / "failures.jsonl")
    assert vote_run.counts() == {"kept": len(data), "failed": len(failures), "dropped": 1, "bad": 0}
    everything = page(vote_run)
    assert everything.total == len(data) + len(failures) + 1
    statuses = [row.status for row, _ in everything.rows]
    assert statuses == ["kept"] * len(data) + ["failed"] * len(failures) + ["dropped"]
    # each row reads back its own line, by offset
    for (_, record), expected in zip(
        everything.rows, data + failures + [{"id": "dropped-input-1", "status": "filtered"}]
    ):
        assert record == expected
    lines = (folder / "data.jsonl").read_bytes().splitlines(keepends=True)
    row, _ = everything.rows[2]
    assert row.line == 3 and vote_run.raw(row.fid, row.offset, row.length) == lines[2]
    assert [row.id for row, _ in everything.rows[len(data) :]] == [f["id"] for f in failures] + ["dropped-input-1"]


def test_status_kind_and_id_filters(vote_run: ViewIndex) -> None:
    folder = vote_run.dataset.path
    data, failures = read_lines(folder / "data.jsonl"), read_lines(folder / "failures.jsonl")
    assert ids(vote_run, "status=failed") == [f["id"] for f in failures]
    assert ids(vote_run, "status=dropped") == ["dropped-input-1"]
    assert len(ids(vote_run, "status!=kept")) == len(failures) + 1
    voted = [r["id"] for r in data if "vote" in r]
    assert ids(vote_run, "kind=vote") == voted
    assert ids(vote_run, "kind=joint") == [r["id"] for r in data if "joint" in r]
    assert ids(vote_run, "kind=failure") == [f["id"] for f in failures]
    assert ids(vote_run, f"id={data[1]['id']}") == [r["id"] for r in data if r["id"] == data[1]["id"]]
    with pytest.raises(FilterError, match="status is one of"):
        page(vote_run, "status=gone")


# ---------------------------------------------------------------------- filters on any field


def test_label_number_list_model_and_step_filters_match_the_records(vote_run: ViewIndex) -> None:
    folder = vote_run.dataset.path
    data = read_lines(folder / "data.jsonl")
    failures = read_lines(folder / "failures.jsonl")
    voted = [r for r in data if "vote" in r]

    def expect(keep) -> list[str]:
        return [r["id"] for r in data if keep(r)]

    assert ids(vote_run, "vote.outcome=majority") == [r["id"] for r in voted if r["vote"]["outcome"] == "majority"]
    assert ids(vote_run, "vote.label=药品") == [r["id"] for r in voted if r["vote"]["label"] == "药品"]
    assert ids(vote_run, "vote.label!?") == [r["id"] for r in voted if r["vote"]["label"] is None] + [
        r["id"] for r in data if "vote" not in r
    ] + [f["id"] for f in failures] + ["dropped-input-1"]
    # numbers compare as numbers; a failure is filtered by its input record's fields
    with_score = [(r["id"], r["score"]) for r in data] + [(f["id"], f["record"]["score"]) for f in failures]
    assert ids(vote_run, "score>=60") == [i for i, s in with_score if s >= 60]
    assert ids(vote_run, "score<35") == [i for i, s in with_score if s < 35]
    assert ids(vote_run, "score=35") == [i for i, s in with_score if s == 35]
    # a list field matches when one of its values does
    label = data[0]["task_label"][2]
    assert ids(vote_run, f"task_label={label}") == [
        r["id"] for r in data + failures if label in (r.get("task_label") or r.get("record", {}).get("task_label", []))
    ]
    # nested answers, models and steps of _meta.calls
    assert ids(vote_run, "votes.smollm2-hot.label=孕期孕周") == [
        r["id"] for r in voted if r["votes"]["smollm2-hot"].get("label") == "孕期孕周"
    ]
    assert ids(vote_run, "model=smollm2-judge") == expect(
        lambda r: any(c["model"] == "smollm2-judge" for c in r["_meta"]["calls"])
    )
    assert ids(vote_run, "step=vote") == expect(lambda r: any(c["step"] == "vote" for c in r["_meta"]["calls"]))
    assert ids(vote_run, "step=pick") == expect(lambda r: any(c["step"] == "pick" for c in r["_meta"]["calls"])) + [
        f["id"] for f in failures if f["step"] == "pick"
    ]
    assert ids(vote_run, "tag~用法") == [
        r["id"] for r in data + failures if "用法" in (r.get("tag") or r["record"].get("tag"))
    ]
    # conditions AND together
    assert ids(vote_run, "vote.outcome=majority", "score<60") == [
        r["id"] for r in voted if r["vote"]["outcome"] == "majority" and r["score"] < 60
    ]


def test_filter_mistakes_are_one_line_messages(vote_run: ViewIndex) -> None:
    with pytest.raises(FilterError, match="no field 'vote.outcom'.*vote.outcome"):
        page(vote_run, "vote.outcom=majority")
    with pytest.raises(FilterError, match="compares numbers"):
        page(vote_run, "score>=high")
    with pytest.raises(FilterError, match="cannot read the filter"):
        parse_condition("score")
    assert parse_condition("score>=60") == parse_condition(" score >= 60 ")
    assert str(parse_condition("a.b!=x=y")) == "a.b!=x=y"
    assert parse_condition("label!?").op == "!?" and parse_condition("label?").op == "?"


def test_free_text_is_searched_not_filtered(tmp_path: Path) -> None:
    records = [
        {
            "id": f"r{i}",
            "input": f"问题 {i}: 皮肤长痘痘 {'甲硝唑' if i % 3 == 0 else '莫匹罗星'} dose {i * 7}",
            "label": "ab"[i % 2],
        }
        for i in range(300)
    ]
    index = built_index(write(tmp_path / "free.jsonl", records))
    menu = {f["path"]: f for f in index.field_menu()}
    assert menu["input"]["kind"] == "text" and not menu["input"]["filterable"]
    assert menu["label"]["kind"] == "label" and menu["label"]["filterable"]
    with pytest.raises(FilterError, match="free text.*search it instead"):
        page(index, "input=问题 1")
    assert index.progress.search == "ready"  # FTS5 trigram: three characters and more use the index
    assert ids(index, search="甲硝唑") == [r["id"] for r in records if "甲硝唑" in r["input"]]
    assert ids(index, search="痘") == [r["id"] for r in records]  # one character: a scan of the search text
    assert ids(index, search="甲硝唑 DOSE") == [r["id"] for r in records if "甲硝唑" in r["input"]]
    assert ids(index, "label=a", search='"dose 21"') == [
        r["id"] for r in records if "dose 21" in r["input"] and r["label"] == "a"
    ]
    assert index.values("label")["values"] == [["a", 150], ["b", 150]]
    index.close()


def test_values_menu_counts_labels_lists_and_ranges(vote_run: ViewIndex) -> None:
    data = read_lines(vote_run.dataset.path / "data.jsonl")
    failures = read_lines(vote_run.dataset.path / "failures.jsonl")
    outcomes = vote_run.values("vote.outcome")["values"]
    assert dict(outcomes) == {
        o: sum(r.get("vote", {}).get("outcome") == o for r in data) for o in ("majority", "no_quorum")
    }
    models = dict(vote_run.values("model")["values"])
    assert models["smollm2-cool"] == sum(any(c["model"] == "smollm2-cool" for c in r["_meta"]["calls"]) for r in data)
    scores = [r["score"] for r in data] + [f["record"]["score"] for f in failures]
    assert vote_run.values("score")["range"] == {"min": min(scores), "max": max(scores), "count": len(scores)}
    assert dict(vote_run.values("status")["values"]) == {"kept": len(data), "failed": len(failures), "dropped": 1}


# ---------------------------------------------------------------------- ids, broken lines, other formats


def test_repeated_ids_are_numbered_across_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "BATCH", 3)
    monkeypatch.setattr(build, "FIRST_BATCH", 2)
    records = [{"id": "x" if i % 2 else f"u{i}", "input": f"q{i}"} for i in range(9)] + [
        {"input": "no id"},
        {"input": "no id"},
    ]
    index = built_index(write(tmp_path / "dups.jsonl", records))
    rows = [row for row, _ in page(index).rows]
    assert [(r.id, r.n) for r in rows if r.id == "x"] == [("x", 1), ("x", 2), ("x", 3), ("x", 4)]
    hashed = [r for r in rows if not r.id.startswith(("x", "u"))]
    assert len({r.id for r in hashed}) == 1 and [r.n for r in hashed] == [1, 2]  # the content hash a run gives
    index.close()


def test_broken_lines_are_bad_rows_with_their_reason(tmp_path: Path) -> None:
    path = write(
        tmp_path / "broken.jsonl", [{"id": "a", "input": "ok"}, '{"id": "b", "input": ', "[1, 2]", "", {"id": "c"}]
    )
    index = built_index(path)
    rows = page(index).rows
    assert [(row.status, row.line) for row, _ in rows] == [("kept", 1), ("bad", 2), ("bad", 3), ("kept", 5)]
    assert rows[1][1] is None and "not JSON" in rows[1][0].error and "not an object" in rows[2][0].error
    assert ids(index, "status=bad") == ["line 2", "line 3"]
    index.close()


def _without_meta(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "_meta"}


def test_parquet_is_copied_to_jsonl_once_and_reviewed_beside_itself(tmp_path: Path) -> None:
    source = GOLDEN / "fake_vllm" / "dpo_pairwise" / "data.jsonl"
    parquet = tmp_path / "pairs.parquet"
    jsonl_to_parquet(source, parquet)
    index = built_index(parquet)
    # Parquet stores a list of dicts as a list of structs: a key some calls' params lack comes back as null,
    # so the provenance is compared by its content, the rest exactly.
    rows = [record for _, record in page(index).rows]
    assert [_without_meta(r) for r in rows] == [_without_meta(r) for r in read_lines(source)]
    assert [len(r["_meta"]["calls"]) for r in rows] == [len(r["_meta"]["calls"]) for r in read_lines(source)]
    assert index.dataset.review == tmp_path / "pairs.review.jsonl"
    assert (tmp_path / ".joyforge-view" / "data.pairs.parquet.jsonl").exists()
    assert ids(index, "dpo.scorer=pairwise") == [r["id"] for r in read_lines(source)]
    index.close()


def test_the_index_is_reused_until_the_data_changes(tmp_path: Path) -> None:
    folder = run_folder(tmp_path / "run", "fake_vllm/dpo")
    first = built_index(folder)
    assert first.builder is not None
    first.close()
    again = ViewIndex(open_dataset(folder))
    assert again.builder is None and again.progress.phase == "done" and again.page([]).total == 1
    again.close()
    with open(folder / "data.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "late", "input": "added after the index"}) + "\n")
    stale = ViewIndex(open_dataset(folder))
    assert stale.builder is not None  # the file's size and time changed: rebuilt
    stale.start()
    stale.wait(60)
    assert ids(stale, "id=late") == ["late"]
    stale.close()


def test_dropped_and_source_records_come_from_the_input_file(tmp_path: Path) -> None:
    seed = EXAMPLES / "wizard_seed.jsonl"
    inputs = read_lines(seed)
    folder = run_folder(tmp_path / "run", "fake_vllm/rewrite", filtered=(inputs[-1]["id"],))
    index = built_index(folder, input_path=seed)
    assert index.input_record(inputs[-1]["id"]) == inputs[-1]
    assert index.input_record("no-such-id") is None
    ((dropped, entry),) = page(index, "status=dropped").rows
    assert dropped.id == inputs[-1]["id"] and entry == {"id": inputs[-1]["id"], "status": "filtered"}
    index.close()


def test_not_a_dataset_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.jsonl").write_text("{}\n")
    with pytest.raises(InputError, match="not a run folder.*notes.jsonl"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "pipeline.yaml").write_text("steps: []\n")
    with pytest.raises(InputError, match="cannot show .yaml"):
        open_dataset(tmp_path / "pipeline.yaml")


def test_a_read_only_folder_gets_its_index_in_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = run_folder(tmp_path / "run", "fake_vllm/dpo")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder.chmod(0o555)
    try:
        index = built_index(folder)
        assert str(index.path).startswith(str(tmp_path / "cache")) and index.page([]).total == 1
        index.close()
    finally:
        folder.chmod(0o755)


def test_sort_and_offset(vote_run: ViewIndex) -> None:
    data = read_lines(vote_run.dataset.path / "data.jsonl")
    failures = read_lines(vote_run.dataset.path / "failures.jsonl")
    scored = [(r["id"], r["score"]) for r in data] + [(f["id"], f["record"]["score"]) for f in failures]
    by_score = [i for i, _ in sorted(scored, key=lambda x: -x[1])]
    rows = vote_run.page([], sort="score", descending=True, limit=500).rows
    assert [row.id for row, _ in rows][: len(scored)] == by_score
    second = vote_run.page([], offset=3, limit=2)
    assert [row.rid for row, _ in second.rows] == [4, 5] and second.total == len(data) + len(failures) + 1
    assert vote_run.neighbours(4, [parse_condition("status=kept")]) == (3, 5)
