"""``models.yaml``: loading, merging, and errors that name the setting to change (and never echo a key)."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from joydataforge.cli.models import models_group
from joydataforge.errors import ConfigError
from joydataforge.models.config import ModelConfig, ModelRegistry, redact_url


def load(tmp_path, text: str) -> ModelRegistry:
    path = tmp_path / "models.yaml"
    path.write_text(text, "utf-8")
    return ModelRegistry.load(path)


def test_builtin_models_yaml_loads_without_backend_libraries():
    before = set(sys.modules)
    registry = ModelRegistry.load()
    assert {"smollm2", "local-openai", "openai"} <= set(registry.names())
    assert registry.get("smollm2").backend == "llamacpp"
    assert registry.get("openai").api_key_env == "OPENAI_API_KEY"
    newly = set(sys.modules) - before
    assert not any(name.startswith(("llama_cpp", "aiohttp")) for name in newly)


def test_a_user_file_with_every_setting(tmp_path):
    registry = load(
        tmp_path,
        """
models:
  qwen:
    backend: openai
    model: Qwen2.5-7B-Instruct
    base_url: http://127.0.0.1:8000/v1
    api_key_env: QWEN_KEY
    max_concurrency: 128
    requests_per_minute: 600
    tokens_per_minute: 100000
    timeout: 30
    max_retries: 4
    json_retries: 1
    structured_output: json_object
    params: {temperature: 0.3, max_tokens: 128}
    pricing: {input_per_mtok: 0.5, output_per_mtok: 1.5}
""",
    )
    qwen = registry.get("qwen")
    assert qwen.name == "qwen" and qwen.max_concurrency == 128 and qwen.timeout == 30.0
    assert qwen.params == {"temperature": 0.3, "max_tokens": 128}
    assert qwen.pricing is not None and qwen.pricing.output_per_mtok == 1.5
    assert registry.source == str(tmp_path / "models.yaml")


def test_user_models_override_builtin_ones_by_name(tmp_path):
    user = load(tmp_path, "models:\n  openai: {backend: openai, model: gpt-x, base_url: http://h/v1}\n")
    merged = ModelRegistry.load().merged(user)
    assert merged.get("openai").model == "gpt-x"
    assert merged.get("smollm2").backend == "llamacpp"


@pytest.mark.parametrize(
    "body, field",
    [
        ("{backend: openai, max_concurrency: lots}", "models.bad.max_concurrency"),
        ("{backend: openai, temprature: 0.5}", "models.bad.temprature"),
        ("{backend: vllm-magic}", "models.bad.backend"),
        ("{model: x}", "models.bad.backend"),
        ("{backend: openai, structured_output: grammar}", "models.bad.structured_output"),
        ("{backend: openai, pricing: {input_per_mtok: cheap}}", "models.bad.pricing.input_per_mtok"),
        ("{backend: openai, pricing: {per_token: 1}}", "models.bad.pricing.per_token"),
        ("{backend: openai, params: [1, 2]}", "models.bad.params"),
    ],
)
def test_validation_errors_name_the_field(tmp_path, body, field):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"models:\n  good: {{backend: openai}}\n  bad: {body}\n")
    message = str(info.value)
    assert field in message, message
    assert str(tmp_path / "models.yaml") in message  # and the file


@pytest.mark.parametrize(
    "text, expected",
    [
        ("models: [a, b]", "'models:' section"),
        ("just a string", "'models:' section"),
        ("models:\n  m: 3\n", r"models.yaml: models.m: must be a mapping of settings \(got 3\)"),
        ("models:\n  m: {backend: openai, name: other}\n", "models.m.name: a model's name is its key under models:"),
        ("models: {m: {backend: openai}\n", "not valid YAML"),
    ],
)
def test_malformed_files(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load(tmp_path, text)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="models file not found"):
        ModelRegistry.load(tmp_path / "nope.yaml")


def test_unknown_model_lists_the_known_ones(tmp_path):
    registry = load(tmp_path, "models:\n  a: {backend: openai}\n  b: {backend: llamacpp}\n")
    with pytest.raises(ConfigError, match=r"unknown model 'c' \(models in .*models.yaml: a, b\)"):
        registry.get("c")


@pytest.mark.parametrize(
    "value",
    [
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",  # OpenAI
        "sk-ant-api03-abcdefghijklmnop",  # Anthropic
        "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",  # Hugging Face token: letters, digits, underscore
        "gsk_abcdefghijklmnopqrstuvwxyz0123456789ABCD",  # Groq
        "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUv",  # Google
        "0123456789abcdef0123456789abcdef",  # a bare hex secret
        "x" * 80,
        "has space",
    ],
)
def test_api_key_env_refuses_what_looks_like_a_key(tmp_path, value):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"models:\n  m: {{backend: openai, api_key_env: '{value}'}}\n")
    message = str(info.value)
    assert "models.m.api_key_env" in message and "NAME of an environment variable" in message
    assert value not in message  # the refused key is not echoed into logs


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "DEEPSEEK_API_KEY", "MY_LLM_KEY_2", "QWEN_KEY", "key"])
def test_api_key_env_accepts_variable_names(name):
    assert ModelConfig(name="m", backend="openai", api_key_env=name).api_key_env == name


def test_api_key_is_read_from_the_named_variable(monkeypatch):
    config = ModelConfig(name="m", backend="openai", api_key_env="JOYFORGE_CFG_KEY")
    monkeypatch.setenv("JOYFORGE_CFG_KEY", "sk-live-1234")
    assert config.api_key() == "sk-live-1234"
    assert "sk-live-1234" not in config.model_dump_json()  # the config itself never holds the key
    monkeypatch.delenv("JOYFORGE_CFG_KEY")
    with pytest.raises(ConfigError, match="model 'm': environment variable JOYFORGE_CFG_KEY is not set"):
        config.api_key()
    assert ModelConfig(name="n", backend="openai").api_key() is None


def test_identity_is_what_changes_replies():
    a = ModelConfig(name="a", backend="openai", model="x", base_url="http://h/v1", api_key_env="K", max_concurrency=1)
    b = ModelConfig(name="b", backend="openai", model="x", base_url="http://h/v1", max_concurrency=99, timeout=1)
    assert a.identity() == b.identity()
    assert "K" not in a.identity().values()


# ---- one line per problem, in the pipeline's words ------------------------------------------------------------


def test_every_problem_of_every_model_is_one_line_in_the_pipeline_style(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(
            tmp_path,
            """
