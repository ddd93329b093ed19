"""Readers: every format, the three encodings, bad lines with their numbers, the window, folders."""

from __future__ import annotations

import codecs
import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from joydataforge.errors import InputError
from joydataforge.io.encodings import detect_encoding, sniff_encoding
from joydataforge.io.readers import SourceItem, count_records, input_files, iter_records
from joydataforge.records import normalize_history

FIXTURES = Path(__file__).parent / "fixtures" / "io"
SEED = Path(__file__).resolve().parents[2] / "shared" / "seed-data" / "datas"

THREE_IDS = ["a1", "a2", "a3"]


def ids(items: list[SourceItem]) -> list[str | None]:
    return [item.record["id"] if item.record else None for item in items]


def lines(items: list[SourceItem]) -> list[int | None]:
    return [item.location.line for item in items]


# --- encodings -----------------------------------------------------------------------------------


def test_sniff_tells_the_three_encodings_apart():
    text = "孕妇可以吃布洛芬吗？"
    assert sniff_encoding(text.encode("utf-8"), complete=True) == "utf-8"
    assert sniff_encoding(codecs.BOM_UTF8 + text.encode("utf-8"), complete=True) == "utf-8-sig"
    assert sniff_encoding(text.encode("gb18030"), complete=True) == "gb18030"


def test_sniff_does_not_blame_utf8_for_a_character_cut_by_the_sample_end():
    sample = "好".encode()[:2]
    assert sniff_encoding(b"abc" + sample, complete=False) == "utf-8"


def test_utf16_is_refused_with_advice(tmp_path):
    path = tmp_path / "wide.jsonl"
    path.write_bytes('{"a": 1}\n'.encode("utf-16"))
    with pytest.raises(InputError, match="UTF-16.*convert it to UTF-8"):
        detect_encoding(path)


def test_gb18030_jsonl_is_detected_and_decoded():
    items = list(iter_records(FIXTURES / "gb18030.jsonl"))
    assert all(item.ok for item in items)
    assert ids(items) == THREE_IDS
    assert items[0].record["input"] == "孕妇可以吃布洛芬吗？"


def test_bom_jsonl_loses_its_bom():
    items = list(iter_records(FIXTURES / "bom.jsonl"))
    assert ids(items) == THREE_IDS
    assert all(item.ok for item in items)
    assert "\ufeff" not in json.dumps(items[0].record)


def test_explicit_utf8_on_a_bom_file_still_strips_the_bom():
    assert ids(list(iter_records(FIXTURES / "bom.csv", encoding="utf-8"))) == ["b1"]


def test_encoding_override_wins_over_detection():
    # read the GB18030 file as UTF-8 on purpose: every line is then an encoding error
    items = list(iter_records(FIXTURES / "gb18030.jsonl", encoding="utf-8"))
    assert len(items) == 3 and not any(item.ok for item in items)
    assert "gb18030" in str(items[0].error)


def test_unknown_encoding_is_an_input_error():
    with pytest.raises(InputError, match="unknown encoding"):
        list(iter_records(FIXTURES / "bom.jsonl", encoding="no-such-codec"))


def test_invalid_bytes_give_an_error_on_their_line_not_a_crash():
    items = list(iter_records(FIXTURES / "mixed_encoding.jsonl"))
    assert ids(items) == ["m1", None, "m3"]
    error = items[1].error
    assert isinstance(error, InputError)
    assert error.location.line == 2
    assert "mixed_encoding.jsonl:2" in str(error) and "not valid utf-8" in str(error)


# --- JSONL -----------------------------------------------------------------------------------------


def test_bad_lines_in_the_middle_are_reported_with_their_line_and_reading_goes_on():
    items = list(iter_records(FIXTURES / "bad_lines.jsonl"))
    # line 2 is blank (not an item), line 3 is not JSON, line 5 is an array
    assert lines(items) == [1, 3, 4, 5, 6]
    assert ids(items) == ["a1", None, "a2", None, "a3"]
    assert "bad_lines.jsonl:3" in str(items[1].error) and "not valid JSON" in str(items[1].error)
    assert "expected a JSON object, got an array" in str(items[3].error)
    assert items[1].record is None


