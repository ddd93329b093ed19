"""Pre-query templates: the text of a chat up to where the next user message would begin.

Magpie feeds an aligned model only that prefix; the model then writes the user's message itself. The
prefix is best *derived* from the model's own chat template (the GGUF's ``tokenizer.chat_template`` or a
server model's ``tokenizer_config.json``): render the template around a sentinel user message and cut
at the sentinel. That is exact for any model, including the default system prompts some templates add
(Qwen 2.5's "You are Qwen...", SmolLM2's "You are a helpful AI assistant named SmolLM..."), and it works
for every later turn too (render the conversation so far, then a sentinel). A hand-kept table covers the
common families for when no template is available (an OpenAI-compatible server does not say which one it
applies); tests check that the table agrees with derivation from each family's real template.

The leading BOS token is left out of every prefix: llama.cpp, vLLM and SGLang add it themselves when
they tokenize a completion prompt, and a second BOS degrades the output.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ...errors import ConfigError
from ...models.chat_template import ChatTemplateSource, load_chat_template_file

Message = dict[str, str]

# Plain letters and digits: templates that trim, strip or escape content leave it alone.
SENTINEL = "MagpieSentinel7f3a9c"

# Special tokens as templates write them: <|im_end|>, <end_of_turn>, <｜Assistant｜>, [/INST].
_SPECIAL = re.compile(r"<\|[^<>|\s]{1,40}\|>|<[^<>\s]{1,40}>|\[/?[A-Z_]{2,20}\]")


class TemplateRenderError(ConfigError):
    """A chat template refused the conversation (``raise_exception`` in the template) or failed to render."""


def _raise_exception(message: str) -> None:
    raise TemplateRenderError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


def _environment() -> ImmutableSandboxedEnvironment:
    # The options Hugging Face's apply_chat_template and llama-cpp-python use: templates are written
    # for exactly these whitespace rules, and the sandbox keeps a model's template from doing harm.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise_exception
    env.filters["tojson"] = _tojson
    return env


class ChatFormat(abc.ABC):
    """How one model writes a conversation as text, as far as Magpie needs it."""

    name: str
    origin: str

    @abc.abstractmethod
    def prefix(self, messages: Sequence[Message] = ()) -> str:
        """The text of ``messages`` (system/user/assistant) followed by the start of a new user turn."""

    @property
    @abc.abstractmethod
    def stops(self) -> tuple[str, ...]:
        """Strings that end a user turn (first: the end-of-turn marker itself)."""

    def pre_query(self, system: str | None = None) -> str:
        """The first turn's prefix, with an optional system prompt."""
        return self.prefix([{"role": "system", "content": system}] if system else [])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "origin": self.origin, "stops": list(self.stops)}


class JinjaChatFormat(ChatFormat):
    """A format derived from the model's own Jinja chat template."""

    def __init__(self, source: ChatTemplateSource, name: str = "model"):
        self.source = source
        self.name = name
        self.origin = source.origin or "chat template"
        try:
            self._template = _environment().from_string(source.template)
        except TemplateError as exc:
            raise TemplateRenderError(f"{self.origin}: the chat template does not compile: {exc}") from None
        self._stops: tuple[str, ...] | None = None

    def _render(self, messages: Sequence[Message]) -> str:
        try:
            # bos_token renders empty: the backend adds BOS when it tokenizes (see the module docstring).
            # Stripping the BOS text afterwards would be wrong for SmolLM2, whose BOS is <|im_start|>.
            return self._template.render(
                messages=list(messages), add_generation_prompt=True, bos_token="", eos_token=self.source.eos_token
            )
        except TemplateRenderError:
            raise
        except Exception as exc:  # a template may fail in many ways (TypeError on odd content, ...)
            raise TemplateRenderError(f"{type(exc).__name__}: {exc}") from None

    def _render_with_sentinel(self, messages: Sequence[Message]) -> str:
        conversation = [dict(m) for m in messages] + [{"role": "user", "content": SENTINEL}]
        try:
            return self._render(conversation)
        except TemplateRenderError as first:
            if not conversation or conversation[0]["role"] != "system":
                raise TemplateRenderError(
                    f"{self.origin}: the chat template refused the conversation "
                    f"(roles {[m['role'] for m in conversation]}): {first}"
                ) from None
            # Templates without a system role (Gemma 2) get it the way Gemma 3 does it natively: as the
            # opening paragraph of the first user message.
            system, rest = conversation[0]["content"], conversation[1:]
            rest[0] = {**rest[0], "content": f"{system}\n\n{rest[0]['content']}"}
            try:
                return self._render(rest)
            except TemplateRenderError as second:
                raise TemplateRenderError(
                    f"{self.origin}: the chat template refused the conversation: {second}"
                ) from None

    def prefix(self, messages: Sequence[Message] = ()) -> str:
        text = self._render_with_sentinel(messages)
        count = text.count(SENTINEL)
        if count != 1:
            raise TemplateRenderError(
                f"{self.origin}: the chat template shows the user's message {count} times, "
                "so the prefix before it is ambiguous"
            )
        return text[: text.index(SENTINEL)]

    @property
    def stops(self) -> tuple[str, ...]:
        if self._stops is None:
            text = self._render_with_sentinel([])
            after = text[text.index(SENTINEL) + len(SENTINEL) :]
            found = _SPECIAL.findall(after)
            if not found and after.strip():
                found = [after.strip().splitlines()[0].strip()]  # plain-text markers ("ASSISTANT:")
            if self.source.eos_token:
                found.append(self.source.eos_token)
            if not found:
                raise TemplateRenderError(
                    f"{self.origin}: nothing follows the user's message in the chat template, "
                    "so the end of a user turn cannot be recognised"
                )
            self._stops = tuple(dict.fromkeys(found))
        return self._stops


