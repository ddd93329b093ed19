"""Pre-query derivation against the real chat templates of the families Magpie users run.

The fixtures under fixtures/chat_templates/ are the Jinja texts those models ship (tool-calling branches
included, since derivation must survive them). Derivation must agree with the hand-kept table for a
first turn, with a system prompt, and for a later turn, which checks both sides against each other.
"""

import json
from pathlib import Path

import pytest

from joydataforge.errors import ConfigError
from joydataforge.methods.magpie.templates import (
    SENTINEL,
    TABLE,
    JinjaChatFormat,
    TableChatFormat,
    TemplateRenderError,
    guess_family,
    resolve_format,
    table_format,
)
from joydataforge.models.chat_template import ChatTemplateSource

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"

# fixture file -> (table entry, bos_token, eos_token) as the models' tokenizer configs give them.
FAMILIES = {
    "smollm2": ("smollm2", "<|im_start|>", "<|im_end|>"),
    "qwen2": ("qwen2", "<|endoftext|>", "<|im_end|>"),
    "qwen2.5": ("qwen2.5", "", "<|im_end|>"),
    "qwen3": ("qwen3", "", "<|im_end|>"),
    "llama3": ("llama3", "<|begin_of_text|>", "<|eot_id|>"),
    "llama3.1": ("llama3.1", "<|begin_of_text|>", "<|eot_id|>"),
    "llama3.2": ("llama3.2", "<|begin_of_text|>", "<|eot_id|>"),
    "gemma2": ("gemma2", "<bos>", "<eos>"),
    "gemma3": ("gemma3", "<bos>", "<eos>"),
    "phi3.5": ("phi3.5", "<s>", "<|endoftext|>"),
    "phi4": ("phi4", "<|endoftext|>", "<|im_end|>"),
    "mistral": ("mistral", "<s>", "</s>"),
    "deepseek-v3": ("deepseek", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "glm4": ("glm4", "", "<|endoftext|>"),
    "yi": ("yi", "<|startoftext|>", "<|im_end|>"),
}

EXPECTED_FIRST_TURN = {
    "smollm2": "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n",
    "qwen2.5": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n",
    "qwen3": "<|im_start|>user\n",
    "llama3": "<|start_header_id|>user<|end_header_id|>\n\n",
    "llama3.1": "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n",
    "gemma2": "<start_of_turn>user\n",
    "phi3.5": "<|user|>\n",
    "phi4": "<|im_start|>user<|im_sep|>",
    "mistral": "[INST] ",
    "deepseek-v3": "<｜User｜>",
    "glm4": "[gMASK]<sop><|user|>\n",
    "yi": "<|im_start|>user\n",
}

SYSTEM = [{"role": "system", "content": "You are a maths tutor."}]
TURN = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]


def derived(name: str) -> JinjaChatFormat:
    _, bos, eos = FAMILIES[name]
    return JinjaChatFormat(
        ChatTemplateSource((FIXTURES / f"{name}.jinja").read_text("utf-8"), bos, eos, origin=f"fixture {name}")
    )


@pytest.mark.parametrize("name", sorted(EXPECTED_FIRST_TURN))
def test_first_turn_prefix_is_the_template_up_to_the_user_message(name):
    assert derived(name).pre_query() == EXPECTED_FIRST_TURN[name]


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize(
    "messages", [[], SYSTEM, TURN, SYSTEM + TURN], ids=["plain", "system", "turn2", "system+turn2"]
)
def test_derivation_agrees_with_the_table(name, messages):
    assert derived(name).prefix(messages) == TABLE[FAMILIES[name][0]].prefix(messages)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_stops_start_with_the_end_of_user_turn_marker_and_agree_with_the_table(name):
    fmt = derived(name)
    table = TABLE[FAMILIES[name][0]]
    assert fmt.stops[0] == table.stops[0]
    assert set(fmt.stops) <= set(table.stops) | {"<|im_sep|>"}  # phi-4's header separator also shows up
    assert FAMILIES[name][2] in fmt.stops  # the EOS always stops a raw completion


def test_bos_is_left_to_the_backend_but_bos_like_text_of_the_template_is_kept():
    # Llama 3 writes {{ bos_token }}: left out. SmolLM2's BOS token text is <|im_start|>, which its
    # template writes literally as the start of every turn: kept.
    assert not derived("llama3").pre_query().startswith("<|begin_of_text|>")
    assert derived("smollm2").pre_query().startswith("<|im_start|>system")