def test_seed_jsonl_reads_with_line_numbers():
    items = list(iter_records(FIXTURES / "seed_cdss.jsonl"))
    assert lines(items) == [1, 2, 3] and all(item.ok for item in items)
    assert normalize_history(items[0].record["history"])[0]["role"] == "user"


@pytest.mark.skipif(not SEED.exists(), reason="the shared seed data is not beside this checkout")
def test_the_real_seed_folder_reads_whole():
    items = list(iter_records(SEED))
    good = [item for item in items if item.ok]
    # 10 agent_intent + 9 cdss + 10 wizard records; embeddings_examples.json is an array of vectors
    assert len(good) == 29
    bad = [item for item in items if not item.ok]
    assert len(bad) == 10 and all("embeddings_examples.json" in item.location.path for item in bad)
    assert "array element 1 is an array" in str(bad[0].error)


def test_ndjson_extension_is_jsonl(tmp_path):
    path = tmp_path / "x.ndjson"
    shutil.copy(FIXTURES / "bom.jsonl", path)
    assert ids(list(iter_records(path))) == THREE_IDS


# --- JSON ------------------------------------------------------------------------------------------


def test_json_array_locations_are_index_plus_one():
    items = list(iter_records(FIXTURES / "array.json"))
    assert ids(items) == THREE_IDS and lines(items) == [1, 2, 3]
    assert items[2].record["history"][0] == {"role": "user", "content": "我头疼"}


def test_single_pretty_printed_object():
    items = list(iter_records(FIXTURES / "object.json"))
    assert ids(items) == ["a1"] and lines(items) == [1]


def test_jsonl_named_json_is_detected_like_the_seed_examples_json():
    items = list(iter_records(FIXTURES / "seed_agent_intent.json"))
    assert [item.record["id"] for item in items] == [1, 2]
    assert items[0].record["query"] == "维生素AD滴剂怎么用？"


def test_jsonl_named_json_with_a_broken_first_line_is_still_jsonl(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"id": 1,\n{"id": 2}\n{"id": 3}\n', encoding="utf-8")
    items = list(iter_records(path))
    assert lines(items) == [1, 2, 3] and ids(items) == [None, 2, 3]


def test_broken_json_document_is_one_error_item_with_its_text_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"id": 1},\n  {"id": 2\n]\n', encoding="utf-8")
    items = list(iter_records(path))
    assert len(items) == 1 and not items[0].ok
    assert "line 4" in str(items[0].error)


def test_array_elements_that_are_not_objects_are_errors(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text('[{"id": 1}, "text", {"id": 3}]', encoding="utf-8")
    items = list(iter_records(path))
    assert ids(items) == [1, None, 3]
    assert "array element 2 is a string" in str(items[1].error)


def test_gb18030_json_array(tmp_path):
    path = tmp_path / "gb.json"
    path.write_bytes(json.dumps([{"input": "国标"}], ensure_ascii=False).encode("gb18030"))
    assert [item.record for item in iter_records(path)] == [{"input": "国标"}]


# --- CSV -------------------------------------------------------------------------------------------


def test_csv_rows_with_multiline_fields_wrong_widths_and_json_cells():
    items = list(iter_records(FIXTURES / "table.csv"))
    # the first record spans lines 2-3, so the next starts on line 4
    assert lines(items) == [2, 4, 5]
    first = items[0].record
    assert first == {"id": "c1", "input": "第一行\r\n第二行", "history": '[["你好", "您好"]]'}
    assert json.loads(first["history"]) == [["你好", "您好"]]  # JSON cells stay strings (documented)
    assert "2 fields but the header has 3" in str(items[1].error)
    assert items[2].record == {"id": "c3", "input": "普通", "history": ""}


def test_csv_in_gb18030_and_with_bom():
    assert [item.record for item in iter_records(FIXTURES / "gb18030.csv")] == [
        {"id": "g1", "input": "国标编码"},
        {"id": "g2", "input": "第二"},
    ]
    assert [item.record for item in iter_records(FIXTURES / "bom.csv")] == [{"id": "b1", "input": "带BOM"}]


def test_csv_bad_bytes_are_an_error_on_their_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"id,input\n1,ok\n2,\xff\xfe broken\n3,fine\n")
    items = list(iter_records(path, encoding="utf-8"))
    assert ids(items) == ["1", None, "3"]
    assert items[1].location.line == 3 and "not valid utf-8" in str(items[1].error)