@dataclass(frozen=True)
class TableChatFormat(ChatFormat):
    """A hand-kept format. ``{content}`` marks where a message's text goes in each role's piece.

    ``system`` is ``None`` for families without a system role: the system prompt then opens the first
    user message (``fold: first``, Gemma) or the last one (``fold: last``, Mistral v3). A
    ``default_system`` (even ``""``) means the template always writes a system block.
    """

    name: str
    user: str
    assistant: str
    system: str | None
    stops_: tuple[str, ...]
    default_system: str | None = None
    start: str = ""  # text before everything, BOS excluded (GLM-4's "[gMASK]<sop>")
    trim: bool = False  # the template trims message content (Llama 3, Gemma)
    fold: str = "first"
    origin: str = field(default="built-in table")

    @property
    def stops(self) -> tuple[str, ...]:
        return self.stops_

    def _content(self, text: str) -> str:
        return text.strip() if self.trim else text

    def prefix(self, messages: Sequence[Message] = ()) -> str:
        messages = list(messages)
        system = None
        if messages and messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
        if system is None:
            system = self.default_system
        turns = messages + [{"role": "user", "content": SENTINEL}]
        parts = [self.start]
        if system is not None and self.system is not None:
            parts.append(self.system.replace("{content}", self._content(system)))
        elif system:
            users = [i for i, m in enumerate(turns) if m["role"] == "user"]
            at = users[0] if self.fold == "first" else users[-1]
            turns[at] = {**turns[at], "content": f"{system}\n\n{turns[at]['content']}"}
        for message in turns:
            piece = self.user if message["role"] == "user" else self.assistant
            if message["role"] not in ("user", "assistant"):
                raise TemplateRenderError(f"table format '{self.name}': unsupported role '{message['role']}'")
            parts.append(piece.replace("{content}", self._content(message["content"])))
        text = "".join(parts)
        return text[: text.index(SENTINEL)]


_CHATML_STOPS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
_LLAMA31_SYSTEM = (
    "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n{content}<|eot_id|>"
)


def _chatml(name: str, default_system: str | None = None) -> TableChatFormat:
    return TableChatFormat(
        name,
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant="<|im_start|>assistant\n{content}<|im_end|>\n",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        stops_=_CHATML_STOPS,
        default_system=default_system,
    )


def _llama3(name: str, system: str) -> TableChatFormat:
    return TableChatFormat(
        name,
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant="<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>",
        system=system,
        default_system="" if "Cutting" in system else None,
        trim=True,
        stops_=("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"),
    )


def _gemma(name: str) -> TableChatFormat:
    return TableChatFormat(
        name,
        user="<start_of_turn>user\n{content}<end_of_turn>\n",
        assistant="<start_of_turn>model\n{content}<end_of_turn>\n",
        system=None,
        trim=True,
        stops_=("<end_of_turn>", "<start_of_turn>", "<eos>"),
    )


def _phi3(name: str) -> TableChatFormat:
    return TableChatFormat(
        name,
        user="<|user|>\n{content}<|end|>\n",
        assistant="<|assistant|>\n{content}<|end|>\n",
        system="<|system|>\n{content}<|end|>\n",
        stops_=("<|end|>", "<|assistant|>", "<|user|>", "<|endoftext|>"),
    )


