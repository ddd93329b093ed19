"""Writers: durable appends, crash repair for resume, strict reading back, JSONL -> Parquet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from joydataforge.errors import InputError, JoyForgeError
from joydataforge.io.readers import iter_records
from joydataforge.io.writers import JsonlAppender, jsonl_to_parquet, read_jsonl, repair_tail

FIXTURES = Path(__file__).parent / "fixtures" / "io"


def records(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"r{i}", "input": f"问题{i}"} for i in range(start, start + n)]


# --- JsonlAppender ---------------------------------------------------------------------------------


def test_appender_writes_utf8_unescaped_one_record_per_line(tmp_path):
    path = tmp_path / "out" / "o.jsonl"  # the folder is created
    with JsonlAppender(path) as writer:
        writer.write(records(2))
        writer.write([{"id": "multi", "input": "一\n二"}])
    raw = path.read_bytes()
    assert "问题0".encode() in raw and b"\\u" not in raw
    assert raw.count(b"\n") == 3  # the newline inside a value is escaped
    assert [r["id"] for r in read_jsonl(path)] == ["r0", "r1", "multi"]


def test_appender_appends_to_an_existing_file(tmp_path):
    path = tmp_path / "o.jsonl"
    with JsonlAppender(path) as writer:
        writer.write(records(2))
    with JsonlAppender(path) as writer:
        writer.write(records(1, start=2))
    assert [r["id"] for r in read_jsonl(path)] == ["r0", "r1", "r2"]


def test_a_batch_is_one_os_write(tmp_path, monkeypatch):
    calls = []
    real_write = os.write

    def counting_write(fd, data):
        calls.append(bytes(data))
        return real_write(fd, data)

    path = tmp_path / "o.jsonl"
    writer = JsonlAppender(path, fsync_every=None)
    monkeypatch.setattr(os, "write", counting_write)
    writer.write(records(100))
    monkeypatch.undo()
    writer.close()
    assert len(calls) == 1 and calls[0].count(b"\n") == 100


def test_unserialisable_record_writes_nothing_of_its_batch(tmp_path):
    path = tmp_path / "o.jsonl"
    with JsonlAppender(path) as writer:
        with pytest.raises(TypeError):
            writer.write([{"id": "ok"}, {"id": "bad", "value": object()}])
    assert path.read_bytes() == b""


def test_fsync_policy(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    every = JsonlAppender(tmp_path / "a.jsonl", fsync_every=0)
    every.write(records(1))
    every.write(records(1))
    assert len(synced) == 2
    every.close()
    synced.clear()
    lazy = JsonlAppender(tmp_path / "b.jsonl", fsync_every=3600)
    lazy.write(records(1))
    lazy.write(records(1))
    assert synced == []
    lazy.close()  # close always syncs what was written
    assert len(synced) == 1


def test_write_after_close_is_refused(tmp_path):
    writer = JsonlAppender(tmp_path / "o.jsonl")
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.write(records(1))


def test_appender_refuses_to_glue_onto_a_torn_line(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_bytes(b'{"id": "r0"}\n{"id": "r1", "inp')
    with pytest.raises(JoyForgeError, match="torn line.*repair_tail"):
        JsonlAppender(path)


def test_appender_completes_a_last_line_that_only_lacks_its_newline(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_bytes(b'{"id": "r0"}')
    with JsonlAppender(path) as writer:
        writer.write([{"id": "r1"}])
    assert [r["id"] for r in read_jsonl(path)] == ["r0", "r1"]


# --- repair_tail -----------------------------------------------------------------------------------


def test_repair_tail_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "o.jsonl"
    with JsonlAppender(path) as writer:
        writer.write(records(3))
    good = path.read_bytes()
    with open(path, "ab") as handle:
        handle.write(b'{"id": "r3", "input": "\xe9\x97')  # cut inside a UTF-8 character, too
    assert repair_tail(path, keep=lambda record: True) == 1
    assert path.read_bytes() == good
    assert repair_tail(path, keep=lambda record: True) == 0  # idempotent


def test_repair_tail_drops_uncommitted_records_only_at_the_tail(tmp_path):
    path = tmp_path / "o.jsonl"
    lines = [
        {"id": "r0", "batch": 1},
        {"id": "r1", "batch": 1, "commit": True},
        {"id": "r2", "batch": 2},  # uncommitted but followed by a committed line: stays
        {"id": "r3", "batch": 2, "commit": True},
        {"id": "r4", "batch": 3},
        {"id": "r5", "batch": 3},  # batch 3 never committed
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"id": "r6", "ba', encoding="utf-8")
    removed = repair_tail(path, keep=lambda record: record.get("commit", False))
    assert removed == 3
    assert [r["id"] for r in read_jsonl(path)] == ["r0", "r1", "r2", "r3"]


def test_repair_tail_keeps_a_whole_last_record_missing_only_its_newline(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_bytes(b'{"id": "r0"}\n{"id": "r1"}')
    assert repair_tail(path, keep=lambda record: True) == 0
    assert path.read_bytes() == b'{"id": "r0"}\n{"id": "r1"}\n'


def test_repair_tail_can_empty_a_file_and_ignores_a_missing_one(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_bytes(b'{"id": "r0"}\n\n{"id": "r1"}\n{"id"')
    assert repair_tail(path, keep=lambda record: False) == 4
    assert path.read_bytes() == b""
    assert repair_tail(tmp_path / "missing.jsonl", keep=lambda record: True) == 0


def test_repair_tail_reads_backwards_across_chunk_boundaries(tmp_path):
    path = tmp_path / "o.jsonl"
    long_records = [{"id": f"r{i}", "text": "长" * 40_000} for i in range(3)]  # lines of ~120 KB
    with JsonlAppender(path) as writer:
        writer.write(long_records)
    good = path.read_bytes()
    with open(path, "ab") as handle:
        handle.write(b'{"id": "torn", "text": "' + "长".encode() * 30_000)
    assert repair_tail(path, keep=lambda record: True) == 1
    assert path.read_bytes() == good


def test_a_kill_9_mid_run_is_repaired_and_loses_no_written_record(tmp_path):
    """A child appends batches until it is SIGKILLed; whatever it left, repair yields whole records."""
    path = tmp_path / "o.jsonl"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "src")!r})
        from joydataforge.io.writers import JsonlAppender
        writer = JsonlAppender({str(path)!r}, fsync_every=None)
        i = 0
        while True:
            writer.write([{{"id": i + k, "text": "x" * 5000}} for k in range(50)])
            i += 50
            if i == 500:
                print("ready", flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.kill()
    child.wait()
    repair_tail(path, keep=lambda record: True)
    ids = [record["id"] for record in read_jsonl(path)]
    assert len(ids) >= 500 and ids == list(range(len(ids)))


# --- read_jsonl ------------------------------------------------------------------------------------


def test_read_jsonl_is_strict_and_names_the_line(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2\n', encoding="utf-8")
    stream = read_jsonl(path)
    assert next(stream) == {"id": 1}
    with pytest.raises(InputError, match=r"o\.jsonl:3"):
        next(stream)


# --- Parquet ---------------------------------------------------------------------------------------


def test_jsonl_to_parquet_round_trip_keeps_nested_history(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "o.jsonl"
    rows = [
        {
            "id": "a",
            "input": "你好",
            "history": [["问", "答"], ["再问", "再答"]],
            "score": 1,
            "label": {"name": "BMI", "reason": "…"},
        },
        {"id": "b", "input": "再见", "history": [], "score": 2.5},
        {"id": "c", "input": "三", "history": [["x", "y"]], "score": None, "label": {"name": "药品", "reason": "r"}},
    ]
    with JsonlAppender(src) as writer:
        writer.write(rows)
    dst = tmp_path / "sub" / "o.parquet"
    assert jsonl_to_parquet(src, dst, batch_size=2) == 3  # batches disagree on types: [] vs pairs
    schema = pq.read_schema(dst)
    history_type = schema.field("history").type
    assert pa.types.is_list(history_type) and pa.types.is_list(history_type.value_type)
    assert pa.types.is_string(history_type.value_type.value_type)
    assert schema.field("score").type == "double"
    back = [item.record for item in iter_records(dst)]
    assert back[0] == rows[0] | {"score": 1.0}
    assert back[1] == rows[1] | {"label": None}  # absent fields read back as null (documented)
    assert back[2] == rows[2]
    assert not (tmp_path / "sub" / "o.parquet.tmp").exists()


def test_mixed_types_are_stored_as_json_text_and_decoded_back(tmp_path, caplog):
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "o.jsonl"
    rows = [
        {"id": 1, "history": [["问", "答"]], "value": 1, "meta": {}},
        {"id": 2, "history": "用户: 你好\n助手: 您好", "value": "text", "meta": {}},
        {"id": 3, "history": [{"role": "user", "content": "hi"}], "value": [1, 2], "meta": {}},
    ]
    src.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    with caplog.at_level("WARNING"):
        assert jsonl_to_parquet(src, tmp_path / "o.parquet", batch_size=1) == 3
    assert "history" in caplog.text and "mixed types" in caplog.text
    metadata = json.loads(pq.read_schema(tmp_path / "o.parquet").metadata[b"joydataforge"])
    assert metadata["json_columns"] == ["history", "meta", "value"]
    assert [item.record for item in iter_records(tmp_path / "o.parquet")] == rows


def test_the_bookkeeping_column_reads_back_exactly_and_quietly(tmp_path, caplog):
    pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "o.jsonl"
    # two calls whose params have different keys: as an Arrow struct, each would gain the other's keys as nulls
    rows = [
        {"id": 1, "_meta": {"calls": [{"step": "generate", "params": {"temperature": 0.7}}]}},
        {"id": 2, "_meta": {"calls": [{"step": "label", "params": {"max_tokens": 8}}], "from": "in.jsonl:2"}},
    ]
    src.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with caplog.at_level("WARNING"):
        jsonl_to_parquet(src, tmp_path / "o.parquet")
    assert "mixed types" not in caplog.text
    assert [item.record for item in iter_records(tmp_path / "o.parquet")] == rows


def test_jsonl_to_parquet_of_the_seed_samples(tmp_path):
    for name in ("seed_cdss.jsonl", "seed_wizard.jsonl"):
        original = [item.record for item in iter_records(FIXTURES / name)]
        dst = tmp_path / (name + ".parquet")
        assert jsonl_to_parquet(FIXTURES / name, dst) == len(original)
        back = [item.record for item in iter_records(dst)]
        for before, after in zip(original, back):
            assert {key: value for key, value in after.items() if key in before} == before


def test_empty_jsonl_gives_an_empty_parquet(tmp_path):
    src = tmp_path / "e.jsonl"
    src.write_bytes(b"")
    assert jsonl_to_parquet(src, tmp_path / "e.parquet") == 0
    assert list(iter_records(tmp_path / "e.parquet")) == []
