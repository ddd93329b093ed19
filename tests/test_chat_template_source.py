"""A model's own chat template: from a tokenizer_config.json or .jinja file, through the gateway."""

import json

import pytest

from joydataforge.errors import ConfigError
from joydataforge.models.chat_template import load_chat_template_file
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from tests.scripted_backend import ScriptedBackend

CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def test_tokenizer_config_with_string_template_and_added_token_dicts(tmp_path):
    path = tmp_path / "tokenizer_config.json"
    path.write_text(
        json.dumps({"chat_template": CHATML, "bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>"}),
        "utf-8",
    )
    source = load_chat_template_file(path)
    assert (source.template, source.bos_token, source.eos_token) == (CHATML, "<s>", "</s>")
    assert str(path) in source.origin


def test_tokenizer_config_with_named_templates_takes_default(tmp_path):
    path = tmp_path / "tokenizer_config.json"
    path.write_text(
        json.dumps({"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": CHATML}]}),
        "utf-8",
    )
    assert load_chat_template_file(path).template == CHATML
    path.write_text(json.dumps({"chat_template": [{"name": "tool_use", "template": "x"}]}), "utf-8")
    with pytest.raises(ConfigError, match="none named 'default'"):
        load_chat_template_file(path)


def test_bad_files_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_chat_template_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  oops", "utf-8")
    with pytest.raises(ConfigError, match=r"bad.json:2: not valid JSON"):
        load_chat_template_file(bad)
    none = tmp_path / "none.json"
    none.write_text(json.dumps({"bos_token": "<s>"}), "utf-8")
    with pytest.raises(ConfigError, match="'chat_template' is missing"):
        load_chat_template_file(none)


def test_jinja_file_is_taken_as_is(tmp_path):
    path = tmp_path / "chat_template.jinja"
    path.write_text(CHATML, "utf-8")
    source = load_chat_template_file(path)
    assert source.template == CHATML and source.bos_token == ""


async def test_openai_backend_template_only_when_configured(tmp_path):
    path = tmp_path / "chat_template.jinja"
    path.write_text(CHATML, "utf-8")
    registry = ModelRegistry.from_dict(
        {
            "models": {
                "plain": {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"},
                "with": {
                    "backend": "openai",
                    "model": "m",
                    "base_url": "http://127.0.0.1:9/v1",
                    "chat_template": str(path),
                },
            }
        },
        "test",
    )
    gateway = Gateway(registry)
    assert await gateway.model("plain").chat_template() is None
    assert (await gateway.model("with").chat_template()).template == CHATML
    await gateway.close()


async def test_gateway_asks_the_backend_once():
    class Counting(ScriptedBackend):
        asked = 0

        async def chat_template(self):
            Counting.asked += 1
            return None

    registry = ModelRegistry.from_dict({"models": {"m": {"backend": "llamacpp"}}}, "test")
    gateway = Gateway(registry, backends={"m": Counting()})
    assert await gateway.model("m").chat_template() is None
    assert await gateway.model("m").chat_template() is None
    assert Counting.asked == 1
