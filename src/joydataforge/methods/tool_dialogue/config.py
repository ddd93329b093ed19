"""Settings of ``tool_dialogue``: the tools, where goals come from, how the model calls, who answers the calls."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import Field, StrictInt, field_validator, model_validator

from ...config.base import StepConfig
from ...config.messages import SettingError
from ...config.reasoning import keep_reasoning_field
from ...config.text_checks import TextChecks, text_checks_field
from ...sandbox.config import SandboxSettings

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def normalize_tool(tool: Any, where: str) -> dict[str, Any]:
    """One tool in OpenAI's shape ``{"type": "function", "function": {name, description, parameters}}``.

    A bare function object (``{name, description, parameters}``, LLaMA-Factory's and Glaive's shape) is
    wrapped; a missing ``parameters`` is a tool without arguments. Raises ``ValueError`` naming ``where``.
    """
    if not isinstance(tool, dict):
        raise ValueError(f"{where}: a tool is a mapping, not {type(tool).__name__}")
    function = tool.get("function") if tool.get("type") == "function" else tool
    if not isinstance(function, dict):
        raise ValueError(f"{where}: `function` must be a mapping")
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise ValueError(f"{where}: a tool needs a `name` of letters, digits, _ or - (1 to 64), got {name!r}")
    unknown = sorted(set(function) - {"name", "description", "parameters", "strict"})
    if unknown:
        raise ValueError(f"{where}: tool '{name}' has unknown keys {unknown}")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise ValueError(f"{where}: tool '{name}': `parameters` must be a JSON Schema of type object")
    try:
        validator_for(parameters).check_schema(parameters)
    except SchemaError as exc:
        raise ValueError(f"{where}: tool '{name}': `parameters` is not a valid JSON Schema: {exc.message}") from None
    described = {"name": name, "description": str(function.get("description") or ""), "parameters": parameters}
    return {"type": "function", "function": described}


class ToolDialogueConfig(StepConfig):
    """Multi-turn tool-use trajectories: a user goal, the model's tool calls, the tools' results, a final answer.

    Tools are OpenAI ``tools`` schemas (``tools``, or a record's own in ``tools_field``) and/or the public
    functions of a Python file (``tools_module``), whose schemas are read from their signatures and
    docstrings. A call to a Python function runs it for real in the sandbox (a subprocess with time, memory,
    file-system and network limits: docs/sandbox.md); a tool without a function is played by the
    ``simulator`` model. Every call is validated against its tool's schema; an invalid one is answered with
    the error (``invalid_calls: feedback``) or ends the trajectory (``end``), and counted.

    The model calls tools natively (OpenAI's ``tools``/``tool_calls``) where its backend takes them
    (``tool_calling: auto``), else it answers each turn with JSON checked against a schema built from the
    tools: ``{"tool_calls": [{"name", "arguments"}]}`` or ``{"answer": ...}`` (grammar-constrained on the
    embedded model). On the last of ``max_turns`` turns it must answer.

    Each trajectory becomes a record: ``input`` (the goal), ``messages`` (OpenAI messages: user, assistant with
    ``tool_calls``, ``tool`` results with their ``tool_call_id``, the final assistant answer), ``tools``,
    ``answer``, ``trajectory_text`` (the trajectory as plain text, for judges: ``vote``, ``dpo``) and
    ``tool_dialogue`` (status, turns, calls, invalid calls, tool errors, mode). A thinking model's trace of
    each assistant turn is that message's ``reasoning_content`` (``keep_reasoning``); the model is never shown
    the traces of earlier turns. The final answer must pass the ``text_checks``. With ``candidates_field`` the
    ``samples`` trajectories of one goal go into that field of one record instead, as candidates ``dpo``
    scores and pairs (chosen and rejected are then whole trajectories).
    """

    kind: ClassVar[str] = "tool_dialogue"
    positional: ClassVar[tuple[str, ...]] = ("model",)
    summary: ClassVar[str] = (
        "multi-turn tool-use trajectories: tool calls validated against their schemas, Python tools run in a "
        "sandbox or played by a model, OpenAI messages out"
    )
    example: ClassVar[dict[str, Any]] = {
        "model": "smollm2",
        "tools_module": "tools_weather.py",
        "max_turns": 3,
    }

    model: str = Field(min_length=1, description="Named model (from models.yaml) that plays the assistant.")
    tools: list[dict[str, Any]] = Field(
        default_factory=list,
        description=(
            "Tool schemas in OpenAI's shape (`{type: function, function: {name, description, parameters}}`, or the "
            "bare function object). A tool also defined in `tools_module` runs that function (this schema wins); "
            "the others are played by `simulator`."
        ),
    )
    tools_module: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "A Python file (relative to the pipeline file) whose public functions are tools: schemas from their "
            "signatures and docstrings, calls run in the sandbox. The file is never imported by the pipeline."
        ),
    )
    functions: list[str] | None = Field(
        default=None,
        min_length=1,
        description="The functions of `tools_module` offered as tools, in this order; unset: every public one.",
    )
    tools_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Record field with the record's own tool schemas (a list, same shapes as `tools`), offered besides "
            "the step's tools (replacing a step tool of the same name); played by `simulator` unless "
            "`tools_module` defines them."
        ),
    )
    goal_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Record field with the user's goal; unset: `goal`, else `input`. Ignored when goals are generated "
            "(`generate_goals`)."
        ),
    )
    generate_goals: StrictInt = Field(
        default=0,
        ge=0,
        le=50,
        description=(
            "Goals the model writes per record from the tools (with `goal_prompt`); 0 reads the goal from the record."
        ),
    )
    goal_model: str | None = Field(
        default=None, min_length=1, description="Named model that writes the goals; defaults to `model`."
    )
    goal_prompt: str = Field(
        default="tool_goal",
        min_length=1,
        description="Prompt that writes goals (`tool_goal`, `zh/tool_goal`, or a YAML file with a `goals` schema).",
    )
    simulator: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Named model that plays the tools without a Python function: it answers each call with a JSON result."
        ),
    )
    simulator_prompt: str = Field(
        default="tool_simulator",
        min_length=1,
        description="Prompt of the simulated tools (`tool_simulator`, `zh/tool_simulator`, or a YAML file).",
    )
    prompt: str = Field(
        default="tool_agent",
        min_length=1,
        description=(
            "Prompt of the assistant in JSON mode (`tool_agent`, `zh/tool_agent`): its system part lists the tools "
            "and the reply format, its user part is the goal. Natively calling models see the trajectory only."
        ),
    )
    results_prompt: str = Field(
        default="tool_results",
        min_length=1,
        description="JSON mode: how tool results are shown to the model (`tool_results`, `zh/tool_results`).",
    )
    system: str | None = Field(
        default=None,
        description=(
            "System message of the trajectory (kept in `messages`); unset: the record's `system` field, if any."
        ),
    )
    tool_calling: Literal["auto", "native", "json"] = Field(
        default="auto",
        description=(
            "`native`: OpenAI's `tools`/`tool_calls` (servers that take them); `json`: a JSON reply checked against "
            "a schema (any backend, grammar-constrained on the embedded one); `auto`: native where the backend "
            "takes tools, JSON elsewhere and after a server refuses them."
        ),
    )
    constrain_arguments: bool = Field(
        default=True,
        description=(
            "JSON mode: the reply schema holds every tool's parameters, so a grammar-constrained model writes only "
            "valid calls; false lets arguments be any object (invalid calls then happen and are counted)."
        ),
    )
    max_turns: StrictInt = Field(
        default=4,
        ge=1,
        le=32,
        description=("Assistant turns (model calls) per trajectory; on the last one the model must answer."),
    )
    max_calls_per_turn: StrictInt = Field(
        default=4, ge=1, le=16, description="Tool calls one assistant turn may make (parallel calls)."
    )
    min_tool_calls: StrictInt = Field(
        default=1,
        ge=0,
        description=(
            "Valid tool calls a finished trajectory needs; one with fewer is unfinished (`too_few_calls`). 0 keeps "
            "trajectories where the model answered without tools."
        ),
    )
    invalid_calls: Literal["feedback", "end"] = Field(
        default="feedback",
        description=(
            "A call that names no tool or breaks its schema: `feedback` answers it with the error and goes on; "
            "`end` ends the trajectory (`invalid_call`)."
        ),
    )
    samples: StrictInt = Field(
        default=1, ge=1, le=16, description="Trajectories per goal (distinct samples of the assistant)."
    )
    candidates_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Write the `samples` trajectories of a goal into this field of one record, as candidates for `dpo` "
            "(`{text, messages, status, ...}`); unset: one record per trajectory."
        ),
    )
    keep_unfinished: bool = Field(
        default=False,
        description=(
            "Write trajectories without a usable final answer (status `max_turns`, `invalid_call`, `too_few_calls`, "
            "`text_check`) "
            "instead of failing them; as candidates they are kept with an `error` and never scored."
        ),
    )
    output_field: str = Field(default="messages", min_length=1, description="Field of the trajectory's messages.")
    text_checks: TextChecks = text_checks_field(
        "the final answer of each trajectory (tool calls are checked against their schemas instead, tool results are "
        "data); a trajectory whose answer fails one is unfinished (status `text_check`)"
    )
    keep_reasoning: bool = keep_reasoning_field(
        "each assistant message's `reasoning_content` (the trace of that turn, as vLLM and DeepSeek send it; "
        "exports write it only with `--reasoning`)"
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Sampling parameters of the assistant's calls, over the model's own."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Extra values the prompts read as `options.NAME`."
    )
    sandbox: SandboxSettings = Field(
        default_factory=SandboxSettings,
        description=(
            "Limits of the subprocess that runs each Python tool call, a mapping of: `timeout_s` (default 10), "
            "`memory_mb` (512), `max_processes` (1: no fork), `max_output_bytes` (1000000), `network` (false), "
            "`writable_dir` (true), `site_packages` (false: stdlib only); see docs/sandbox.md."
        ),
    )

    @field_validator("tools")
    @classmethod
    def _tools(cls, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        normalized = [normalize_tool(tool, f"tools[{k}]") for k, tool in enumerate(tools)]
        names = [t["function"]["name"] for t in normalized]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"tool names must be unique, {twice} given twice")
        return normalized

    @model_validator(mode="after")
    def _consistent(self) -> "ToolDialogueConfig":
        if not self.tools and not self.tools_module and not self.tools_field:
            raise SettingError("tools", "no tools: give `tools`, `tools_module` and/or `tools_field`")
        if self.functions is not None and not self.tools_module:
            raise SettingError("functions", "names functions of `tools_module`, which is not set")
        if self.goal_model and not self.generate_goals:
            raise SettingError("goal_model", "writes goals only when `generate_goals` is above 0")
        return self

    def model_names(self) -> list[str]:
        names = [self.model]
        if self.generate_goals:
            names.append(self.goal_model or self.model)
        if self.simulator:
            names.append(self.simulator)
        return list(dict.fromkeys(names))