TABLE: dict[str, TableChatFormat] = {
    f.name: f
    for f in (
        _chatml("chatml"),
        _chatml("smollm2", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
        _chatml("qwen2", "You are a helpful assistant."),
        _chatml("qwen2.5", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
        _chatml("qwen3"),
        TableChatFormat(
            "yi",
            user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
            assistant="{content}<|im_end|>\n",
            system="{content}",
            stops_=_CHATML_STOPS,
        ),
        _llama3("llama3", "<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>"),
        _llama3("llama3.1", _LLAMA31_SYSTEM),
        _llama3("llama3.2", _LLAMA31_SYSTEM),
        _llama3("llama3.3", _LLAMA31_SYSTEM),
        _gemma("gemma2"),
        _gemma("gemma3"),
        _phi3("phi3"),
        _phi3("phi3.5"),
        TableChatFormat(
            "phi4",
            user="<|im_start|>user<|im_sep|>{content}<|im_end|>",
            assistant="<|im_start|>assistant<|im_sep|>{content}<|im_end|>",
            system="<|im_start|>system<|im_sep|>{content}<|im_end|>",
            stops_=("<|im_end|>", "<|im_start|>", "<|endoftext|>"),
        ),
        TableChatFormat(
            "mistral",
            user="[INST] {content}[/INST]",
            assistant=" {content}</s>",
            system=None,
            fold="last",
            stops_=("[/INST]", "[INST]", "</s>"),
        ),
        TableChatFormat(
            "deepseek",
            user="<｜User｜>{content}",
            assistant="<｜Assistant｜>{content}<｜end▁of▁sentence｜>",
            system="{content}",
            stops_=("<｜Assistant｜>", "<｜User｜>", "<｜end▁of▁sentence｜>"),
        ),
        TableChatFormat(
            "glm4",
            start="[gMASK]<sop>",
            user="<|user|>\n{content}",
            assistant="<|assistant|>\n{content}",
            system="<|system|>\n{content}",
            stops_=("<|assistant|>", "<|user|>", "<|observation|>", "<|endoftext|>"),
        ),
    )
}

# Model ids and file names -> table entry; the more specific patterns first.
_FAMILY_PATTERNS: list[tuple[str, str]] = [
    (r"llama[-_ ]?3\.3", "llama3.3"),
    (r"llama[-_ ]?3\.2", "llama3.2"),
    (r"llama[-_ ]?3\.1", "llama3.1"),
    (r"llama[-_ ]?3", "llama3"),
    (r"qwen[-_ ]?3", "qwen3"),
    (r"qwen[-_ ]?2[._]5|qwq", "qwen2.5"),
    (r"qwen[-_ ]?2", "qwen2"),
    (r"gemma[-_ ]?3", "gemma3"),
    (r"gemma[-_ ]?2", "gemma2"),
    (r"phi[-_ ]?4", "phi4"),
    (r"phi[-_ ]?3[._]5", "phi3.5"),
    (r"phi[-_ ]?3", "phi3"),
    (r"mistral|mixtral|ministral", "mistral"),
    (r"deepseek", "deepseek"),
    (r"glm[-_ ]?4", "glm4"),
    (r"(^|[/_ -])yi[-_ ]", "yi"),
    (r"smollm", "smollm2"),
    (r"chatml", "chatml"),
]


def _normal(name: str) -> str:
    name = re.sub(r"(?<=\d)_(?=\d)", ".", name.strip().lower())  # qwen2_5 -> qwen2.5
    return name.replace("-", "").replace("_", "").replace(" ", "")


def table_format(name: str) -> TableChatFormat:
    """A table entry by name (``llama3.1``, ``Llama-3.1``, ``qwen2_5`` all work)."""
    wanted = _normal(name)
    for key, fmt in TABLE.items():
        if _normal(key) == wanted:
            return fmt
    raise ConfigError(
        f"unknown chat template '{name}' (built in: {', '.join(TABLE)}; or 'auto', or the path of "
        "a tokenizer_config.json / .jinja file)"
    )


def guess_family(*hints: str | None) -> str | None:
    """The table entry a model id, file name or chat-format name points to, if any."""
    for hint in hints:
        if not hint:
            continue
        text = hint.lower()
        for pattern, family in _FAMILY_PATTERNS:
            if re.search(pattern, text):
                return family
    return None


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.endswith((".json", ".jinja", ".j2"))


def resolve_format(
    spec: str, source: ChatTemplateSource | None = None, hints: Sequence[str | None] = (), base_dir: str | Path = "."
) -> ChatFormat:
    """Pick the chat format for ``spec``: ``auto``, a table name, or a template file.

    ``auto`` derives from ``source`` (the model's own template) and checks the derivation on a first
    turn; without a usable source it falls back to the table entry the ``hints`` (model id, GGUF path,
    chat-format name) point to, and says so in ``origin``.
    """
    spec = (spec or "auto").strip()
    if spec.lower() != "auto":
        if _looks_like_path(spec):
            path = Path(spec).expanduser()
            if not path.is_absolute():
                path = Path(base_dir) / path
            return _checked(JinjaChatFormat(load_chat_template_file(path), name=path.name))
        return table_format(spec)
    problem = "the model does not expose its chat template"
    if source is not None:
        try:
            return _checked(JinjaChatFormat(source, name="model"))
        except TemplateRenderError as exc:
            problem = f"its template could not be used ({exc})"
    family = guess_family(*hints)
    if family is None:
        shown = ", ".join(h for h in hints if h) or "no name"
        raise ConfigError(
            f"cannot tell the chat template of the model ({shown}): {problem}. Pass template: with "
            f"one of {', '.join(TABLE)}, or the path of its tokenizer_config.json / .jinja file"
        )
    fmt = TABLE[family]
    return TableChatFormat(
        **{**fmt.__dict__, "origin": f"built-in table '{family}' (guessed from the model name; {problem})"}
    )


def _checked(fmt: JinjaChatFormat) -> JinjaChatFormat:
    """Derive a first turn and the stops now, so a bad template fails before any record is processed."""
    fmt.prefix([])
    _ = fmt.stops
    return fmt
