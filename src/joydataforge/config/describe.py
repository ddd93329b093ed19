"""A settings class described in words: each setting's name, type, default and meaning.

``joyforge steps show`` and the generated reference pages in ``docs/reference/`` both read this, so the
terminal and the docs can never say different things about a setting. Everything here is read from the
pydantic models themselves (annotations, constraints, defaults, ``description=``); nothing is written twice.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .base import StepConfig

REQUIRED = "required"
"""What the default column says of a setting without a default."""

_BOUNDS: tuple[tuple[type, str, str], ...] = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


@dataclass(frozen=True)
class SettingDoc:
    """One setting as a user reads it: the name written in YAML, never the Python attribute."""

    name: str
    type: str
    default: str
    description: str

    @property
    def required(self) -> bool:
        return self.default == REQUIRED


def type_name(annotation: Any) -> str:
    """A type as a YAML writer thinks of it: ``int``, ``str | null``, ``list[str]``, ``'keep' | 'drop'``."""
    if annotation is None or annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(json.dumps(a, ensure_ascii=False) if not isinstance(a, str) else repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(dict.fromkeys(type_name(a) for a in args))
    if origin is not None:
        name = {list: "list", dict: "mapping", tuple: "list", set: "list", frozenset: "list"}.get(origin)
        name = name or getattr(origin, "__name__", str(origin))
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            args = args[:1]
        inner = ", ".join(type_name(a) for a in args)
        return f"{name}[{inner}]" if inner else name
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return annotation.__name__
        return {"dict": "mapping", "NoneType": "null"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _constraints(info: FieldInfo) -> list[str]:
    """Ranges and lengths the field enforces, said the way the error messages say them."""
    said: list[str] = []
    for item in info.metadata:
        for cls, attr, word in _BOUNDS:
            if isinstance(item, cls):
                said.append(f"{word} {getattr(item, attr)}")
        if isinstance(item, annotated_types.MinLen) and item.min_length > 0:
            said.append("not empty" if item.min_length == 1 else f"at least {item.min_length} long")
        if isinstance(item, annotated_types.MaxLen):
            said.append(f"at most {item.max_length} long")
    return said


def default_text(info: FieldInfo) -> str:
    """The default as YAML would write it (``null``, ``true``, ``[jsonl]``), or ``required``."""
    if info.is_required():
        return REQUIRED
    value = info.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return REQUIRED
    if isinstance(value, BaseModel):
        return "{}"  # a section left out is the section with every default, as written `{}`
    return json.dumps(value, ensure_ascii=False, default=str)


def settings_of(model: type[BaseModel]) -> list[SettingDoc]:
    """Every setting of ``model`` in declaration order; for a step kind, the base class's (``name``) last.

    A kind's own settings say what it does; the ones every step shares are read last.
    """
    shared_names = StepConfig.model_fields if issubclass(model, StepConfig) else {}
    own = [name for name in model.model_fields if name not in shared_names]
    shared = [name for name in model.model_fields if name in shared_names]
    docs = []
    for name in own + shared:
        info = model.model_fields[name]
        kind = type_name(info.annotation)
        bounds = _constraints(info)
        if bounds:
            kind += f" ({', '.join(bounds)})"
        docs.append(
            SettingDoc(
                name=info.alias or name,
                type=kind,
                default=default_text(info),
                description=" ".join((info.description or "").split()),
            )
        )
    return docs


def doc_of(model: type[Any]) -> str:
    """The class docstring, dedented; empty when the class has none of its own (not its base's)."""
    return inspect.cleandoc(model.__dict__.get("__doc__") or "")


class _ExampleDumper(yaml.SafeDumper):
    """Block style, except short lists of plain values (``models: [a, b]``), as people write pipelines."""


def _represent_list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
    flat = all(isinstance(item, (str, int, float, bool)) or item is None for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flat)


_ExampleDumper.add_representer(list, _represent_list)


def example_yaml(config: type[StepConfig]) -> str:
    """The kind's example as the step list of a pipeline file (``- kind: {settings}``)."""
    example = {config.kind: dict(config.example) if config.example else {}}
    return yaml.dump([example], Dumper=_ExampleDumper, allow_unicode=True, sort_keys=False, width=100)


def method_of(config: type[StepConfig]) -> str:
    """The method package a kind belongs to (``joydataforge.methods.vote.config`` -> ``vote``).

    A config defined outside ``joydataforge.methods`` (a plugin) is its own method, named by its kind.
    """
    parts = config.__module__.split(".")
    if len(parts) >= 3 and parts[:2] == ["joydataforge", "methods"]:
        return parts[2]
    return config.kind


def shipped(configs: Mapping[str, type[StepConfig]]) -> dict[str, type[StepConfig]]:
    """The kinds this package ships, leaving out plugins registered in this process (``@register_step``).

    The reference pages document the package, whatever a test or a user's program registered before.
    """
    return {kind: config for kind, config in configs.items() if config.__module__.startswith("joydataforge.")}


def by_method(configs: Iterable[type[StepConfig]]) -> dict[str, list[type[StepConfig]]]:
    """Kinds grouped by method package, methods and kinds in the order given."""
    groups: dict[str, list[type[StepConfig]]] = {}
    for config in configs:
        groups.setdefault(method_of(config), []).append(config)
    return groups
