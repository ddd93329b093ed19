"""What every step kind's settings share: a pydantic model that refuses what it does not know.

A step kind declares its settings as a subclass of :class:`StepConfig` (in its method's ``config.py``):
typed, ranged, every field described, defaults in the class. The config is plain data: it is what the
pipeline file validates against, what the run fingerprint, the Ray executor, ``joyforge steps show``, the
JSON Schema and the reference pages in ``docs/`` are made from. The step that runs records is built from it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from ..errors import ConfigError
from .messages import describe_errors, field_names


class StepConfig(BaseModel):
    """Base of every step kind's settings."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: ClassVar[str] = ""
    """The name of the kind in pipeline files (``- generate: {...}``)."""
    positional: ClassVar[tuple[str, ...]] = ()
    """Settings that the Python API also takes by position, in order: ``Generate("model", "zh/answer")``."""
    summary: ClassVar[str] = ""
    """One line for ``joyforge steps list``; the class docstring says the rest."""
    example: ClassVar[dict[str, Any]] = {}
    """A minimal working setting of this kind, shown by ``joyforge steps show`` and in the reference."""

    name: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "This step's name in counters, provenance (`_meta.calls[].step`) and error messages; "
            "defaults to the kind. Give two steps of one kind different names."
        ),
    )

    _written: dict[str, Any] | None = PrivateAttr(default=None)
    _step_class_path: str | None = PrivateAttr(default=None)

    @property
    def step_class_path(self) -> str | None:
        """For a plugin kind named by its class path in the pipeline file: that path (workers import it)."""
        return self._step_class_path

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, where: str) -> "StepConfig":
        """Validate ``settings`` as the user wrote them; a mistake is a :class:`ConfigError`, one line per problem."""
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{where}: the settings of a step are a mapping (got {type(settings).__name__})")
        written = copy.deepcopy(dict(settings))
        try:
            config = cls.model_validate(dict(settings))
        except ValidationError as exc:
            raise ConfigError("\n".join(describe_errors(exc, where, field_names(cls), cls))) from None
        config._written = written
        return config

    @classmethod
    def from_python(cls, args: Sequence[Any], kwargs: Mapping[str, Any], *, where: str) -> "StepConfig":
        """The Python API: positional arguments are the kind's ``positional`` settings, in order."""
        if len(args) > len(cls.positional):
            raise ConfigError(
                f"{where}: takes at most {len(cls.positional)} positional setting(s) "
                f"({', '.join(cls.positional) or 'none'}), got {len(args)}"
            )
        settings = dict(zip(cls.positional, args))
        twice = sorted(set(settings) & set(kwargs))
        if twice:
            raise ConfigError(f"{where}: {', '.join(twice)} given both by position and by name")
        settings.update(kwargs)
        return cls.from_settings(settings, where=where)

    def written(self) -> dict[str, Any]:
        """The settings as the user wrote them, defaults left out.

        The run fingerprint is made from this: a release that adds a setting with a default, or changes how
        a setting is normalised, must not make an unfinished run's folder look like another pipeline's.
        """
        if self._written is not None:
            return copy.deepcopy(self._written)
        return self.model_dump(mode="json", exclude_unset=True)

    def model_names(self) -> list[str]:
        """Named models the step calls, known from its settings alone (``joyforge validate``, the Ray executor)."""
        return []


class PromptedConfig(StepConfig):
    """Settings of a step that renders one prompt for one model."""

    positional: ClassVar[tuple[str, ...]] = ("model", "prompt")

    model: str = Field(min_length=1, description="Named model (from models.yaml) that answers.")
    prompt: str = Field(
        min_length=1,
        description=(
            "Prompt template: a built-in name (`answer`, `zh/answer`; `joyforge prompts list`) or the path of a "
            "YAML prompt file, relative to the pipeline file."
        ),
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Extra values the template reads as `options.NAME` (label sets, instructions); record fields are "
            "read from the record."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Sampling parameters for this step's calls (`temperature`, `max_tokens`, ...), over the model's own."
        ),
    )

    def model_names(self) -> list[str]:
        return [self.model]
