"""Prompt templates as files, rendered in a sandbox with record fields inserted as values only.

A prompt file (YAML) holds ``system`` and ``user`` Jinja templates, an optional JSON ``schema`` the reply
must follow, and a description. Jinja never re-renders a value, and the sandbox forbids attribute
tricks, so a record whose text contains ``{{ ... }}`` stays text: record content is data, never code.

Templates see each record field by name, plus ``record`` (the whole record), ``history_messages``
(normalised ``[{role, content}]``), ``history_text`` (one line per turn) and ``options`` (the step's own
settings, e.g. the label list). The record fields a template needs are found by parsing it, so a missing
field is reported before any model is called.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.runtime import new_context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import ConfigError, InputError
from ..models.structured import check_schema
from ..records import history_as_text, normalize_history

PROVIDED = {"record", "history_messages", "history_text", "options", "loop", "range", "namespace"}
OPTIONAL_FIELDS = {"history"}  # absent means "no earlier turns", not an error


def _to_json(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


def _make_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["to_json"] = _to_json
    return env


_ENV = _make_env()
_PLAIN_NODES = (nodes.Template, nodes.Output, nodes.TemplateData)


class _Compiled:
    """A template rendered the way ``Template.render`` does it, minus two per-call costs that dominate
    short prompts: a template that is plain text (the usual system prompt) is rendered once, and the
    context takes the variables dict as is (``shared``) with the globals merged in beforehand, instead of
    copying globals and variables into a new dict on every call (and globals are a plain dict, not the
    template's ChainMap, which the context would iterate). Same output, same errors."""

    def __init__(self, source: str):
        self.template: Template = _ENV.from_string(source)
        self.globals = dict(self.template.globals)
        plain = all(isinstance(node, _PLAIN_NODES) for node in _ENV.parse(source).find_all(nodes.Node))
        self.constant: str | None = self.template.render() if plain else None

    def render(self, variables: dict[str, Any]) -> str:
        if self.constant is not None:
            return self.constant
        template = self.template
        context = new_context(_ENV, template.name, template.blocks, {**self.globals, **variables}, True, self.globals)
        try:
            return _ENV.concat(template.root_render_func(context))  # type: ignore[attr-defined]
        except UndefinedError:
            raise
        except Exception:
            _ENV.handle_exception()  # re-raises with the template's line numbers, as Template.render does
            raise


@dataclass
class PromptTemplate:
    name: str
    source: str
    user: str
    system: str | None = None
    schema: dict[str, Any] | None = None
    include_history: bool = False
    description: str = ""
    required_fields: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        try:
            self._user = _Compiled(self.user)
            self._system = _Compiled(self.system) if self.system else None
            names: set[str] = set()
            for text in (self.user, self.system or ""):
                names |= meta.find_undeclared_variables(_ENV.parse(text))
        except TemplateSyntaxError as exc:
            raise ConfigError(f"{self.source}: template syntax error on line {exc.lineno}: {exc.message}") from None
        self.required_fields = names - PROVIDED
        if self.schema is not None:
            try:
                check_schema(self.schema)
            except Exception as exc:  # jsonschema.SchemaError: report it as a config problem with the path
                raise ConfigError(f"{self.source}: invalid JSON schema: {exc}") from None

    def render(
        self, record: dict[str, Any], options: dict[str, Any] | None = None, location: Any = None
    ) -> list[dict[str, str]]:
        """Chat messages for one record; a missing field raises InputError naming it."""
        missing = sorted(f for f in self.required_fields - OPTIONAL_FIELDS if f not in record)
        if missing:
            raise InputError(f"prompt '{self.name}' needs this field, which the record lacks", location, missing[0])
        try:
            history = normalize_history(record.get("history"))
        except TypeError as exc:
            raise InputError(str(exc), location, "history") from None
        context = dict.fromkeys(OPTIONAL_FIELDS)
        context.update(record)
        context.update(
            record=record,
            history_messages=history,
            history_text=history_as_text(history) if history else "",
            options=options or {},
        )
        try:
            messages: list[dict[str, str]] = []
            if self._system is not None:
                messages.append({"role": "system", "content": self._system.render(context).strip()})
            if self.include_history:
                messages.extend(history)
            messages.append({"role": "user", "content": self._user.render(context).strip()})
        except UndefinedError as exc:
            raise InputError(f"prompt '{self.name}': {exc.message}", location) from None
        return messages

    @classmethod
    def from_text(cls, text: str, name: str, source: str) -> "PromptTemplate":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("user"), str):
            raise ConfigError(f"{source}: a prompt file needs at least a 'user:' template")
        unknown = set(data) - {"system", "user", "schema", "include_history", "description"}
        if unknown:
            raise ConfigError(f"{source}: unknown keys {sorted(unknown)}")
        return cls(
            name=name,
            source=source,
            user=data["user"],
            system=data.get("system"),
            schema=data.get("schema"),
            include_history=bool(data.get("include_history", False)),
            description=data.get("description", ""),
        )


class PromptLibrary:
    """Finds prompts by name (``zh/intent_cdss``, ``en/answer``) in the package, or by file path."""

    def __init__(self, search_paths: list[Path] | None = None, language: str = "en"):
        self.search_paths = list(search_paths or [])
        self.language = language
        self._cache: dict[str, PromptTemplate] = {}

    def get(self, ref: str) -> PromptTemplate:
        if ref not in self._cache:
            self._cache[ref] = self._load(ref)
        return self._cache[ref]

    def _load(self, ref: str) -> PromptTemplate:
        path = Path(ref).expanduser()
        if path.suffix in {".yaml", ".yml"}:
            candidates = [path] + [base / path for base in self.search_paths if not path.is_absolute()]
            for candidate in candidates:
                if candidate.is_file():
                    return PromptTemplate.from_text(candidate.read_text("utf-8"), candidate.stem, str(candidate))
            raise ConfigError(f"prompt file not found: {ref}")
        name = ref if "/" in ref else f"{self.language}/{ref}"
        packaged = resources.files("joydataforge.prompts").joinpath("templates", f"{name}.yaml")
        if not packaged.is_file():
            raise ConfigError(f"no built-in prompt '{ref}' (available: {', '.join(available_prompts())})")
        return PromptTemplate.from_text(packaged.read_text("utf-8"), name, f"built-in prompt {name}")


def available_prompts() -> list[str]:
    root = resources.files("joydataforge.prompts").joinpath("templates")
    names = []
    for language in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for item in sorted(root.joinpath(language).iterdir(), key=lambda p: p.name):
            if item.name.endswith(".yaml"):
                names.append(f"{language}/{item.name[:-5]}")
    return names
