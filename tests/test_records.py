import pytest

from joydataforge.records import IdAssigner, content_hash, history_as_text, normalize_history, record_id


def test_record_id_prefers_own_id_and_hashes_otherwise():
    assert record_id({"id": "abc", "input": "x"}) == "abc"
    assert record_id({"id": 7}) == "7"
    a = record_id({"input": "x", "history": []})
    assert a == record_id({"history": [], "input": "x"})  # key order does not matter
    assert a != record_id({"input": "y", "history": []})
    assert record_id({"id": "", "input": "x"}) == record_id({"input": "x", "id": ""})


def test_id_assigner_makes_placeholder_ids_unique_and_stable():
    assign = IdAssigner()
    ids = [assign({"id": "xxxxxx", "input": str(i)}) for i in range(3)]
    assert ids == ["xxxxxx", "xxxxxx#2", "xxxxxx#3"]
    again = IdAssigner()
    assert [again({"id": "xxxxxx"}) for _ in range(3)] == ids


def test_history_pairs():
    messages = normalize_history([["hi", "hello"], ["how?", ""]])
    assert messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how?"},
    ]


def test_history_messages_keep_roles():
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert normalize_history(msgs) == msgs


def test_history_seed_string_with_repeated_speakers():
    text = "用户: 哺乳期痛经吃了布洛芬\n助手: 请问您产后多长时间\n用户: 11个月\n用户: 痛得头晕呕吐\n助手：好的"
    messages = normalize_history(text)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "user", "assistant"]
    assert messages[3]["content"] == "痛得头晕呕吐"
    assert messages[4]["content"] == "好的"  # full-width colon


@pytest.mark.parametrize("empty", [None, "", []])
def test_empty_history(empty):
    assert normalize_history(empty) == []


@pytest.mark.parametrize("bad", [[["a", "b", "c"]], [3], {"role": "user"}, [{"role": "user"}]])
def test_bad_history_is_a_type_error(bad):
    with pytest.raises(TypeError):
        normalize_history(bad)


def test_history_as_text():
    assert history_as_text(normalize_history([["q", "a"]]), "用户", "助手") == "用户: q\n助手: a"


def test_content_hash_is_stable():
    assert content_hash({"a": 1}) == content_hash({"a": 1})
    assert len(content_hash({"a": 1}, 8)) == 16