def test_csv_duplicate_header_is_reported():
    items = list(iter_records_text("id,id\n1,2\n"))
    assert len(items) == 1 and "repeats the column name" in str(items[0].error)


def iter_records_text(text: str, suffix: str = ".csv") -> list[SourceItem]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"t{suffix}"
        path.write_text(text, encoding="utf-8")
        return list(iter_records(path))


# --- XLSX ------------------------------------------------------------------------------------------


def make_workbook(path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "first"
    sheet.append(["id", "input", "score", "when", None])
    sheet.append(["x1", "你好", 3, dt.datetime(2024, 5, 1, 8, 30), None])
    sheet.append([None, None, None, None, None])  # an empty row is not an item
    sheet.append(["x2", "再见", 2.5, None, None])
    sheet.append(["x3", "多余", 1, None, "value under no header"])
    other = workbook.create_sheet("second")
    other.append(["id"])
    other.append(["y1"])
    workbook.save(path)


def test_xlsx_first_sheet_rows_types_and_row_numbers(tmp_path):
    path = tmp_path / "book.xlsx"
    make_workbook(path)
    items = list(iter_records(path))
    assert lines(items) == [2, 4, 5]
    assert items[0].record == {"id": "x1", "input": "你好", "score": 3, "when": "2024-05-01T08:30:00"}
    assert items[1].record == {"id": "x2", "input": "再见", "score": 2.5, "when": None}
    assert "column 5 has a value but no name" in str(items[2].error)


def test_xlsx_named_sheet_and_unknown_sheet(tmp_path):
    path = tmp_path / "book.xlsx"
    make_workbook(path)
    assert [item.record for item in iter_records(path, sheet="second")] == [{"id": "y1"}]
    with pytest.raises(InputError, match="no sheet named 'third'.*first.*second"):
        list(iter_records(path, sheet="third"))


def test_a_corrupt_xlsx_is_one_error_item(tmp_path):
    path = tmp_path / "fake.xlsx"
    path.write_text("not a zip", encoding="utf-8")
    items = list(iter_records(path))
    assert len(items) == 1 and "not a readable XLSX" in str(items[0].error)


# --- Parquet ---------------------------------------------------------------------------------------


def test_parquet_nested_values_row_numbers_and_skipped_row_groups(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"id": f"p{i}", "history": [["问", "答"]] * (i % 3), "when": dt.date(2024, 1, 1 + i)} for i in range(10)]
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)
    items = list(iter_records(path))
    assert lines(items) == list(range(1, 11))
    assert items[2].record == {"id": "p2", "history": [["问", "答"], ["问", "答"]], "when": "2024-01-03"}
    window = list(iter_records(path, start=4, limit=4))
    assert ids(window) == ["p4", "p5", "p6", "p7"] and lines(window) == [5, 6, 7, 8]
    assert count_records(path) == 10 and count_records(path, start=4, limit=4) == 4
    assert list(iter_records(path, start=50)) == []


# --- window ----------------------------------------------------------------------------------------


def test_start_and_limit_count_good_and_bad_items_alike():
    path = FIXTURES / "bad_lines.jsonl"  # items on lines 1, 3(bad), 4, 5(bad), 6
    assert lines(list(iter_records(path, start=1, limit=2))) == [3, 4]
    assert lines(list(iter_records(path, start=2))) == [4, 5, 6]
    assert lines(list(iter_records(path, limit=0))) == []
    assert count_records(path) == 5
    assert count_records(path, start=2) == 3 and count_records(path, start=1, limit=2) == 2


