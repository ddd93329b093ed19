"""PLACEHOLDER: to be completed (settings of this method)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import ConfigDict

from ...config.base import StepConfig


class PreferencePairsConfig(StepConfig):
    model_config = ConfigDict(extra="allow")  # PLACEHOLDER
    kind: ClassVar[str] = "dpo"
