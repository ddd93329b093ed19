"""Step kinds by name: each kind's settings class and the step that runs it.

Built-in kinds are listed here; users add their own with ``@register_step`` or by naming the class in the
pipeline file (``- my_package.my_module.MyStep: {...}``). A pipeline holds configs (plain data); the
executors build steps from them with :func:`build_step`, on whichever machine runs the records.
"""

from __future__ import annotations

import importlib
import inspect

from ..config.base import StepConfig
from ..config.kinds import BUILTIN_CONFIGS
from ..errors import ConfigError
from ..methods.critique.step import CritiqueRevise
from ..methods.dedup.step import MinHashDedupStep
from ..methods.dialogue.step import DialogueIntent, IntentBinaryCheck
from ..methods.dpo.step import PreferencePairs
from ..methods.evol_instruct.step import EvolInstruct
from ..methods.generate.step import Generate, Label
from ..methods.joint.step import Joint
from ..methods.magpie.step import MagpieInstruction, MagpieResponse, MagpieTag
from ..methods.rewrite.step import Rewrite
from ..methods.seedless.step import Seedless
from ..methods.tool_dialogue.step import ToolDialogue
from ..methods.verify.step import Verify
from ..methods.vote.step import Cascade, Vote
from .step import Step

BUILTIN_STEPS: dict[str, type[Step]] = {
    cls.kind: cls
    for cls in (
        Generate,
        Label,
        MinHashDedupStep,
        Vote,
        Cascade,
        Joint,
        CritiqueRevise,
        EvolInstruct,
        Rewrite,
        Seedless,
        DialogueIntent,
        IntentBinaryCheck,
        MagpieInstruction,
        MagpieResponse,
        MagpieTag,
        PreferencePairs,
        ToolDialogue,
        Verify,
    )
}


def register_step(cls: type[Step]) -> type[Step]:
    """Decorator for plugins: ``@register_step`` makes the class's ``kind`` usable in pipeline files."""
    if not (inspect.isclass(cls) and issubclass(cls, Step)) or cls.Config is StepConfig:
        raise ConfigError(f"{cls!r}: a registered step needs a Config (a StepConfig subclass with a kind)")
    BUILTIN_STEPS[cls.kind] = cls
    BUILTIN_CONFIGS[cls.kind] = cls.Config
    return cls


def import_step_class(path: str, where: str) -> type[Step]:
    """A plugin step named by its dotted class path."""
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: cannot import step class '{path}': {exc}") from None
    if not (inspect.isclass(cls) and issubclass(cls, Step)):
        raise ConfigError(f"{where}: '{path}' is not a joydataforge Step")
    return cls


def step_class(kind: str, where: str = "pipeline") -> type[Step]:
    if "." in kind:
        return import_step_class(kind, where)
    try:
        return BUILTIN_STEPS[kind]
    except KeyError:
        raise ConfigError(f"{where}: unknown step kind '{kind}' (known: {', '.join(sorted(BUILTIN_STEPS))})") from None


def build_step(config: StepConfig) -> Step:
    """The step that runs ``config``: a built-in kind, or the plugin class the pipeline file named."""
    plugin = config.step_class_path
    cls = import_step_class(plugin, "pipeline") if plugin else step_class(config.kind)
    return cls(config)


def built_steps(steps: list[StepConfig | Step]) -> list[Step]:
    """The steps of a pipeline, built from their configs (steps handed in built are used as they are)."""
    return [step if isinstance(step, Step) else build_step(step) for step in steps]


def shippable_configs(steps: list[StepConfig | Step]) -> list[StepConfig]:
    """Plain data for another process to build the same steps from (the Ray executor's workers)."""
    configs = []
    for step in steps:
        if isinstance(step, StepConfig):
            configs.append(step)
            continue
        config = step.config.model_copy()
        cls = type(step)
        if BUILTIN_STEPS.get(cls.kind) is not cls and not config.step_class_path:
            config._step_class_path = f"{cls.__module__}.{cls.__qualname__}"
        configs.append(config)
    return configs
