"""Every cleaning rewrite and every drop reason of Magpie instructions, plus the language detector."""

import pytest
from pydantic import ValidationError

from joydataforge.methods.magpie.cleaning import (
    DROP_REASONS,
    CleaningRules,
    clean_instruction,
    cut_leaked_answer,
    cut_special_tokens,
    exact_key,
    is_repetitive,
    looks_like_request,
    strip_leaked_prefixes,
    strip_wrapping_quotes,
    units,
)
from joydataforge.methods.magpie.config import CleaningConfig
from joydataforge.methods.magpie.language import detect_language, script_counts

# --- rewrites ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("Question: What is DNA?", "What is DNA?"),
        ("question 2: What is DNA?", "What is DNA?"),
        ("**Question:** What is DNA?", "What is DNA?"),
        ("**Task**: Write a limerick.", "Write a limerick."),
        ("**Instruction** Write a limerick.", "Write a limerick."),
        ("Q: What is DNA?", "What is DNA?"),
        ("## Sorting in Python", "Sorting in Python"),
        ("1. Write a limerick.", "Write a limerick."),
        ("(2) Write a limerick.", "Write a limerick."),
        ("- Write a limerick.", "Write a limerick."),
        ("1. **Task:** Write a limerick.", "Write a limerick."),
        ("问题：孕期可以吃布洛芬吗？", "孕期可以吃布洛芬吗？"),
        ("1、介绍一下长城", "介绍一下长城"),
    ],
)
def test_leaked_prefixes_are_stripped(raw, expected):
    assert strip_leaked_prefixes(raw) == expected


@pytest.mark.parametrize(
    "text",
    [
        "3.14 is pi, isn't it?",
        "Questionable claims: how to spot them?",
        "**bold** statements?",
        "2024 was a leap year?",
    ],
)
def test_text_that_only_resembles_a_prefix_is_kept(text):
    assert strip_leaked_prefixes(text) == text


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("What is 2+2?\nAnswer: 4", "What is 2+2?"),
        ("What is 2+2?\n**Answer:** 4", "What is 2+2?"),
        ("What is 2+2?\n\nSolution: add them.", "What is 2+2?"),
        ("Is the sky blue?\nAssistant: yes", "Is the sky blue?"),
        ("Is the sky blue?\nUser: and why?", "Is the sky blue?"),
        ("Pick one. The answer is B.", "Pick one. "),
        ("孕期可以吃布洛芬吗？\n回答：不建议", "孕期可以吃布洛芬吗？"),
        ("孕期可以吃布洛芬吗？\n答案: 不建议", "孕期可以吃布洛芬吗？"),
    ],
)
def test_leaked_answers_are_cut(raw, expected):
    assert cut_leaked_answer(raw) == expected


def test_a_label_at_the_start_is_not_an_answer():
    assert cut_leaked_answer("Question: What is DNA?") == "Question: What is DNA?"
    assert cut_leaked_answer("User: hi?\nAssistant: hello") == "User: hi?"


@pytest.mark.parametrize(
    "raw,stops,expected",
    [
        ("What is 2+2?<|im_end|>\n<|im_start|>assistant\n4", (), "What is 2+2?"),
        ("Explain recursion<end_of_turn>\n<start_of_turn>model", (), "Explain recursion"),
        ("Explain recursion [/INST] Recursion is", (), "Explain recursion "),
        ("Explain recursion<｜Assistant｜>Sure", (), "Explain recursion"),
        ("Explain recursion\nASSISTANT: Sure", ("ASSISTANT:",), "Explain recursion\n"),
    ],
)
def test_template_tokens_and_stop_strings_are_cut(raw, stops, expected):
    assert cut_special_tokens(raw, stops) == expected


def test_wrapping_quotes_are_stripped_but_inner_quotes_kept():
    assert strip_wrapping_quotes('"What is love?"') == "What is love?"
    assert strip_wrapping_quotes("“什么是爱？”") == "什么是爱？"
    assert strip_wrapping_quotes('"A" or "B": which is better?') == '"A" or "B": which is better?'


def test_clean_instruction_records_its_edits_in_order():
    result = clean_instruction('**Question:** "What is DNA?"\nAnswer: a molecule')
    assert result.kept and result.text == "What is DNA?"
    assert result.edits == ["cut_answer", "strip_prefix", "strip_quotes"]
    assert result.language == "en"