def test_system_prompt_goes_where_each_template_puts_it():
    assert derived("qwen2.5").pre_query("S") == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"
    assert (
        derived("llama3.1")
        .pre_query("S")
        .endswith("Today Date: 26 Jul 2024\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
    )
    # Gemma 2 refuses a system role: it opens the user message instead, as Gemma 3 does natively.
    assert derived("gemma2").pre_query("S") == "<start_of_turn>user\nS\n\n" == derived("gemma3").pre_query("S")
    # Mistral puts the system prompt into the last user message.
    assert (
        derived("mistral").prefix(SYSTEM + TURN) == "[INST] What is 2+2?[/INST] 4.</s>[INST] You are a maths tutor.\n\n"
    )


def test_refused_conversation_is_a_clear_error():
    with pytest.raises(TemplateRenderError, match="alternate"):
        derived("gemma2").prefix([{"role": "assistant", "content": "hi"}])


def test_template_showing_the_message_twice_is_refused():
    source = ChatTemplateSource("{% for m in messages %}{{ m.content }}|{{ m.content }}{% endfor %}", origin="twice")
    with pytest.raises(TemplateRenderError, match="2 times"):
        JinjaChatFormat(source).pre_query()


def test_template_with_nothing_after_the_user_message_has_no_stops():
    source = ChatTemplateSource("{% for m in messages %}U: {{ m.content }}{% endfor %}", origin="bare")
    with pytest.raises(TemplateRenderError, match="end of a user turn"):
        _ = JinjaChatFormat(source).stops


def test_plain_text_markers_become_stops():
    source = ChatTemplateSource("{% for m in messages %}USER: {{ m.content }}\nASSISTANT:{% endfor %}", origin="vicuna")
    fmt = JinjaChatFormat(source)
    assert fmt.pre_query() == "USER: "
    assert fmt.stops == ("ASSISTANT:",)


def test_bad_jinja_names_its_origin():
    with pytest.raises(TemplateRenderError, match="broken.*does not compile"):
        JinjaChatFormat(ChatTemplateSource("{% for m in messages %}", origin="broken"))


def test_sandbox_blocks_attribute_tricks():
    evil = "{{ messages.__class__.__mro__ }}{% for m in messages %}{{ m.content }}<|end|>{% endfor %}"
    with pytest.raises(TemplateRenderError):
        JinjaChatFormat(ChatTemplateSource(evil, origin="evil")).pre_query()


def test_sentinel_is_never_left_in_a_prefix():
    for name in FAMILIES:
        assert SENTINEL not in derived(name).prefix(SYSTEM + TURN)


@pytest.mark.parametrize(
    "hint,family",
    [
        ("meta-llama/Llama-3.3-70B-Instruct", "llama3.3"),
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama3.1"),
        ("Llama-3.2-3B-Instruct-Q4_K_M.gguf", "llama3.2"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama3"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5"),
        ("Qwen/Qwen2-7B-Instruct", "qwen2"),
        ("Qwen/Qwen3-8B", "qwen3"),
        ("google/gemma-2-9b-it", "gemma2"),
        ("google/gemma-3-4b-it", "gemma3"),
        ("microsoft/phi-4", "phi4"),
        ("microsoft/Phi-3.5-mini-instruct", "phi3.5"),
        ("microsoft/Phi-3-mini-4k-instruct", "phi3"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
        ("deepseek-ai/DeepSeek-V3", "deepseek"),
        ("THUDM/glm-4-9b-chat", "glm4"),
        ("01-ai/Yi-1.5-9B-Chat", "yi"),
        ("SmolLM2-135M-Instruct", "smollm2"),
    ],
)
def test_family_guessed_from_model_names(hint, family):
    assert guess_family(hint) == family


def test_unknown_names_guess_nothing():
    assert guess_family("gpt-4o-mini", None, "") is None
    assert guess_family("my-yieldmodel") is None


def test_table_names_are_forgiving_and_unknown_ones_list_the_choices():
    assert table_format("Llama-3.1") is TABLE["llama3.1"]
    assert table_format("qwen2_5") is TABLE["qwen2.5"]
    with pytest.raises(ConfigError, match="unknown chat template 'vicuna'.*chatml"):
        table_format("vicuna")


def test_resolve_auto_prefers_the_models_own_template():
    source = ChatTemplateSource((FIXTURES / "qwen3.jinja").read_text("utf-8"), origin="gguf metadata")
    fmt = resolve_format("auto", source, hints=["Qwen2.5-7B"])  # the template wins over the name
    assert isinstance(fmt, JinjaChatFormat) and fmt.pre_query() == "<|im_start|>user\n"


def test_resolve_auto_falls_back_to_the_table_and_says_why():
    fmt = resolve_format("auto", None, hints=[None, "Qwen/Qwen2.5-7B-Instruct"])
    assert isinstance(fmt, TableChatFormat) and fmt.name == "qwen2.5"
    assert "guessed from the model name" in fmt.origin and "does not expose" in fmt.origin
    broken = ChatTemplateSource("{% for m in messages %}{{ m.content }}{% endfor %}", origin="gguf")
    fmt = resolve_format("auto", broken, hints=["llama-3-8b"])
    assert fmt.name == "llama3" and "could not be used" in fmt.origin


def test_resolve_auto_without_template_or_known_name_asks_for_one():
    with pytest.raises(ConfigError, match="cannot tell the chat template.*gpt-4o-mini.*template:"):
        resolve_format("auto", None, hints=["gpt-4o-mini"])


def test_resolve_path_loads_a_tokenizer_config(tmp_path):
    config = {
        "chat_template": (FIXTURES / "llama3.jinja").read_text("utf-8"),
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), "utf-8")
    fmt = resolve_format("tokenizer_config.json", base_dir=tmp_path)
    assert fmt.pre_query() == EXPECTED_FIRST_TURN["llama3"]
    assert fmt.stops[0] == "<|eot_id|>"
    assert resolve_format("chatml").pre_query("S") == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"
