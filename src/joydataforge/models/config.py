"""Named models from ``models.yaml``.

Configs validate without importing any backend (DataDesigner's rule), so ``joyforge models list`` and a
pipeline check work on a machine where llama-cpp-python is not installed. Keys never live in files:
a model names the *environment variable* that holds its key.
"""

from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..config import defaults
from ..config.messages import describe_errors, field_names, shown
from ..errors import ConfigError
from .capabilities import ModelCapabilities, capabilities_of

BackendName = Literal["openai", "llamacpp", "transformers", "vllm"]
# In-process backends that serve one request at a time (one thread per model): concurrency is pinned there.
_ONE_AT_A_TIME = ("llamacpp", "transformers")


class Pricing(BaseModel):
    """Price in the user's currency per million tokens."""

    model_config = ConfigDict(extra="forbid")
    input_per_mtok: float = Field(default=0.0, ge=0, description="Price of a million prompt tokens.")
    output_per_mtok: float = Field(default=0.0, ge=0, description="Price of a million completion tokens.")
    batch_input_per_mtok: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Price of a million prompt tokens sent through the provider's batch API; unset: the price table's batch "
            "discount for this model applied to `input_per_mtok`, where the table has one (`joyforge plan`)."
        ),
    )
    batch_output_per_mtok: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Price of a million completion tokens from the provider's batch API; unset: the price table's batch "
            "discount for this model applied to `output_per_mtok`, where the table has one."
        ),
    )


_KEY_PREFIXES = ("sk-", "sk_", "hf_", "gsk_", "xai-", "AIza", "ghp_", "github_pat_", "r8_", "nvapi-", "pk-")


def _looks_like_key(value: str) -> bool:
    """A variable name is a short identifier (``OPENAI_API_KEY``); a key has a vendor prefix or a long random run."""
    if value.startswith(_KEY_PREFIXES) or len(value) > 64 or not value.isidentifier() or not value.isascii():
        return True
    return any(len(part) >= 20 and any(c.isdigit() for c in part) for part in value.split("_"))


# Query parameters that carry a key (Google's ?key=, Azure Functions' ?code=, many gateways' ?api_key=).
_KEY_QUERY_NAMES = {
    "key",
    "api_key",
    "apikey",
    "api-key",
    "access_token",
    "token",
    "auth",
    "secret",
    "password",
    "code",
    "sig",
    "signature",
}
_USE_ENV = "keys never go in models.yaml; put the key in an environment variable and name that variable in api_key_env"


def _url_problem(url: str) -> str | None:
    """What is wrong with a ``base_url``, never quoting it (it may hold a key), or ``None``."""
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "must be an http:// or https:// address, e.g. http://127.0.0.1:8000/v1"
    if user is not None or password is not None:
        return f"holds credentials (user:password@ in the address); {_USE_ENV}"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() in _KEY_QUERY_NAMES or value.startswith(_KEY_PREFIXES):
            return f"holds a key (?{name}= in the address); {_USE_ENV}"
    if any(len(segment) >= 20 and segment.startswith(_KEY_PREFIXES) for segment in parts.path.split("/")):
        return f"holds a key in its path; {_USE_ENV}"
    return None


