"""Exports: the three history shapes in every format, system prompts, errors with their line, files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from joydataforge.errors import InputError
from joydataforge.io.exports import (
    FORMATS,
    ExportFields,
    export_file,
    to_alpaca,
    to_openai,
    to_sharegpt,
    to_trl_preference,
)
from joydataforge.io.readers import iter_records

FIXTURES = Path(__file__).parent / "fixtures" / "io"

# one dialogue in the three history shapes the seed data uses
PAIRS = [["皮肤长痘痘", "请问用药人年龄？"], ["23", "目前有用过什么药品吗？"]]
MESSAGES = [
    {"role": "user", "content": "皮肤长痘痘"},
    {"role": "assistant", "content": "请问用药人年龄？"},
    {"role": "user", "content": "23"},
    {"role": "assistant", "content": "目前有用过什么药品吗？"},
]
TEXT = "用户: 皮肤长痘痘\n助手: 请问用药人年龄？\n用户: 23\n助手: 目前有用过什么药品吗？"


def record(history, **extra):
    return {"id": "r1", "input": "莫匹罗星", "history": history, "target": "好的，了解了"} | extra


@pytest.mark.parametrize("history", [PAIRS, MESSAGES, TEXT], ids=["pairs", "messages", "text"])
def test_sharegpt_from_each_history_shape(history):
    assert to_sharegpt(record(history)) == {
        "conversations": [
            {"from": "human", "value": "皮肤长痘痘"},
            {"from": "gpt", "value": "请问用药人年龄？"},
            {"from": "human", "value": "23"},
            {"from": "gpt", "value": "目前有用过什么药品吗？"},
            {"from": "human", "value": "莫匹罗星"},
            {"from": "gpt", "value": "好的，了解了"},
        ]
    }


@pytest.mark.parametrize("history", [PAIRS, MESSAGES, TEXT], ids=["pairs", "messages", "text"])
def test_openai_from_each_history_shape(history):
    assert to_openai(record(history)) == {
        "messages": MESSAGES
        + [{"role": "user", "content": "莫匹罗星"}, {"role": "assistant", "content": "好的，了解了"}]
    }


@pytest.mark.parametrize("history", [PAIRS, MESSAGES, TEXT], ids=["pairs", "messages", "text"])
def test_alpaca_from_each_history_shape(history):
    assert to_alpaca(record(history)) == {
        "instruction": "莫匹罗星",
        "input": "",
        "output": "好的，了解了",
        "history": [["皮肤长痘痘", "请问用药人年龄？"], ["23", "目前有用过什么药品吗？"]],
    }


@pytest.mark.parametrize("history", [PAIRS, MESSAGES, TEXT], ids=["pairs", "messages", "text"])
def test_trl_preference_from_each_history_shape(history):
    result = to_trl_preference(record(history, chosen="好答案", rejected="坏答案"))
    assert result == {
        "prompt": MESSAGES + [{"role": "user", "content": "莫匹罗星"}],
        "chosen": [{"role": "assistant", "content": "好答案"}],
        "rejected": [{"role": "assistant", "content": "坏答案"}],
    }


def test_no_history_in_any_form():
    for history in (None, "", []):
        assert to_alpaca(record(history)) == {"instruction": "莫匹罗星", "input": "", "output": "好的，了解了"}
    assert to_openai({"input": "q", "target": "a"})["messages"] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


def test_consecutive_turns_of_one_speaker_are_joined():
    # the seed's text dialogues have several user lines in a row, and history may end on the user
    history = "用户: 痛得头晕呕吐\n用户: 早上六点吃了布洛芬\n助手: 每次都这么严重吗\n用户: 不是"
    conversation = to_sharegpt(record(history))["conversations"]
    assert [turn["from"] for turn in conversation] == ["human", "gpt", "human", "gpt"]
    assert conversation[0]["value"] == "痛得头晕呕吐\n早上六点吃了布洛芬"
    assert conversation[2]["value"] == "不是\n莫匹罗星"


def test_a_dialogue_opening_with_the_assistant():
    history = [{"role": "assistant", "content": "您好"}]
    assert to_sharegpt(record(history))["conversations"][:2] == [
        {"from": "human", "value": ""},
        {"from": "gpt", "value": "您好"},
    ]
    assert to_alpaca(record(history))["history"] == [["", "您好"]]
    assert to_openai(record(history))["messages"][0] == {"role": "assistant", "content": "您好"}


def test_system_prompt_from_field_history_or_default():
    with_field = record([], system="你是医生")
    assert to_sharegpt(with_field)["conversations"][0] == {"from": "system", "value": "你是医生"}
    assert to_alpaca(with_field)["system"] == "你是医生"
    in_history = record([{"role": "system", "content": "简洁回答"}, {"role": "user", "content": "hi"}])
    messages = to_openai(in_history)["messages"]
    assert messages[0] == {"role": "system", "content": "简洁回答"}
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    fields = ExportFields(system_prompt="默认")
    assert to_openai(record([]), fields)["messages"][0] == {"role": "system", "content": "默认"}
    assert to_openai(with_field, fields)["messages"][0]["content"] == "你是医生"


def test_structured_outputs_become_json_text_and_fields_are_renamed():
    fields = ExportFields(input="query", output="label", keep=("id",))
    result = to_openai({"id": 7, "query": "BMI怎么算", "label": {"label": "BMI", "reason": "问BMI"}}, fields)
    assert result["id"] == 7
    assert json.loads(result["messages"][-1]["content"]) == {"label": "BMI", "reason": "问BMI"}


def test_missing_output_is_an_error_naming_the_field_and_empty_output_is_skipped():
    with pytest.raises(InputError) as caught:
        to_sharegpt({"input": "q"})
    assert caught.value.field == "target"
    assert to_sharegpt({"input": "q", "target": ""}) is None
    assert to_sharegpt({"input": "q", "target": None}) is None
    with pytest.raises(InputError) as caught:
        to_trl_preference({"input": "q", "chosen": "a"})
    assert caught.value.field == "rejected"
    with pytest.raises(InputError) as caught:
        to_alpaca({"target": "a"})
    assert caught.value.field == "input"


def test_bad_history_is_an_error_on_the_history_field():
    with pytest.raises(InputError) as caught:
        to_openai(record([["a", "b", "c"]]))
    assert caught.value.field == "history"


# --- export_file -----------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


ROWS = [record(PAIRS), record(TEXT, id="r2", target=""), record(MESSAGES, id="r3")]


def test_export_file_jsonl_skips_empty_answers(tmp_path):
    src = write_jsonl(tmp_path / "out.jsonl", ROWS)
    report = export_file(src, tmp_path / "train.jsonl", "sharegpt", keep_fields=("id",))
    assert (report.read, report.written, report.skipped, report.failed) == (3, 2, 1, 0)
    lines = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines] == ["r1", "r3"]
    assert "莫匹罗星" in (tmp_path / "train.jsonl").read_text(encoding="utf-8")  # not ASCII-escaped


def test_export_file_json_array_and_parquet(tmp_path):
    src = write_jsonl(tmp_path / "out.jsonl", ROWS)
    export_file(src, tmp_path / "train.json", "alpaca")
    data = json.loads((tmp_path / "train.json").read_text(encoding="utf-8"))
    assert [row["instruction"] for row in data] == ["莫匹罗星", "莫匹罗星"]
    assert data[0]["history"] == PAIRS
    report = export_file(src, tmp_path / "train.parquet", "openai")
    assert report.written == 2
    back = [item.record for item in iter_records(tmp_path / "train.parquet")]
    assert back[1]["messages"] == to_openai(ROWS[2])["messages"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "train.json", "train.parquet"]


def test_export_file_raises_with_file_line_and_field_and_leaves_no_file(tmp_path):
    rows = [record(PAIRS), {"id": "x", "input": "no answer"}, record(PAIRS)]
    src = write_jsonl(tmp_path / "out.jsonl", rows)
    with pytest.raises(InputError) as caught:
        export_file(src, tmp_path / "train.jsonl", "openai")
    assert caught.value.location.line == 2 and caught.value.field == "target"
    assert "out.jsonl:2 field 'target'" in str(caught.value)
    assert not (tmp_path / "train.jsonl").exists() and not (tmp_path / "train.jsonl.tmp").exists()


def test_export_file_skip_mode_reports_bad_records_and_bad_lines(tmp_path):
    src = tmp_path / "out.jsonl"
    src.write_text(json.dumps(record(PAIRS)) + "\nnot json\n" + json.dumps({"input": "q"}) + "\n", encoding="utf-8")
    report = export_file(src, tmp_path / "train.jsonl", "trl-sft", on_error="skip")
    assert (report.written, report.failed) == (1, 2)
    assert [error.location.line for error in report.errors] == [2, 3]


def test_export_file_trl_preference(tmp_path):
    src = write_jsonl(tmp_path / "dpo.jsonl", [{"input": "q", "good": "a", "bad": "b"}])
    export_file(src, tmp_path / "dpo_train.jsonl", "trl", chosen_field="good", rejected_field="bad")
    line = json.loads((tmp_path / "dpo_train.jsonl").read_text(encoding="utf-8"))
    assert line == {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }


def test_export_file_refuses_unknown_format_and_destination(tmp_path):
    src = write_jsonl(tmp_path / "out.jsonl", ROWS)
    with pytest.raises(ValueError, match="unknown export format"):
        export_file(src, tmp_path / "t.jsonl", "llama")
    with pytest.raises(ValueError, match=r"\.jsonl, \.json or \.parquet"):
        export_file(src, tmp_path / "t.csv", "openai")
    assert {"sharegpt", "openai", "alpaca", "trl", "trl-sft", "openai-tools", "sharegpt-tools"} <= set(FORMATS)


def test_seed_records_export_in_every_format(tmp_path):
    # wizard: pair history, answer in rewrite_answer; cdss: text history, answer in label
    for name, output in (("seed_wizard.jsonl", "rewrite_answer"), ("seed_cdss.jsonl", "label")):
        for fmt in ("sharegpt", "openai", "alpaca"):
            dst = tmp_path / f"{name}.{fmt}.jsonl"
            report = export_file(FIXTURES / name, dst, fmt, output_field=output)
            assert report.written == 3 and report.failed == 0
    conversation = json.loads((tmp_path / "seed_cdss.jsonl.sharegpt.jsonl").read_text(encoding="utf-8").splitlines()[0])
    roles = [turn["from"] for turn in conversation["conversations"]]
    assert roles[0] == "human" and roles[-1] == "gpt"
    assert all(a != b for a, b in zip(roles, roles[1:]))  # strictly alternating
