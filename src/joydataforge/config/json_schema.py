"""A JSON Schema of the pipeline file, made from the configs, for editors (``joyforge schema``).

An editor given this schema (VS Code's YAML extension: ``# yaml-language-server: $schema=pipeline.schema.json``)
completes step kinds and settings, shows each setting's description and flags an unknown setting as it is
typed. The schema is made from the same pydantic models the pipeline validates against, so it cannot drift;
cross-field rules (a quorum above the voters' weight) are only checked by ``joyforge validate``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from .base import StepConfig
from .kinds import BUILTIN_CONFIGS
from .pipeline import InputConfig, OutputConfig, Pipeline, RunConfig

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# A plugin step is named by its class path (``my_package.module.MyStep``); its settings are unknown here.
PLUGIN_KIND = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"

_SECTIONS: dict[str, type[BaseModel]] = {"input": InputConfig, "output": OutputConfig, "run": RunConfig}


class _Lenient(GenerateJsonSchema):
    """A setting whose Python type has no JSON form (a callable in a plugin's config) accepts anything,
    rather than making the whole schema impossible to produce."""

    def handle_invalid_for_json_schema(self, schema: core_schema.CoreSchema, error_info: str) -> JsonSchemaValue:
        return {}


def _short_form(kind: str, ref: str, settings_optional: bool) -> dict[str, Any]:
    """``- generate: {model: m}``: one key, the kind, holding the settings (or nothing, when none is required)."""
    value: dict[str, Any] = {"$ref": ref}
    if settings_optional:
        value = {"anyOf": [value, {"type": "null"}]}
    return {
        "type": "object",
        "title": f"{kind} (short form)",
        "properties": {kind: value},
        "required": [kind],
        "additionalProperties": False,
    }


def _long_form(kind: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``- {kind: generate, model: m}``: the kind beside the settings, in one mapping."""
    form = copy.deepcopy(dict(settings))
    form["title"] = f"{kind} (long form)"
    form["properties"] = {"kind": {"const": kind, "description": "The step kind."}, **form.get("properties", {})}
    form["required"] = ["kind", *form.get("required", [])]
    form["additionalProperties"] = False
    return form


def _plugin_forms() -> list[dict[str, Any]]:
    """A step class named by its dotted path: its settings are known only once it is imported."""
    settings = {
        "type": ["object", "null"],
        "description": "Settings of a plugin step (checked by `joyforge validate`).",
    }
    return [
        {
            "type": "object",
            "title": "plugin step (short form)",
            "patternProperties": {PLUGIN_KIND: settings},
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
        },
        {
            "type": "object",
            "title": "plugin step (long form)",
            "required": ["kind"],
            "properties": {"kind": {"type": "string", "pattern": PLUGIN_KIND}},
        },
    ]


def _described(schema: dict[str, Any], model: type[BaseModel], field: str) -> dict[str, Any]:
    description = model.model_fields[field].description
    return {**schema, "description": " ".join(description.split())} if description else schema


def pipeline_schema(configs: Mapping[str, type[StepConfig]] | None = None) -> dict[str, Any]:
    """The schema of a whole pipeline file: input, steps (every kind, short and long form), output, run, models."""
    configs = dict(BUILTIN_CONFIGS if configs is None else configs)
    members: list[tuple[type[BaseModel], str]] = [(cls, "validation") for cls in configs.values()]
    members += [(cls, "validation") for cls in _SECTIONS.values()]
    refs, top = models_json_schema(members, by_alias=True, schema_generator=_Lenient)
    defs: dict[str, Any] = top.get("$defs", {})

    def ref_of(cls: type[BaseModel]) -> str:
        return refs[(cls, "validation")]["$ref"]

    forms: list[dict[str, Any]] = []
    for kind, cls in configs.items():
        ref = ref_of(cls)
        settings = defs[ref.rsplit("/", 1)[-1]]
        forms.append(_short_form(kind, ref, settings_optional=not settings.get("required")))
        forms.append(_long_form(kind, settings))
    forms.extend(_plugin_forms())

    properties: dict[str, Any] = {
        "name": _described({"type": "string"}, Pipeline, "name"),
        "input": _described({"$ref": ref_of(InputConfig)}, Pipeline, "input"),
        "steps": _described({"type": "array", "minItems": 1, "items": {"oneOf": forms}}, Pipeline, "steps"),
        "output": _described({"$ref": ref_of(OutputConfig)}, Pipeline, "output"),
        "run": _described({"$ref": ref_of(RunConfig)}, Pipeline, "run"),
        "models": _described({"type": ["string", "null"]}, Pipeline, "models"),
    }
    return {
        "$schema": DIALECT,
        "title": "JoyDataForge pipeline",
        "description": "A pipeline file: where records come from (input), the steps they pass through, where "
        "results go (output), how the run behaves (run). `joyforge steps show KIND` describes a kind.",
        "type": "object",
        "properties": properties,
        "required": ["input", "steps"],
        "additionalProperties": False,
        "$defs": defs,
    }