def redact_url(url: str) -> str:
    """``url`` fit to print: no ``user:password@`` and no query (where gateways put keys).

    A loaded config never holds a key in ``base_url`` (it is refused), but whatever prints an endpoint goes
    through here anyway, so a URL built some other way cannot leak one into a terminal or a log.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class ModelConfig(BaseModel):
    """One named model of models.yaml: how to reach it, how hard to push it, how to decode, what it costs.

    Steps name models, never endpoints: swapping the embedded SmolLM2 for a hosted model is a change here only.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(description="The model's name, as steps refer to it (the key under `models:`).")
    backend: BackendName = Field(
        description=(
            "How it is reached: `openai` (any OpenAI-compatible server: vLLM, SGLang, llama.cpp server, Ollama, "
            "hosted APIs), `llamacpp` (a GGUF run in-process), `vllm` (vLLM in-process, GPU), `transformers` "
            "(a local reward model)."
        )
    )
    model: str = Field(
        default="",
        description="model id sent to the server; for llamacpp a label; for vllm the "
        "Hugging Face id or local folder it loads",
    )
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(default=None, description="name of the environment variable holding the key")
    model_path: str | None = Field(
        default=None,
        description="llamacpp: a GGUF path, or 'smollm2' for the bundled "
        "model; vllm: a local model folder (else model is loaded)",
    )
    chat_template: str | None = Field(
        default=None,
        description="llamacpp: a llama-cpp-python chat format overriding the GGUF's; openai: the "
        "path of the served model's tokenizer_config.json or .jinja chat template (raw-completion methods need it); "
        "vllm: such a file, used instead of the tokenizer's own template",
    )
    n_ctx: int = Field(default=2048, ge=1, description="llamacpp: context window in tokens (prompt + reply).")
    n_threads: int | None = Field(
        default=None, ge=1, description=("llamacpp: CPU threads for inference; unset: llama.cpp's choice.")
    )
    concurrency: Literal["adaptive", "fixed"] = Field(
        default="adaptive",
        description=(
            "How many requests go to this model at once. `adaptive`: found while the run goes, between 1 and "
            "`max_concurrency`: raised while completed requests per second rise, cut on 429, 503, timeouts and "
            "on latency that grows with no gain in throughput (the server queueing); Retry-After and the "
            "x-ratelimit-* headers of hosted APIs are honoured (requests are paced to the budget the server "
            "announces). `fixed`: exactly `max_concurrency`, as a pinned setting (a server shared with others, "
            "a benchmark). Unless set: `adaptive`, except for the in-process `llamacpp` and `transformers` "
            "backends, which serve one request at a time whatever the limit (`fixed`)."
        ),
    )
    max_concurrency: int = Field(
        default=defaults.ADAPTIVE_MAX_CONCURRENCY,
        ge=1,
        description=(
            f"Most requests in flight to this model at once: the ceiling of adaptive concurrency "
            f"({defaults.ADAPTIVE_MAX_CONCURRENCY} unless set; {defaults.BATCHING_ENGINE_MAX_CONCURRENCY} for "
            f"vllm), or the exact number with `concurrency: fixed` ({defaults.MODEL_MAX_CONCURRENCY} unless set)."
        ),
    )
    requests_per_minute: float | None = Field(
        default=None, gt=0, description=("Rate limit in requests per minute (a token bucket); unset: none.")
    )
    tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        description=("Rate limit in tokens per minute (prompt + completion, estimated before the call); unset: none."),
    )
    timeout: float = Field(default=120.0, gt=0, description="Seconds one request may take before it is retried.")
    max_retries: int = Field(
        default=5,
        ge=0,
        description=("Retries of a call after a transient error (429, 5xx, a dropped connection), with backoff."),
    )
    breaker_threshold: int = Field(
        default=5,
        ge=0,
        description="failed requests in a row (connection errors, replies that are not a model "
        "API's: an HTML page, JSON without choices; a refused key; a missing path or model), retries included, "
        "after which this model is declared down and the run stops, resumable; any success resets the count; "
        "0: never declared down",
    )
    max_retry_after: float = Field(
        default=300.0,
        ge=0,
        description="longest Retry-After (seconds) worth waiting for; a server asking for "
        "more (an exhausted daily quota) fails the call at once, so the record is kept for --retry-failed",
    )
    json_retries: int = Field(
        default=2,
        ge=0,
        description=("Re-asks when a reply that must be JSON does not parse or does not match its schema."),
    )
    structured_output: Literal["json_schema", "json_object", "none"] = Field(
        default="json_schema",
        description=(
            "How JSON replies are requested: a schema the server enforces, any JSON object, or only the prompt. "
            "A server that refuses json_schema is stepped down to json_object once (said in the summary)."
        ),
    )
    params: dict[str, Any] = Field(default_factory=dict, description="default generation parameters")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="vllm: keyword arguments of vllm.LLM (tensor_parallel_size, "
        "gpu_memory_utilization, max_model_len, dtype, quantization, ...)",
    )
    pricing: Pricing | None = Field(default=None, description="Price per million tokens, for cost in the summary.")
    reasoning: Literal["auto", "field", "tags", "none"] = Field(
        default="auto",
        description=(
            "How a thinking model's reasoning trace is told from its answer (docs/reasoning.md). `auto`: the "
            "server's `reasoning_content` / `reasoning` field and `<think>` blocks in the text; `field`: the server "
            "field only; `tags`: the tags only; `none`: the reply is kept whole. The trace goes to "
            "`<output_field>_reasoning`; the answer alone is parsed, judged and deduplicated."
        ),
    )
    reasoning_tags: list[str] = Field(
        default_factory=lambda: ["<think>", "</think>"],
        min_length=2,
        max_length=2,
        description="The opening and closing tags of a trace inside the text (`[<think>, </think>]`).",
    )
    batch: bool = Field(
        default=False,
        description=(
            "Send this model's calls through its provider's batch API (OpenAI's files and batches endpoints, served "
            "by OpenAI and several compatible providers: about half the price, answers within 24 hours). A run then "
            "gathers each stage's calls that are not in the cache into one batch, submits it and stops (exit status "
            "5); re-running the same command collects the answers into the call cache and goes on "
            "(docs/cost.md, Batch). `joyforge run --batch` does this for every model that can. openai backend only."
        ),
    )
    batch_failed: Literal["retry_batch", "live", "fail"] = Field(
        default="retry_batch",
        description=(
            "What becomes of a batched call the provider answered with an error, or did not answer before the batch "
            "expired or was cancelled: `retry_batch` (into the next batch, at most 3 tries in all, then the call "
            "fails), `live` (sent live by the next run, at the standard price), `fail` (the call fails: its record "
            "goes to failures.jsonl; `--retry-failed` tries the batch again)."
        ),
    )

    @field_validator("api_key_env")
    @classmethod
    def _env_name_not_key(cls, value: str | None) -> str | None:
        if value and _looks_like_key(value):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), never the key"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _no_key_in_url(cls, value: str | None) -> str | None:
        problem = _url_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("batch")
    @classmethod
    def _batch_needs_a_batch_api(cls, value: bool, info: ValidationInfo) -> bool:
        backend = info.data.get("backend")
        if value and backend != "openai":
            raise ValueError(f"the {backend} backend has no batch API: batch works with the openai backend only")
        return value

    @field_validator("reasoning_tags")
    @classmethod
    def _two_tags(cls, value: list[str]) -> list[str]:
        if any(not tag.strip() for tag in value) or value[0] == value[1]:
            raise ValueError("reasoning_tags are two different, non-empty tags: [<opening>, <closing>]")
        return value

    @field_validator("engine_args")
    @classmethod
    def _engine_args_for_vllm(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        backend = info.data.get("backend")
        if value and backend != "vllm":
            raise ValueError(f"engine_args configures the vllm backend, not {backend}")
        if "model" in value:
            raise ValueError("the model to load goes in model:, not engine_args.model")
        return value

    @model_validator(mode="after")
    def _default_concurrency(self) -> "ModelConfig":
        if "concurrency" not in self.model_fields_set and self.backend in _ONE_AT_A_TIME:
            self.concurrency = "fixed"  # nothing to find: the model's one thread serves requests in turn
        if "max_concurrency" in self.model_fields_set:
            return self
        if self.capabilities.batches_in_flight:
            # vLLM batches whatever is in flight: 16 requests would leave most of a GPU idle.
            self.max_concurrency = defaults.BATCHING_ENGINE_MAX_CONCURRENCY
        elif self.concurrency == "fixed":
            self.max_concurrency = defaults.MODEL_MAX_CONCURRENCY
        return self

    @property
    def capabilities(self) -> ModelCapabilities:
        """What this model can do; ask this rather than which backend it is."""
        return capabilities_of(self)

    @property
    def endpoint(self) -> str:
        """Where this model lives, fit for messages and tables: the base URL (never a credential), else the file."""
        if self.base_url:
            return redact_url(self.base_url)
        return self.model_path or f"the {self.backend} backend"

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if key is None:
            raise ConfigError(f"model '{self.name}': environment variable {self.api_key_env} is not set")
        return key

    def identity(self) -> dict[str, Any]:
        """What makes two configs give the same replies; part of every cache key (never the key itself)."""
        identity = {
            "backend": self.backend,
            "model": self.model,
            "base_url": self.base_url,
            "model_path": self.model_path,
            "chat_template": self.chat_template,
        }
        if self.engine_args:  # quantization, dtype, max_model_len... change the replies
            identity["engine_args"] = self.engine_args
        if self.reasoning != "auto" or list(self.reasoning_tags) != ["<think>", "</think>"]:
            # the cache stores replies split: another split must not read the old one (the default adds nothing,
            # so caches made before reasoning traces existed stay valid)
            identity["reasoning"] = [self.reasoning, list(self.reasoning_tags)]
        return identity


_SETTINGS = [name for name in field_names(ModelConfig) if name != "name"]  # what a user may write
# What a sampling setting written at the top of a model (instead of under params:) is most likely meant to be.
_GENERATION_PARAMS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "n",
)