# --- drops ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,finish,reason",
    [
        ("What is the best way to learn", "length", "truncated"),
        ("   \n ", "stop", "empty"),
        ("<|im_end|>", "stop", "empty"),
        ("?!? 123 ...", "stop", "no_text"),
        ("Hi", "stop", "too_short"),
        ("你好", "stop", "too_short"),
        ("why " + "and " * 700 + "?", "stop", "too_long"),
        ("How are you?\nHow are you?\nHow are you?", "stop", "repetitive"),
        ("Tell me " + "more " * 30, "stop", "repetitive"),
        ("Sure! Here is a poem about cats.", "stop", "assistant_voice"),
        ("Hello! How can I assist you today?", "stop", "assistant_voice"),
        ("As an AI language model, I cannot browse.", "stop", "assistant_voice"),
        ("好的，下面是一首诗。", "stop", "assistant_voice"),
        ("I love pizza with extra cheese.", "stop", "not_a_request"),
        ("今天天气很好。", "stop", "not_a_request"),
    ],
)
def test_each_drop_reason(raw, finish, reason):
    result = clean_instruction(raw, finish)
    assert result.drop == reason, result
    assert reason in DROP_REASONS


def test_truncation_is_judged_before_anything_else():
    assert clean_instruction("", "length").drop == "truncated"


def test_language_filter_drops_other_languages_and_records_the_language():
    rules = CleaningRules(languages=("zh",))
    assert clean_instruction("What is the capital of France?", rules=rules).drop == "language"
    kept = clean_instruction("法国的首都是哪里？", rules=rules)
    assert kept.kept and kept.language == "zh"
    assert clean_instruction("What is the capital of France?").language == "en"


def test_request_check_can_be_switched_off_and_limits_set():
    rules = CleaningRules(require_request=False, min_units=1)
    assert clean_instruction("I love pizza with extra cheese.", rules=rules).kept
    assert clean_instruction("Hi", rules=rules).kept
    long = clean_instruction("Explain the history of Rome in detail", rules=CleaningRules(max_units=3))
    assert long.drop == "too_long"


@pytest.mark.parametrize(
    "text",
    [
        "What is DNA?",
        "Write a haiku about rain",
        "Please summarise this text",
        "I need advice on my garden",
        "孕期可以吃布洛芬吗",
        "帮我写一首诗",
        "Can you explain recursion",
    ],
)
def test_requests_are_recognised(text):
    assert looks_like_request(text)


def test_kept_instruction_passes_every_filter():
    for text in ["Write a Python function that reverses a string.", "如何在家做蛋糕？"]:
        result = clean_instruction(text, "stop")
        assert result.kept and result.drop is None and result.edits == []


def test_rules_from_yaml_mapping():
    rules = CleaningRules.from_config(CleaningConfig.model_validate({"languages": "zh", "min_units": 5}))
    assert rules == CleaningRules(min_units=5, languages=("zh",))
    assert CleaningRules.from_config(CleaningConfig()) == CleaningRules()  # one set of defaults
    with pytest.raises(ValidationError, match="min_len"):
        CleaningConfig.model_validate({"min_len": 3})


def test_units_count_words_and_cjk_characters():
    assert units("Write a poem") == 3
    assert units("写一首诗") == 4
    assert units("用Python写") == 3


def test_repetition_detector_leaves_normal_text_alone():
    assert not is_repetitive("Explain how a bill becomes a law in the United States, step by step, with examples.")
    assert is_repetitive(
        "the the the the the the the the the the the the the the the the the the the the the the the the the the"
    )


def test_exact_key_ignores_case_width_spacing_and_punctuation():
    assert exact_key("What is  DNA?") == exact_key("what is dna") == "what is dna"
    assert exact_key("ＡＢＣ，你好！") == exact_key("abc 你好")
    assert exact_key("What is DNA?") != exact_key("What is RNA?")


# --- language ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,language",
    [
        ("What is the capital of France?", "en"),
        ("Explain recursion", "en"),
        ("孕期可以吃布洛芬吗？", "zh"),
        ("用Python写一个排序函数", "zh"),
        ("Python list 和 tuple 的区别", "zh"),
        ("これは何ですか", "ja"),
        ("東京の天気はどうですか", "ja"),
        ("안녕하세요 반갑습니다", "ko"),
        ("Comment faire un gâteau au chocolat sans four?", "latin"),
        ("Как дела?", "cyrillic"),
        ("12345 !!!", "unknown"),
        ("", "unknown"),
    ],
)
def test_detect_language(text, language):
    assert detect_language(text) == language


def test_script_counts_weigh_latin_by_word():
    assert script_counts("用Python写") == {"han": 2, "latin": 1}
