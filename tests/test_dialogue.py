"""Dialogue intent pipeline: one call per dialogue, index/content checks, history rebuild, binary pass,
train/test sampling with caps and seeds, JSONL per split and label, XLSX sheets per label."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from openpyxl import load_workbook

from joydataforge.cli.dialogue import dialogue_split_command
from joydataforge.config.pipeline import Pipeline
from joydataforge.errors import ConfigError
from joydataforge.methods.dialogue.split import split_records, write_split
from joydataforge.methods.dialogue.step import DialogueIntent, IntentBinaryCheck, dialogue_messages, history_before
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import read_jsonl, registry_of, write_jsonl
from tests.support.harness import run_pipeline as harness_run_pipeline

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REGISTRY = registry_of(["m"], json_retries=0)
TURN = re.compile(r"^\[(\d+)\] 用户: (.*)$", re.M)


def rule_label(text: str) -> str:
    if "布洛芬" in text or "药" in text or "蒙脱石" in text:
        return "药品"
    if "孕" in text:
        return "孕期孕周"
    return "其他"


def good_reply(messages, schema):
    turns = TURN.findall(messages[-1]["content"])
    return json.dumps(
        {
            "turns": [
                {"index": int(i), "label": rule_label(text), "reason": "规则", "content": text} for i, text in turns
            ]
        },
        ensure_ascii=False,
    )


def run_pipeline(tmp_path: Path, records, steps, reply, out: str = "out", concurrency: int = 4):
    write_jsonl(tmp_path / "in.jsonl", records)
    pipeline = Pipeline(
        input={"path": str(tmp_path / "in.jsonl")},
        steps=steps,
        output={"dir": str(tmp_path / out)},
        run={"cache": None, "progress": False, "concurrency": concurrency},
    )
    backend = ScriptedBackend(reply)
    summary = harness_run_pipeline(pipeline, {"m": backend}, registry=REGISTRY).summary
    return summary, backend, read_jsonl(tmp_path / out / "data.jsonl"), read_jsonl(tmp_path / out / "failures.jsonl")


SEED = [json.loads(line) for line in (EXAMPLES / "cdss_dialogues.jsonl").read_text("utf-8").splitlines()]
REPEATS = {
    "dialog_id": "rep",
    "dialogs": "助手: 您好\n用户: 我吃了布洛芬\n助手: 多久了\n用户: 好的\n助手: 还有吗\n"
    "用户: 孕12周能吃吗\n助手: 不建议\n用户: 好的\n用户: 谢谢",
}


def test_duplicate_of_a_failed_dialogue_is_not_asked_again(tmp_path):
    step = DialogueIntent("m", "zh/dialogue_intent", retries=0)
    summary, backend, out, failures = run_pipeline(
        tmp_path, [REPEATS, REPEATS], [step], lambda m, s: "{}", concurrency=1
    )
    assert len(backend.calls) == 1 and summary.failed == 1 and summary.filtered == 1
    assert step.counters["duplicate_dialogues"] == 1


def test_one_call_per_dialogue_one_record_per_user_turn(tmp_path):
    step = DialogueIntent("m", "zh/dialogue_intent")
    summary, backend, out, failures = run_pipeline(tmp_path, SEED, [step], good_reply)
    assert failures == []
    assert len(backend.calls) == 3  # 9 seed records hold 3 distinct dialogues: each labelled once
    assert step.counters["duplicate_dialogues"] == 6 and summary.filtered == 6
    n_turns = {r["diaglog_id"]: r["dialogs"].count("用户:") for r in SEED}
    assert len(out) == sum(n_turns.values())
    first = [r for r in out if r["dialog_id"] == "225462798279340"]
    assert [r["turn_index"] for r in first] == list(range(1, n_turns[225462798279340] + 1))
    assert [r["id"] for r in first[:2]] == ["225462798279340:1", "225462798279340:2"]
    assert first[0]["input"] == "哺乳期痛经吃了布洛芬止痛药是否还能哺乳" and first[0]["label"] == "药品"
    assert first[0]["history"] == "" and first[0]["reason"] == "规则"
    user_lines = {
        line.split(": ", 1)[1].strip() for r in SEED for line in r["dialogs"].splitlines() if line.startswith("用户:")
    }
    assert {r["input"] for r in out} == user_lines  # only user turns, all of them
    assert set(first[0]) >= {"id", "dialog_id", "turn_index", "input", "history", "label", "reason", "_meta"}
    schema = backend.calls[0]["schema"]["properties"]["turns"]
    assert schema["minItems"] == schema["maxItems"] == len(schema["prefixItems"]) == n_turns[225462798279340]
    assert schema["items"] is False
    pinned = schema["prefixItems"][0]["properties"]
    assert pinned["label"]["enum"] == ["BMI", "孕期孕周", "药品", "其他"]
    assert pinned["index"] == {"const": 1} and pinned["content"] == {"const": first[0]["input"]}
    assert schema["prefixItems"][4]["properties"]["index"] == {"const": 5}
    # An emoji cannot be a const for llama.cpp's grammar (surrogate escapes): an anchored pattern instead.
    assert first[4]["input"] == "不是，就这次😭"
    assert schema["prefixItems"][4]["properties"]["content"] == {"type": "string", "pattern": "^不是，就这次😭$"}


def test_pinned_text_forms_and_validation():
    import jsonschema

    from joydataforge.methods.dialogue.step import _pinned_text

    assert _pinned_text("好的") == {"const": "好的"}
    assert _pinned_text("好 的😭") == {"type": "string"}  # a metacharacter (escaped space): left free
    pinned = _pinned_text("就这次😭")
    jsonschema.validate("就这次😭", pinned)
    for wrong in ("就这次", "就这次😭!", "x就这次😭"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, pinned)


def test_rebuilt_history_matches_the_seed_records(tmp_path):
    _, _, out, _ = run_pipeline(
        tmp_path, SEED, [DialogueIntent("m", "zh/dialogue_intent", history_rounds=4)], good_reply
    )
    for seed in SEED:
        candidates = [
            r["history"]
            for r in out
            if r["dialog_id"] == str(seed["diaglog_id"]) and r["input"] == seed["input"].strip()
        ]
        assert seed["history"].strip() in candidates, seed["input"]


def test_history_of_a_repeated_line_is_that_of_its_own_occurrence(tmp_path):
    _, _, out, _ = run_pipeline(
        tmp_path, [REPEATS], [DialogueIntent("m", "zh/dialogue_intent", history_rounds=2)], good_reply
    )
    assert [r["input"] for r in out] == ["我吃了布洛芬", "好的", "孕12周能吃吗", "好的", "谢谢"]
    # First "好的" (turn 2): everything before it (the greeting too: fewer than 2 rounds before it).
    assert out[1]["history"] == "助手: 您好\n用户: 我吃了布洛芬\n助手: 多久了"
    # Second "好的" (turn 4): the last 2 rounds only, and not the history of the first "好的".
    assert out[3]["history"] == "用户: 好的\n助手: 还有吗\n用户: 孕12周能吃吗\n助手: 不建议"
    # "谢谢" follows an unanswered user line, which stays in; rounds are answered user lines.
    assert out[4]["history"] == "用户: 好的\n助手: 还有吗\n用户: 孕12周能吃吗\n助手: 不建议\n用户: 好的"
    assert [r["label"] for r in out] == ["药品", "其他", "孕期孕周", "其他", "其他"]


def test_history_rounds_zero_all_and_messages_format():
    messages = dialogue_messages(REPEATS["dialogs"])
    assert history_before(messages, 8, 0) == []
    assert len(history_before(messages, 8, None)) == 8
    assert [m["content"] for m in history_before(messages, 8, 1)] == ["孕12周能吃吗", "不建议", "好的"]


def test_messages_history_format(tmp_path):
    step = DialogueIntent(
        "m", "zh/dialogue_intent", history_rounds=1, history_format="messages", keep_fields=["source"]
    )
    _, _, out, _ = run_pipeline(tmp_path, [{**REPEATS, "source": "web"}], [step], good_reply)
    assert out[2]["history"] == [{"role": "user", "content": "好的"}, {"role": "assistant", "content": "还有吗"}]
    assert out[2]["source"] == "web" and "dialogs" not in out[2]


@pytest.mark.parametrize("pin_turns", [True, False])
@pytest.mark.parametrize("bad", ["missing", "repeated", "content"])
def test_mismatching_reply_is_retried_with_a_new_sample(tmp_path, bad, pin_turns):
    replies = []

    def reply(messages, schema):
        good = json.loads(good_reply(messages, schema))
        if not replies:
            if bad == "missing":
                good["turns"][1]["index"] = 5  # index 2 missing, 5 repeated
            elif bad == "repeated":
                good["turns"][0]["index"] = 2
            else:
                good["turns"][2]["content"] = "孕20周能吃吗"
        replies.append(good)
        return json.dumps(good, ensure_ascii=False)

    step = DialogueIntent("m", "zh/dialogue_intent", retries=1, pin_turns=pin_turns)
    summary, backend, out, failures = run_pipeline(tmp_path, [REPEATS], [step], reply)
    assert failures == [] and len(out) == 5 and len(backend.calls) == 2
    kind = "content_mismatch" if bad == "content" else "index_mismatch"
    if pin_turns:  # the pinned schema itself rejects the reply
        assert step.counters["invalid_replies"] == 1 and step.counters[f"rejected:{kind}"] == 0
    else:
        assert step.counters[f"rejected:{kind}"] == 1 and step.counters["invalid_replies"] == 0
    assert step.counters["retries"] == 1
    assert backend.calls[0]["seed"] != backend.calls[1]["seed"]  # a new sample, not the cached reply


def test_reply_that_never_lines_up_fails_the_dialogue_with_raw_text(tmp_path):
    def shifted(messages, schema):
        good = json.loads(good_reply(messages, schema))
        for item, nxt in zip(good["turns"], good["turns"][1:] + good["turns"][:1]):
            item["content"] = nxt["content"]  # labels for the wrong turns
        return json.dumps(good, ensure_ascii=False)

    step = DialogueIntent("m", "zh/dialogue_intent", retries=2, pin_turns=False)
    summary, backend, out, failures = run_pipeline(tmp_path, [REPEATS], [step], shifted)
    assert out == [] and summary.failed == 1 and len(backend.calls) == 3
    assert "content_mismatch" in failures[0]["error"] and failures[0]["raw"] == shifted(
        backend.calls[0]["messages"], None
    )
    step = DialogueIntent("m", "zh/dialogue_intent", retries=1)  # pinned: the schema says which turn
    summary, backend, out, failures = run_pipeline(tmp_path, [REPEATS], [step], shifted, out="pinned")
    assert out == [] and "turns/0/content" in failures[0]["error"] and len(backend.calls) == 2
    # Without content checking (nor pins), indexes alone decide.
    step = DialogueIntent("m", "zh/dialogue_intent", check_content=False, pin_turns=False)
    _, _, out, failures = run_pipeline(tmp_path, [REPEATS], [step], shifted, out="loose")
    assert len(out) == 5 and failures == []


def test_content_may_echo_a_role_prefix_and_spacing():
    step = DialogueIntent("m")
    messages = dialogue_messages(REPEATS["dialogs"])
    positions = [i for i, m in enumerate(messages) if m["role"] == "user"]
    items = [{"index": t, "content": f"用户： {messages[p]['content']} "} for t, p in enumerate(positions, 1)]
    assert step._mismatch(items, messages, positions) == ""


def test_invalid_json_counts_and_bad_input(tmp_path):
    step = DialogueIntent("m", "zh/dialogue_intent", retries=1)
    summary, backend, out, failures = run_pipeline(
        tmp_path,
        [REPEATS, {"dialog_id": "x", "dialogs": "助手: 您好"}, {"dialog_id": "y"}],
        [step],
        lambda m, s: "不是JSON",
    )
    assert (
        summary.failed == 1 and summary.bad_input == 2 and len(backend.calls) == 2
    )  # the two bad records never reach the model
    assert step.counters["invalid_replies"] == 2
    errors = [f["error"] for f in failures]
    assert "no usable labelling after 2 attempt(s)" in errors[0] and "in.jsonl:1" not in errors[0]
    assert "in.jsonl:2 field 'dialogs'" in errors[1] and "no user turn" in errors[1]
    assert "in.jsonl:3 field 'dialogs'" in errors[2]


def test_configurable_labels():
    step = DialogueIntent("m", labels={"ask": "a question", "say": "a statement"}, pin_turns=False)
    free = step.schema(["a", "b", "c"])["properties"]["turns"]
    assert free["items"]["properties"]["label"]["enum"] == ["ask", "say"] and free["maxItems"] == 3
    assert free["items"]["properties"]["index"]["maximum"] == 3
    with pytest.raises(ConfigError, match="at least two"):
        DialogueIntent("m", labels=["only"])
    with pytest.raises(ConfigError, match="history_format"):
        DialogueIntent("m", history_format="xml")


@pytest.mark.parametrize("on_reject", ["tag", "drop", "relabel"])
def test_binary_pass_checks_only_chosen_labels(tmp_path, on_reject):
    turns = [
        {"id": f"t{i}", "input": text, "history": "用户: 你好", "label": label}
        for i, (text, label) in enumerate([("布洛芬怎么吃", "药品"), ("好的", "药品"), ("谢谢", "其他")])
    ]

    def judge(messages, schema):
        text = messages[-1]["content"]
        return json.dumps({"match": "布洛芬怎么吃" in text, "reason": "看内容"}, ensure_ascii=False)

    step = IntentBinaryCheck("m", "zh/dialogue_intent_binary", check_labels=["药品"], on_reject=on_reject)
    summary, backend, out, _ = run_pipeline(tmp_path, turns, [step], judge)
    assert len(backend.calls) == 2 and step.counters["skipped"] == 1  # "其他" is not checked
    assert (
        "药品" in backend.calls[0]["messages"][-1]["content"] and "你好" in backend.calls[0]["messages"][-1]["content"]
    )
    by_id = {r["id"]: r for r in out}
    assert by_id["t0"]["binary_match"] is True and "binary_match" not in by_id["t2"]
    if on_reject == "drop":
        assert "t1" not in by_id
    elif on_reject == "tag":
        assert by_id["t1"]["binary_match"] is False and by_id["t1"]["label"] == "药品"
    else:
        assert by_id["t1"]["label"] == "其他" and by_id["t1"]["coarse_label"] == "药品"


# ---------------------------------------------------------------- sampling into train/test


def labelled(n_dialogs: int = 6, per_dialog: dict | None = None):
    per_dialog = per_dialog or {"药品": 3, "其他": 5, "BMI": 1}
    records = []
    for d in range(n_dialogs):
        t = 0
        for label, count in per_dialog.items():
            for _ in range(count):
                t += 1
                records.append(
                    {
                        "id": f"d{d}:{t}",
                        "dialog_id": f"d{d}",
                        "turn_index": t,
                        "input": f"q{d}-{t}",
                        "history": "",
                        "label": label,
                        "reason": "r",
                    }
                )
    return records


def test_caps_and_test_size_per_label():
    records = labelled()
    result = split_records(records, test_size=2, per_label_cap=10, per_record_cap=2, seed=0)
    assert result.counts["药品"] == {"available": 18, "after_record_cap": 12, "train": 8, "test": 2}
    assert result.counts["其他"] == {"available": 30, "after_record_cap": 12, "train": 8, "test": 2}
    assert result.counts["BMI"] == {"available": 6, "after_record_cap": 6, "train": 4, "test": 2}
    both = result.train + result.test
    for key in {(r["dialog_id"], r["label"]) for r in both}:
        assert sum(1 for r in both if (r["dialog_id"], r["label"]) == key) <= 2
    assert not {r["id"] for r in result.train} & {r["id"] for r in result.test}
    assert result.dropped["per_record_cap"] == (18 - 12) + (30 - 12) and result.dropped["per_label_cap"] == 4
    fraction = split_records(records, test_size=0.25, seed=0)
    assert fraction.counts["其他"]["test"] == 8 and fraction.counts["BMI"]["test"] == 2  # round(0.25 * 6)


def test_sampling_is_seeded_and_independent_of_input_order():
    records = labelled()
    a = split_records(records, test_size=2, per_record_cap=2, seed=7)
    b = split_records(list(reversed(records)), test_size=2, per_record_cap=2, seed=7)
    c = split_records(records, test_size=2, per_record_cap=2, seed=8)
    ids = lambda result: (sorted(r["id"] for r in result.train), sorted(r["id"] for r in result.test))  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_by_dialogue_keeps_each_dialogue_on_one_side():
    records = labelled(10, {"药品": 2, "BMI": 1})
    by_turn = split_records(records, test_size=3, seed=0)
    assert by_turn.shared_dialogues > 0  # turn sampling splits dialogues (the seed's behaviour), and says so
    result = split_records(records, test_size=3, seed=0, by_dialogue=True)
    train_dialogues = {r["dialog_id"] for r in result.train}
    assert not train_dialogues & {r["dialog_id"] for r in result.test} and result.shared_dialogues == 0
    # quotas filled without overshoot: 药品 comes two per dialogue, so 3 is out of reach (2), BMI gets 1 per dialogue
    assert result.counts["药品"] == {"available": 20, "after_record_cap": 20, "train": 18, "test": 2}
    assert result.counts["BMI"]["test"] <= 3 and result.counts["BMI"]["test"] >= 1
    assert len(result.train) + len(result.test) == 30
    again = split_records(list(reversed(records)), test_size=3, seed=0, by_dialogue=True)
    assert sorted(r["id"] for r in again.test) == sorted(r["id"] for r in result.test)


def test_duplicates_unlabelled_and_unwanted_labels_are_left_out():
    records = labelled(2) + labelled(1) + [{"id": "x", "input": "no label"}]
    result = split_records(records, test_size=0, labels=["药品", "BMI"])
    assert result.dropped == {"duplicate_id": 9, "no_label": 1, "other_label": 10}
    assert {r["label"] for r in result.train} == {"药品", "BMI"} and result.test == []


def test_write_split_files_and_xlsx_sheets(tmp_path):
    records = labelled() + [
        {
            "id": "z:1",
            "dialog_id": "z",
            "turn_index": 1,
            "input": "a/b",
            "history": "",
            "label": "a/b?",
            "reason": "odd label",
        }
    ]
    result = split_records(records, test_size=1, per_record_cap=2, seed=0)
    summary = write_split(result, tmp_path)
    assert summary["test"] == 4 and summary["train"] == len(result.train)
    assert len(read_jsonl(tmp_path / "test.jsonl")) == 4
    assert {p.name for p in (tmp_path / "test").iterdir()} == {"药品.jsonl", "其他.jsonl", "BMI.jsonl", "a_b.jsonl"}
    assert all(r["label"] == "药品" for r in read_jsonl(tmp_path / "train" / "药品.jsonl"))
    assert "_label" not in read_jsonl(tmp_path / "train.jsonl")[0]
    book = load_workbook(tmp_path / "test.xlsx")
    assert sorted(book.sheetnames) == sorted(["BMI", "a_b_", "其他", "药品"])
    sheet = book["药品"]
    rows = list(sheet.values)
    assert rows[0] == ("id", "dialog_id", "turn_index", "history", "input", "label", "reason")
    assert len(rows) == 2 and rows[1][5] == "药品"
    assert json.loads((tmp_path / "split.json").read_text("utf-8"))["labels"]["BMI"]["test"] == 1


def test_cli_dialogue_split(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", labelled())
    result = CliRunner().invoke(
        dialogue_split_command,
        [
            str(tmp_path / "data.jsonl"),
            "-o",
            str(tmp_path / "split"),
            "--test-size",
            "3",
            "--per-label-cap",
            "9",
            "--per-record-cap",
            "2",
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "药品" in result.output and "written to" in result.output
    assert len(read_jsonl(tmp_path / "split" / "test.jsonl")) == 9
    assert len(read_jsonl(tmp_path / "split" / "train.jsonl")) == 6 + 6 + 3
    bad = CliRunner().invoke(
        dialogue_split_command, [str(tmp_path / "data.jsonl"), "-o", str(tmp_path / "x"), "--test-size", "2.5"]
    )
    assert bad.exit_code != 0 and "fraction" in bad.output
    assert "dialogues have turns in both train and test" in result.output
    grouped = CliRunner().invoke(
        dialogue_split_command,
        [str(tmp_path / "data.jsonl"), "-o", str(tmp_path / "grouped"), "--test-size", "0.3", "--by-dialogue"],
    )
    assert grouped.exit_code == 0, grouped.output
    assert "both train and test" not in grouped.output
    split = json.loads((tmp_path / "grouped" / "split.json").read_text("utf-8"))
    assert split["settings"]["by_dialogue"] is True and split["shared_dialogues"] == 0
