"""The tools of one trajectory: their definitions, who answers a call, and the check every call passes.

A tool is an OpenAI definition plus, when a Python function backs it, the source of the module that defines
it (run in the sandbox, never imported here). A call is checked before anything runs: the tool exists, the
arguments are a JSON object, they match the tool's ``parameters`` schema. The first problem found is the
call's error, in words a model can act on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jsonschema import ValidationError
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for


@dataclass(frozen=True)
class Tool:
    definition: dict[str, Any]
    """``{"type": "function", "function": {"name", "description", "parameters"}}``."""
    source: str | None = None
    """The module source whose function of this name runs in the sandbox; None: the simulator plays it."""

    @property
    def name(self) -> str:
        return self.definition["function"]["name"]

    @property
    def function(self) -> dict[str, Any]:
        return self.definition["function"]

    @property
    def parameters(self) -> dict[str, Any]:
        return self.function.get("parameters") or {"type": "object"}


@dataclass
class Toolbox:
    """Tools by name, in the order the model is shown them."""

    tools: list[Tool]
    _validators: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.by_name = {tool.name: tool for tool in self.tools}

    def definitions(self) -> list[dict[str, Any]]:
        return [tool.definition for tool in self.tools]

    def check(self, name: Any, arguments: Any) -> tuple[dict[str, Any] | None, str | None]:
        """(the arguments as an object, None) for a valid call; (None, why not) for an invalid one.

        ``arguments`` may be JSON text (a server's ``tool_calls``) or already an object (a JSON-mode reply).
        """
        tool = self.by_name.get(name) if isinstance(name, str) else None
        if tool is None:
            return None, f"there is no tool named {name!r}; the tools are: {', '.join(self.by_name)}"
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError as exc:
                return None, f"the arguments of {name} are not valid JSON ({exc.msg})"
        if not isinstance(arguments, dict):
            return None, f"the arguments of {name} must be a JSON object, not {type(arguments).__name__}"
        validator = self._validators.get(name)
        if validator is None:
            schema = tool.parameters
            validator = self._validators[name] = validator_for(schema)(schema)
        error: ValidationError | None = best_match(validator.iter_errors(arguments))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path)
            return (
                None,
                f"the arguments of {name} do not match its schema{f' at {where}' if where else ''}: {error.message}",
            )
        return arguments, None