def test_window_on_json_array_and_csv():
    assert ids(list(iter_records(FIXTURES / "array.json", start=1, limit=1))) == ["a2"]
    assert lines(list(iter_records(FIXTURES / "table.csv", start=1))) == [4, 5]


def test_negative_window_is_refused():
    with pytest.raises(ValueError):
        iter_records(FIXTURES / "array.json", start=-1)
    with pytest.raises(ValueError):
        iter_records(FIXTURES / "array.json", limit=-1)


def test_jsonl_streams_lazily_and_closes_when_the_consumer_stops(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(50_000):
            handle.write(json.dumps({"id": i, "input": "文本" * 10}, ensure_ascii=False) + "\n")
    stream = iter_records(path, start=49_990)
    first = next(stream)
    assert first.record["id"] == 49_990 and first.location.line == 49_991
    stream.close()
    assert count_records(path) == 50_000


def test_reading_a_jsonl_file_keeps_memory_flat(tmp_path):
    """Peak memory must not grow with the file: 8x the lines, (nearly) the same peak."""
    import tracemalloc

    line = json.dumps({"id": 0, "input": "长文本" * 100}, ensure_ascii=False) + "\n"

    def peak_for(lines: int) -> int:
        path = tmp_path / f"{lines}.jsonl"
        path.write_text(line * lines, encoding="utf-8")  # both files exceed the 1 MiB encoding sample
        tracemalloc.start()
        try:
            assert sum(1 for item in iter_records(path) if item.ok) == lines
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_for(5_000), peak_for(40_000)  # ~4.6 MB and ~37 MB
    assert large < small * 1.2 + 100_000, (small, large)


# --- folders and file-level errors -----------------------------------------------------------------


def test_a_folder_is_one_stream_sorted_by_name_recursively():
    folder = FIXTURES / "folder"
    files = [path.relative_to(folder).as_posix() for path in input_files(folder)]
    assert files == ["a.json", "b.jsonl", "sub/c.csv"]  # README.md and .hidden.jsonl are ignored
    items = list(iter_records(folder))
    assert ids(items) == ["a1", "b1", "b2", "c1"]
    assert items[3].record["input"] == "丙"  # the GB18030 CSV inside, detected per file
    assert [Path(item.location.path).name for item in items] == ["a.json", "b.jsonl", "b.jsonl", "c.csv"]
    assert count_records(folder) is None  # a CSV has no cheap count


def test_window_runs_across_the_files_of_a_folder():
    assert ids(list(iter_records(FIXTURES / "folder", start=2, limit=2))) == ["b2", "c1"]


def test_missing_path_and_unsupported_type_raise_at_once(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        iter_records(tmp_path / "nope.jsonl")
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(InputError, match=r"unsupported file type '\.txt'"):
        iter_records(other)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no input files"):
        iter_records(empty)


def test_the_error_names_file_line_and_is_an_input_error():
    item = list(iter_records(FIXTURES / "bad_lines.jsonl"))[1]
    assert isinstance(item.error, InputError)
    assert item.error.location == item.location
    assert str(item.error).startswith(str(FIXTURES / "bad_lines.jsonl") + ":3:")


def test_yaml_taxonomy_is_read_as_topic_records(tmp_path):
    from joydataforge.io.readers import iter_records

    path = tmp_path / "topics.yaml"
    path.write_text(
        "topics:\n  - id: cooking\n    topic: home cooking\n    subtopics: [baking, sauces]\n"
        "  - id: tax\n    topic: personal taxes\n",
        "utf-8",
    )
    items = list(iter_records(path))
    assert [item.record["id"] for item in items] == ["cooking", "tax"]
    assert items[0].record["subtopics"] == ["baking", "sauces"] and items[0].error is None
    assert items[0].location.line is not None
