"""A model's own chat template (the Jinja text its tokenizer ships) and the special tokens it names.

Most steps never need it: chat replies go through the backend, which applies the template itself. Raw
completion methods (Magpie) must write the template's text themselves, and the template is best taken
from the model: the GGUF file's ``tokenizer.chat_template`` metadata, or the ``tokenizer_config.json``
of the model a server runs. This module only finds and loads that text; rendering it is the caller's job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class ChatTemplateSource:
    """Jinja chat template text, with the ``bos_token``/``eos_token`` strings the template refers to."""

    template: str
    bos_token: str = ""
    eos_token: str = ""
    origin: str = ""  # where it came from, kept in outputs as provenance ("gguf metadata: ...")


def _token_text(value: Any) -> str:
    """tokenizer_config.json writes special tokens as a string or as ``{"content": ...}`` (AddedToken)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def load_chat_template_file(path: str | Path) -> ChatTemplateSource:
    """Load a chat template from a ``tokenizer_config.json`` or from a plain Jinja file (``.jinja``).

    A tokenizer config may hold several named templates (``[{"name": "default", "template": ...}, ...]``,
    e.g. ``tool_use``); the one named ``default`` is the chat template.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"chat template file not found: {file}")
    text = file.read_text("utf-8")
    if file.suffix.lower() != ".json":
        if not text.strip():
            raise ConfigError(f"{file}: the chat template file is empty")
        return ChatTemplateSource(text, origin=f"file: {file}")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{file}: expected a JSON object (a tokenizer_config.json)")
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
        template = named.get("default")
        if template is None:
            raise ConfigError(
                f"{file}: field 'chat_template' lists templates {sorted(map(str, named))} but none named 'default'"
            )
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(
            f"{file}: field 'chat_template' is missing or not a string; newer models keep it in "
            "a separate chat_template.jinja file: pass that file instead"
        )
    return ChatTemplateSource(
        template,
        _token_text(config.get("bos_token")),
        _token_text(config.get("eos_token")),
        origin=f"tokenizer config: {file}",
    )
