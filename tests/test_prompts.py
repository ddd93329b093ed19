import pytest

from joydataforge.errors import ConfigError, InputError
from joydataforge.prompts.renderer import PromptLibrary, PromptTemplate, available_prompts


def test_builtin_prompts_exist_and_parse():
    names = available_prompts()
    for required in ("en/answer", "zh/answer", "en/label", "zh/label", "zh/intent_cdss"):
        assert required in names
    library = PromptLibrary()
    for name in names:
        library.get(name)  # every shipped prompt parses, and its schema is a valid JSON schema
    for name in ("en/answer", "zh/answer", "en/label", "zh/label", "zh/intent_cdss"):
        assert "input" in library.get(name).required_fields


def test_cdss_schema_restricts_labels():
    schema = PromptLibrary().get("zh/intent_cdss").schema
    assert schema["properties"]["label"]["enum"] == ["BMI", "孕期孕周", "药品", "其他"]


def test_record_content_is_data_not_code():
    template = PromptTemplate(name="t", source="t", user="Q: {{ input }}")
    messages = template.render({"input": "{{ 7*7 }} {% for x in range(3) %}x{% endfor %}"})
    assert messages[-1]["content"] == "Q: {{ 7*7 }} {% for x in range(3) %}x{% endfor %}"


def test_sandbox_blocks_attribute_escape():
    template = PromptTemplate(name="t", source="t", user="{{ input.__class__.__mro__ }}")
    with pytest.raises(Exception) as info:
        template.render({"input": "x"})
    assert "unsafe" in str(info.value).lower() or "__class__" in str(info.value)


def test_missing_field_names_the_field():
    template = PromptTemplate(name="t", source="t", user="{{ input }} {{ rewrite_query }}")
    assert template.required_fields == {"input", "rewrite_query"}
    with pytest.raises(InputError) as info:
        template.render({"input": "x"})
    assert info.value.field == "rewrite_query"


def test_history_is_optional_and_included_as_messages():
    library = PromptLibrary()
    answer = library.get("en/answer")
    no_history = answer.render({"input": "hi"})
    assert [m["role"] for m in no_history] == ["system", "user"]
    with_history = answer.render({"input": "and now?", "history": [["q", "a"]]})
    assert [m["role"] for m in with_history] == ["system", "user", "assistant", "user"]


def test_label_prompt_shows_options_and_history_text():
    label = PromptLibrary().get("zh/label")
    text = label.render({"input": "吃什么药", "history": "用户: 头疼\n助手: 多久了"}, {"labels": ["药品", "其他"]})[-1][
        "content"
    ]
    assert "药品、其他" in text and "user: 头疼" in text and "吃什么药" in text


def test_user_prompt_file_overrides(tmp_path):
    (tmp_path / "mine.yaml").write_text("user: 'Rate: {{ input }}'\nschema: {type: object}\n", "utf-8")
    library = PromptLibrary([tmp_path])
    assert library.get("mine.yaml").render({"input": "x"})[-1]["content"] == "Rate: x"


def test_bad_prompt_files(tmp_path):
    (tmp_path / "bad.yaml").write_text("user: '{{ input '\n", "utf-8")
    (tmp_path / "noschema.yaml").write_text("system: hi\n", "utf-8")
    (tmp_path / "badschema.yaml").write_text("user: x\nschema: {type: nonsense}\n", "utf-8")
    library = PromptLibrary([tmp_path])
    for name in ("bad.yaml", "noschema.yaml", "badschema.yaml", "missing.yaml", "zh/nope"):
        with pytest.raises(ConfigError):
            library.get(name)