models:
  a: {backend: openai, max_concurrency: lots, timeout: -}
  b: {backend: openai, breaker_threshold: -1}
  c: {backend: openai, temprature: 0.5, colour: red}
  d: {backend: openai}
""",
        )
    source = str(tmp_path / "models.yaml")
    assert str(info.value).splitlines() == [
        f"{source}: models.a.max_concurrency: must be an integer (got 'lots')",
        f"{source}: models.a.timeout: must be a number (got '-')",
        f"{source}: models.b.breaker_threshold: must be >= 0 (got -1)",
        f"{source}: models.c.temprature: not a setting of a model; generation parameters go under params: "
        "(params: {temperature: 0.5})",
        f"{source}: models.c.colour: unknown setting (known: "
        + ", ".join(sorted(n for n in ModelConfig.model_fields if n != "name"))
        + ")",
    ]


def test_breaker_threshold_is_a_setting_with_a_small_default(tmp_path):
    registry = load(tmp_path, "models:\n  a: {backend: openai}\n  b: {backend: openai, breaker_threshold: 0}\n")
    assert registry.get("a").breaker_threshold == 5 and registry.get("b").breaker_threshold == 0
    assert ModelConfig.model_fields["breaker_threshold"].description


# ---- no key inside base_url -----------------------------------------------------------------------------------

URL_SECRET = "sk-url-secret-0123456789abcdefghij"


@pytest.mark.parametrize(
    "url, said",
    [
        (f"https://user:{URL_SECRET}@api.example.com/v1", "holds credentials (user:password@ in the address)"),
        (f"https://{URL_SECRET}@api.example.com/v1", "holds credentials (user:password@ in the address)"),
        (f"https://api.example.com/v1?api_key={URL_SECRET}", "holds a key (?api_key= in the address)"),
        (f"https://generativelanguage.example.com/v1beta?key={URL_SECRET}", "holds a key (?key= in the address)"),
        (f"https://api.example.com/v1?x={URL_SECRET}", "holds a key (?x= in the address)"),
        (f"https://api.example.com/{URL_SECRET}/v1", "holds a key in its path"),
    ],
)
def test_a_key_inside_base_url_is_refused_without_echoing_it(tmp_path, url, said):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"models:\n  remote:\n    backend: openai\n    base_url: '{url}'\n")
    message = str(info.value)
    assert message == (
        f"{tmp_path / 'models.yaml'}: models.remote.base_url: {said}; keys never go in models.yaml; "
        "put the key in an environment variable and name that variable in api_key_env"
    )
    assert URL_SECRET not in message


@pytest.mark.parametrize("url", ["localhost:8000/v1", "ftp://host/v1", "http://", "/v1"])
def test_base_url_must_be_an_http_address(url):
    with pytest.raises(ValueError, match="must be an http:// or https:// address"):
        ModelConfig(name="m", backend="openai", base_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "https://api.openai.com/v1",
        "http://[::1]:8000/v1",
        "https://x.openai.azure.com/openai/deployments/gpt?api-version=2024-02-15-preview",
    ],
)
def test_ordinary_base_urls_are_accepted(url):
    assert ModelConfig(name="m", backend="openai", base_url=url).base_url == url


def test_redact_url_keeps_the_address_and_drops_credentials():
    assert redact_url(f"https://u:{URL_SECRET}@h.example:8443/v1?key={URL_SECRET}") == "https://h.example:8443/v1"
    assert redact_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"
    assert redact_url("http://[bad") == "<invalid URL>"
    built = ModelConfig.model_construct(name="m", backend="openai", base_url=f"https://u:{URL_SECRET}@h/v1")
    assert built.endpoint == "https://h/v1"  # even a config that skipped validation prints no key


def test_models_list_never_prints_a_credential(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(
        "models:\n  remote: {backend: openai, base_url: 'https://api.example.com/v1', api_key_env: REMOTE_KEY}\n",
        "utf-8",
    )
    result = CliRunner().invoke(models_group, ["list", "--models", str(good)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "https://api.example.com/v1" in result.output and "REMOTE_KEY" in result.output

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"models:\n  remote: {{backend: openai, base_url: 'https://me:{URL_SECRET}@api.example.com/v1'}}\n", "utf-8"
    )
    result = CliRunner().invoke(models_group, ["list", "--models", str(bad)], env={"COLUMNS": "300"})
    assert isinstance(result.exception, ConfigError) and "models.remote.base_url" in str(result.exception)
    assert URL_SECRET not in result.output and URL_SECRET not in str(result.exception)