def _misplaced_params(body: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """Generation parameters written as settings (``temperature: 0.3``) belong under ``params:``; said in
    those words rather than as an unknown setting resembling some other one. Returns the rest of the body."""
    problems: list[str] = []
    rest: dict[str, Any] = {}
    for key, value in body.items():
        close = difflib.get_close_matches(str(key), _GENERATION_PARAMS, n=1, cutoff=0.8)
        if key not in _SETTINGS and close:
            problems.append(
                f"{where}.{key}: not a setting of a model; generation parameters go under params: "
                f"(params: {{{close[0]}: {shown(value)}}})"
            )
        else:
            rest[key] = value
    return rest, problems


class ModelRegistry:
    """The models one run may use, by name."""

    def __init__(self, models: dict[str, ModelConfig], source: str = "<memory>"):
        self.models = models
        self.source = source

    def get(self, name: str) -> ModelConfig:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ConfigError(f"unknown model '{name}' (models in {self.source}: {known})") from None

    def names(self) -> list[str]:
        return list(self.models)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "ModelRegistry":
        """Every model of the file checked; one line per problem: ``<file>: models.<name>.<field>: <what>``."""
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise ConfigError(f"{source}: expected a mapping with a 'models:' section of named models")
        models: dict[str, ModelConfig] = {}
        problems: list[str] = []
        for key, body in data["models"].items():
            name = str(key)
            where = f"{source}: models.{name}"
            if not isinstance(body, dict):
                problems.append(f"{where}: must be a mapping of settings (got {shown(body)})")
            elif "name" in body:
                problems.append(f"{where}.name: a model's name is its key under models:, not a setting")
            else:
                settings, misplaced = _misplaced_params(body, where)
                problems.extend(misplaced)
                try:
                    config = ModelConfig.model_validate({**settings, "name": name})
                except ValidationError as exc:
                    problems.extend(describe_errors(exc, where, _SETTINGS))
                else:
                    models[name] = config
        if problems:
            raise ConfigError("\n".join(problems))
        return cls(models, source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "ModelRegistry":
        """Load a models.yaml; without a path, the one that ships in the package."""
        if path is None:
            text = resources.files("joydataforge.models").joinpath("models.yaml").read_text("utf-8")
            source = "built-in models.yaml"
        else:
            p = Path(path)
            if not p.exists():
                raise ConfigError(f"models file not found: {p}")
            text, source = p.read_text("utf-8"), str(p)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        return cls.from_dict(data, source)

    def merged(self, other: "ModelRegistry") -> "ModelRegistry":
        return ModelRegistry({**self.models, **other.models}, f"{self.source} + {other.source}")
