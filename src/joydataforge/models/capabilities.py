"""What a named model can do, said by the model layer so that nothing outside it asks which backend it is.

Steps, executors and commands ask ``registry.get(name).capabilities`` ("can it give rewards?", "does it
batch whatever is in flight?") instead of testing ``backend == "vllm"``. Known from the config alone, so
checks before a run never import a backend.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import ModelConfig


@dataclass(frozen=True)
class ModelCapabilities:
    chat: bool
    """Answers chat messages (``chat``, ``chat_json``)."""
    raw_completion: bool
    """Continues raw text (``complete``, ``complete_n``): what Magpie's pre-query templates need."""
    embeddings: bool
    """Can be asked for embeddings (a served model may still refuse; the call then says why)."""
    rewards: bool
    """Can score a conversation with a reward head."""
    native_n: bool
    """Draws several samples of one prompt in one request (else the gateway makes one call per sample)."""
    own_chat_template: bool
    """Knows its chat template without a file from the user (a GGUF's, a tokenizer's)."""
    chat_template_file: bool
    """``chat_template`` in models.yaml names a chat template file it reads (tokenizer_config.json, .jinja),
    rather than a chat format of the backend's own: when set, the model's template is known from that file."""
    batches_in_flight: bool
    """An in-process engine that batches whatever requests are in flight: more records in flight, fuller batches."""
    repetition_penalty_param: str
    """The name this backend gives the repetition penalty parameter."""
    native_tools: bool = False
    """Takes OpenAI's ``tools`` and answers ``tool_calls`` (``chat_tools``); else tool use is asked as JSON.
    A server may still refuse them (llama.cpp without ``--jinja``): the call then says so."""
    batch_api: bool = False
    """Its calls can go through a provider batch API (OpenAI's files and batches endpoints, :mod:`.batch`);
    whether this provider serves one is known only when a batch is submitted."""


def _caps(flags: str, repetition_penalty_param: str = "repetition_penalty") -> ModelCapabilities:
    """A capability row from the names of the flags that are true (the rest are false)."""
    names = set(flags.split())
    known = {f for f in ModelCapabilities.__dataclass_fields__ if f != "repetition_penalty_param"}
    if names - known:
        raise ValueError(f"unknown capabilities {sorted(names - known)}")
    return ModelCapabilities(**{f: f in names for f in known}, repetition_penalty_param=repetition_penalty_param)


_BY_BACKEND: dict[str, ModelCapabilities] = {
    "openai": _caps("chat raw_completion embeddings rewards native_n chat_template_file native_tools batch_api"),
    "llamacpp": _caps("chat raw_completion embeddings own_chat_template", "repeat_penalty"),
    "vllm": _caps(
        "chat raw_completion embeddings rewards native_n own_chat_template chat_template_file batches_in_flight"
    ),
    "transformers": _caps("rewards own_chat_template"),
}


def capabilities_of(config: "ModelConfig") -> ModelCapabilities:
    try:
        capabilities = _BY_BACKEND[config.backend]
    except KeyError:
        raise ValueError(f"unknown backend {config.backend!r}") from None
    if config.backend == "llamacpp" and config.chat_template:
        # A llama.cpp chat format named in chat_template replaces the GGUF's own Jinja template.
        return replace(capabilities, own_chat_template=False)
    return capabilities
