"""Step kinds by name, as written in pipeline YAML; users add their own with ``class: package.module.Class``."""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from ..errors import ConfigError
from .base import Step
from .dedup import MinHashDedupStep
from .single import Generate, Label
from .rewrite import Rewrite
from .seedless import Seedless
from .dialogue import DialogueIntent, IntentBinaryCheck
from .vote import Cascade, Vote
from .joint import Joint
from .critique import CritiqueRevise
from .evol_instruct import EvolInstruct
from .magpie import MagpieInstruction, MagpieResponse, MagpieTag
from .dpo import PreferencePairs

BUILTIN_STEPS: dict[str, type[Step]] = {cls.kind: cls for cls in (Generate, Label, MinHashDedupStep, Vote, Cascade,
                                                                   Joint, CritiqueRevise, EvolInstruct,
                                                                   Rewrite, Seedless, DialogueIntent, IntentBinaryCheck,
                                                                   MagpieInstruction, MagpieResponse, MagpieTag,
                                                                   PreferencePairs)}


def register_step(cls: type[Step]) -> type[Step]:
    """Decorator for plugins: ``@register_step`` makes ``kind`` usable in YAML."""
    BUILTIN_STEPS[cls.kind] = cls
    return cls


def step_class(kind: str, where: str) -> type[Step]:
    if "." in kind:
        module_name, _, class_name = kind.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{where}: cannot import step class '{kind}': {exc}") from None
        if not (inspect.isclass(cls) and issubclass(cls, Step)):
            raise ConfigError(f"{where}: '{kind}' is not a joydataforge Step")
        return cls
    try:
        return BUILTIN_STEPS[kind]
    except KeyError:
        raise ConfigError(f"{where}: unknown step kind '{kind}' (known: {', '.join(sorted(BUILTIN_STEPS))})") from None


def build_step(kind: str, settings: dict[str, Any], where: str) -> Step:
    cls = step_class(kind, where)
    signature = inspect.signature(cls.__init__)
    accepted = {p for p in signature.parameters if p != "self"}
    unknown = set(settings) - accepted
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        raise ConfigError(f"{where}: unknown setting(s) {sorted(unknown)} for step '{kind}' "
                          f"(accepted: {', '.join(sorted(accepted))})")
    try:
        return cls(**settings)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
