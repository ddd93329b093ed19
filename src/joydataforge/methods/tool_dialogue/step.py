"""Tool-use trajectories: goal -> assistant turns with tool calls -> tool results -> final answer.

Per record: the goals (read from the record, or written by a model from the tools), then ``samples``
trajectories per goal, concurrently. A trajectory is a loop of at most ``max_turns`` assistant turns
(:mod:`.turns`): the calls a turn makes are checked against their tools' schemas (:mod:`.toolbox`), valid
ones are answered by the Python function in the sandbox or by the simulator model, invalid ones by their
error (or they end the trajectory), and the results go back to the model. A turn without calls is the
final answer. The trajectory is kept in OpenAI's messages; see :class:`.config.ToolDialogueConfig` for
what each output record holds.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...engine.prompted import add_call_meta, call_meta
from ...engine.step import Record, Step, StepContext
from ...errors import ConfigError, InputError, ModelError, StepError
from ...sandbox import call_function
from ...text.sanity import TextSanity
from .config import ToolDialogueConfig, normalize_tool
from .render import REASONING_KEY, continuation, trajectory_text, without_reasoning
from .signature import SignatureError, functions_in
from .toolbox import Tool, Toolbox
from .turns import Turn, json_turn, json_view, native_turn

log = logging.getLogger(__name__)

UNFINISHED = ("max_turns", "invalid_call", "too_few_calls", "empty_answer", "text_check", "model_error")


@dataclass
class Trajectory:
    """One trajectory as it grows, and what became of it."""

    messages: list[dict[str, Any]]
    sample: int
    status: str = "running"
    turns: int = 0
    tool_calls: int = 0
    invalid_calls: int = 0
    tool_errors: int = 0
    modes: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # _meta.calls entries
    error: str | None = None
    raw: str | None = None

    @property
    def answer(self) -> str | None:
        last = self.messages[-1]
        if self.status == "answered" and last.get("role") == "assistant" and not last.get("tool_calls"):
            return last.get("content")
        return None

    def summary(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "turns": self.turns,
            "tool_calls": self.tool_calls,
            "invalid_calls": self.invalid_calls,
            "tool_errors": self.tool_errors,
            "mode": "/".join(dict.fromkeys(self.modes)) or None,
            "sample": self.sample,
        }


class ToolDialogue(Step):
    """Multi-turn tool-use trajectories (``tool_dialogue`` in YAML); settings in :class:`.config.ToolDialogueConfig`."""

    Config = ToolDialogueConfig
    config: ToolDialogueConfig

    def setup(self) -> None:
        self.limits = self.config.sandbox.limits()
        self.params = dict(self.config.params)
        self.options = dict(self.config.options)
        self.sanity = TextSanity(self.config.text_checks)
        self._module_tools: dict[str, Tool] | None = None
        self._static: list[Tool] | None = None
        self._native_refused: set[str] = set()

    # --- tools -------------------------------------------------------------------------------------

    def _module_path(self, ctx: StepContext) -> Path:
        spec = self.config.tools_module or ""
        path = Path(spec).expanduser()
        if not path.is_absolute():
            for base in getattr(ctx.prompts, "search_paths", []):  # relative to the pipeline file, like prompts
                if (Path(base) / path).is_file():
                    return Path(base) / path
        if not path.is_file():
            raise ConfigError(f"step '{self.name}': tools_module: no such file: {spec}")
        return path

    def _static_tools(self, ctx: StepContext) -> list[Tool]:
        """The step's own tools: ``tools`` (a function of the module backs those it defines), then the rest of
        the module's functions. Read once; the module's source travels to the sandbox with every call."""
        if self._static is not None:
            return self._static
        given = {t["function"]["name"]: t for t in self.config.tools}
        module: dict[str, Tool] = {}
        source: str | None = None
        if self.config.tools_module:
            path = self._module_path(ctx)
            source = path.read_text("utf-8")
            try:
                found = functions_in(source, str(path), self.config.functions, known=given)
            except SignatureError as exc:
                raise ConfigError(f"step '{self.name}': tools_module: {exc}") from None
            module = {f.name: Tool(f.definition, source) for f in found}
        tools = [Tool(d, source if name in module else None) for name, d in given.items()]
        tools += [tool for name, tool in module.items() if name not in given]
        if not self.config.simulator:
            played = [t.name for t in tools if t.source is None]
            if played:
                raise ConfigError(
                    f"step '{self.name}': tools {played} have no Python function in tools_module; "
                    "name a `simulator` model to play them"
                )
        self._module_tools = module
        self._static = tools
        return tools

    def _toolbox(self, record: Record, ctx: StepContext) -> Toolbox:
        tools = list(self._static_tools(ctx))
        field_name = self.config.tools_field
        if field_name:
            given = record.get(field_name)
            if given is None:
                given = []
            if not isinstance(given, list):
                raise InputError(f"must be a list of tool schemas, not {type(given).__name__}", field=field_name)
            seen: set[str] = set()
            for k, item in enumerate(given):
                try:
                    definition = normalize_tool(item, f"item {k}")
                except ValueError as exc:
                    raise InputError(str(exc), field=field_name) from None
                name = definition["function"]["name"]
                if name in seen:
                    raise InputError(f"tool '{name}' is given twice", field=field_name)
                seen.add(name)
                module_tool = (self._module_tools or {}).get(name)
                if module_tool is None and not self.config.simulator:
                    raise InputError(
                        f"tool '{name}' has no Python function and the step has no `simulator` to play it",
                        field=field_name,
                    )
                # The record's schema replaces a step tool of the same name for this record; a function runs it.
                tools = [t for t in tools if t.name != name]
                tools.append(Tool(definition, module_tool.source if module_tool else None))
        if not tools:
            raise InputError("the record brings no tools and the step has none", field=field_name)
        return Toolbox(tools)

    def check(self, ctx: StepContext) -> None:
        super().check(ctx)
        self._static_tools(ctx)
        for ref in (self.config.prompt, self.config.results_prompt):
            self.prompt(ctx, ref)
        if self.config.generate_goals:
            self._goal_schema(ctx)
        if self.config.simulator:
            self.prompt(ctx, self.config.simulator_prompt)
        if (
            self.config.tool_calling == "native"
            and not ctx.gateway.registry.get(self.config.model).capabilities.native_tools
        ):
            raise ConfigError(
                f"step '{self.name}': model '{self.config.model}' cannot call tools natively; "
                "use tool_calling: json (or auto)"
            )

    def required_fields(self) -> set[str]:
        # The built-in prompts read options only. A goal named by goal_field must be there; the default (`goal`,
        # else `input`) is one of two and is checked per record.
        fields = {f for t in self.__dict__.get("_prompts_used", {}).values() for f in t.required_fields}
        if self.config.goal_field and not self.config.generate_goals:
            fields.add(self.config.goal_field)
        return fields

    # --- goals -------------------------------------------------------------------------------------

    def _goal_schema(self, ctx: StepContext) -> dict[str, Any]:
        template = self.prompt(ctx, self.config.goal_prompt)
        schema = copy.deepcopy(template.schema)
        goals = (schema or {}).get("properties", {}).get("goals")
        if not isinstance(goals, dict) or goals.get("type") != "array":
            raise ConfigError(f"step '{self.name}': goal_prompt needs a schema with a `goals` array of strings")
        goals["minItems"] = goals["maxItems"] = self.config.generate_goals
        return schema  # type: ignore[return-value]

    async def _goals(self, record: Record, toolbox: Toolbox, ctx: StepContext) -> tuple[list[str], list[dict]]:
        if not self.config.generate_goals:
            name = self.config.goal_field or ("goal" if "goal" in record else "input")
            goal = record.get(name)
            if not isinstance(goal, str) or not goal.strip():
                raise InputError("needs the user's goal as a non-empty string", field=name)
            return [goal.strip()], []
        model = self.config.goal_model or self.config.model
        shown = {**self.options, "tools": [t.function for t in toolbox.tools], "count": self.config.generate_goals}
        messages = self.prompt(ctx, self.config.goal_prompt).render(record, shown)
        try:
            value, completion = await ctx.model(model).chat_json(messages, self._goal_schema(ctx))
        except ModelError as exc:
            self.counters["goal_failures"] += 1
            raise StepError(f"step '{self.name}': the goals could not be written: {exc}", raw=exc.raw) from None
        goals = [str(g).strip() for g in value["goals"] if str(g).strip()]
        if not goals:
            raise StepError(f"step '{self.name}': model '{model}' wrote only empty goals", raw=completion.text)
        self.counters["goals_generated"] += len(goals)
        template = self.prompt(ctx, self.config.goal_prompt)
        return goals, [{**call_meta(self.name, model, completion, template), "role": "goals"}]

    # --- one trajectory ----------------------------------------------------------------------------

    def _mode(self, ctx: StepContext) -> str:
        wanted = self.config.tool_calling
        if wanted == "auto":
            client = ctx.model(self.config.model)
            return "native" if client.supports_tools and self.config.model not in self._native_refused else "json"
        return wanted

    async def _turn(
        self, record: Record, trajectory: Trajectory, toolbox: Toolbox, ctx: StepContext, final: bool
    ) -> Turn:
        client = ctx.model(self.config.model)
        if self._mode(ctx) == "native":
            try:
                # The model reads its earlier turns without their traces, as thinking models' chat templates do.
                messages = without_reasoning(trajectory.messages)
                return await native_turn(
                    client, messages, toolbox, final=final, sample=trajectory.sample, params=self.params
                )
            except ModelError as exc:
                if self.config.tool_calling == "native" or not _refuses_tools(exc):
                    raise
                if self.config.model not in self._native_refused:
                    self._native_refused.add(self.config.model)
                    self.counters["native_refused"] += 1
                    log.warning("model '%s' refused native tool calls (%s); asking for JSON replies", client.name, exc)
        goal_index = next(k for k, m in enumerate(trajectory.messages) if m["role"] == "user")
        shown = {
            **self.options,
            "tools": [t.function for t in toolbox.tools],
            "goal": trajectory.messages[goal_index]["content"],
            "system": next((m["content"] for m in trajectory.messages if m["role"] == "system"), None),
            "max_calls": self.config.max_calls_per_turn,
        }
        agent = self.prompt(ctx, self.config.prompt).render(record, shown)
        messages = json_view(
            trajectory.messages, agent, self.prompt(ctx, self.config.results_prompt), record, shown, final=final
        )
        return await json_turn(
            client,
            messages,
            toolbox,
            final=final,
            turn=trajectory.turns,
            sample=trajectory.sample,
            params=self.params,
            constrain=self.config.constrain_arguments,
            max_calls=self.config.max_calls_per_turn,
        )

    async def _answer_call(
        self,
        record: Record,
        call: dict[str, Any],
        toolbox: Toolbox,
        goal: str,
        ctx: StepContext,
        trajectory: Trajectory,
    ) -> str:
        """The content of the ``tool`` message that answers ``call``: the result, or an error as JSON."""
        arguments, problem = toolbox.check(call["name"], call["arguments"])
        if problem is not None:
            trajectory.invalid_calls += 1
            self.counters["invalid_calls"] += 1
            return json.dumps({"error": problem}, ensure_ascii=False)
        assert arguments is not None
        trajectory.tool_calls += 1
        self.counters["tool_calls"] += 1
        tool = toolbox.by_name[call["name"]]
        if tool.source is not None:
            result = await call_function(tool.source, tool.name, arguments, limits=self.limits)
            self.counters[f"sandbox:{result.verdict}"] += 1
            if result.verdict != "ok":
                trajectory.tool_errors += 1
                self.counters["tool_errors"] += 1
                return json.dumps({"error": result.reason or result.verdict}, ensure_ascii=False)
            value = result.value
        else:
            value = await self._simulate(record, tool, arguments, goal, ctx, trajectory)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    async def _simulate(
        self, record: Record, tool: Tool, arguments: dict[str, Any], goal: str, ctx: StepContext, trajectory: Trajectory
    ) -> Any:
        model = self.config.simulator
        assert model is not None
        shown = {**self.options, "tool": tool.function, "arguments": arguments, "goal": goal}
        messages = self.prompt(ctx, self.config.simulator_prompt).render(record, shown)
        self.counters["simulated_calls"] += 1
        try:
            value, completion = await ctx.model(model).chat_json(messages, {"type": "object"})
        except ModelError as exc:
            trajectory.tool_errors += 1
            self.counters["tool_errors"] += 1
            return {"error": f"the tool did not answer ({_short(str(exc))})"}
        template = self.prompt(ctx, self.config.simulator_prompt)
        trajectory.calls.append({**call_meta(self.name, model, completion, template), "role": f"tool:{tool.name}"})
        return value

    async def _trajectory(
        self, record: Record, goal: str, sample: int, toolbox: Toolbox, ctx: StepContext
    ) -> Trajectory:
        system = self.config.system if self.config.system is not None else record.get("system")
        messages: list[dict[str, Any]] = (
            [{"role": "system", "content": system}] if isinstance(system, str) and system else []
        )
        messages.append({"role": "user", "content": goal})
        trajectory = Trajectory(messages, sample)
        max_turns = self.config.max_turns
        while trajectory.turns < max_turns:
            final = trajectory.turns == max_turns - 1
            try:
                turn = await self._turn(record, trajectory, toolbox, ctx, final)
            except ModelError as exc:
                trajectory.status, trajectory.error, trajectory.raw = "model_error", str(exc), exc.raw
                return trajectory
            trajectory.turns += 1
            trajectory.modes.append(turn.mode)
            self.counters[f"turns:{turn.mode}"] += 1
            # A JSON turn was asked with the agent prompt; a native turn reads the trajectory itself.
            template = self.prompt(ctx, self.config.prompt) if turn.mode == "json" else None
            if turn.completion is not None:
                role = f"assistant#{trajectory.turns}"
                meta = call_meta(self.name, self.config.model, turn.completion, template)
                trajectory.calls.append({**meta, "role": role})
            trace = turn.completion.reasoning if turn.completion is not None else None
            kept = {REASONING_KEY: trace} if self.config.keep_reasoning and trace else {}
            if not turn.calls:
                trajectory.messages.append({"role": "assistant", "content": turn.text, **kept})
                trajectory.status = "answered" if turn.text else "empty_answer"
                if trajectory.status == "answered":
                    self._check_answer(trajectory, turn.text, template)
                if trajectory.status == "answered" and trajectory.tool_calls < self.config.min_tool_calls:
                    trajectory.status = "too_few_calls"
                return trajectory
            if final:  # a server that ignored tool_choice "none": no turn is left to use the results
                trajectory.status = "max_turns"
                return trajectory
            calls = turn.calls[: self.config.max_calls_per_turn]
            trajectory.messages.append(
                {
                    "role": "assistant",
                    "content": turn.text or None,
                    **kept,
                    "tool_calls": [
                        {
                            "id": c["id"],
                            "type": "function",
                            "function": {"name": c["name"], "arguments": _text(c["arguments"])},
                        }
                        for c in calls
                    ],
                }
            )
            contents = await asyncio.gather(
                *(self._answer_call(record, c, toolbox, goal, ctx, trajectory) for c in calls)
            )
            for call, content in zip(calls, contents):
                trajectory.messages.append({"role": "tool", "tool_call_id": call["id"], "content": content})
            if trajectory.invalid_calls and self.config.invalid_calls == "end":
                trajectory.status = "invalid_call"
                return trajectory
        trajectory.status = "max_turns"
        return trajectory

    def _check_answer(self, trajectory: Trajectory, answer: str, template: Any) -> None:
        """The final answer against the ``text_checks`` (the scaffolding rule also against the agent prompt's
        labels in JSON mode); one that fails leaves the trajectory unfinished (``text_check``)."""
        problem = self.sanity.problem(answer, template)
        if problem is not None:
            self.counters[problem.counter] += 1
            trajectory.status = "text_check"
            trajectory.error = f"the final answer fails the text check {problem}"

    # --- records -----------------------------------------------------------------------------------

    async def run(self, record: Record, ctx: StepContext) -> list[Record]:
        toolbox = self._toolbox(record, ctx)
        goals, goal_calls = await self._goals(record, toolbox, ctx)
        jobs = [(goal, sample) for goal in goals for sample in range(self.config.samples)]
        done = await asyncio.gather(*(self._trajectory(record, g, s, toolbox, ctx) for g, s in jobs))
        for trajectory in done:
            self.counters["trajectories"] += 1
            self.counters[f"status:{trajectory.status}"] += 1
        outputs: list[Record] = []
        if self.config.candidates_field:
            for g, goal in enumerate(goals):
                group = done[g * self.config.samples : (g + 1) * self.config.samples]
                outputs.append(self._candidates_record(record, goal, group, toolbox, goal_calls if g == 0 else []))
            return outputs
        failed = [t for t in done if t.status != "answered"]
        if failed and not self.config.keep_unfinished and len(failed) == len(done):
            first = failed[0]
            raise StepError(
                f"step '{self.name}': no trajectory finished ({', '.join(sorted({t.status for t in failed}))}): "
                f"{first.error or _unfinished_reason(first)}",
                raw=first.raw or json.dumps(first.messages, ensure_ascii=False)[:20000],
            )
        for k, trajectory in enumerate(done):
            if trajectory.status != "answered" and not self.config.keep_unfinished:
                self.counters["dropped_unfinished"] += 1
                continue
            out = dict(record)
            goal = goals[k // self.config.samples]
            out.update(
                input=goal,
                tools=toolbox.definitions(),
                answer=trajectory.answer,
                trajectory_text=trajectory_text(trajectory.messages),
                tool_dialogue=trajectory.summary(),
            )
            out[self.config.output_field] = trajectory.messages
            for meta in (goal_calls if not outputs else []) + trajectory.calls:
                add_call_meta(out, meta)
            outputs.append(out)
        return outputs

    def _candidates_record(
        self, record: Record, goal: str, group: list[Trajectory], toolbox: Toolbox, goal_calls: list[dict]
    ) -> Record:
        candidates = []
        for trajectory in group:
            candidate: dict[str, Any] = {
                "text": trajectory_text(continuation(trajectory.messages)),
                "messages": continuation(trajectory.messages),
                **trajectory.summary(),
            }
            if trajectory.status != "answered":
                candidate["error"] = trajectory.error or _unfinished_reason(trajectory)
            candidates.append(candidate)
        out = dict(record)
        out.update(input=goal, tools=toolbox.definitions())
        system = next((m["content"] for m in group[0].messages if m["role"] == "system"), None)
        if system is not None:
            out["system"] = system
        out[self.config.candidates_field or "trajectory_candidates"] = candidates
        for meta in goal_calls + [m for t in group for m in t.calls]:
            add_call_meta(out, meta)
        return out


def _text(arguments: Any) -> str:
    """Arguments as OpenAI keeps them: JSON text."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _unfinished_reason(trajectory: Trajectory) -> str:
    return {
        "max_turns": "no final answer within max_turns",
        "invalid_call": "an invalid tool call ended it (invalid_calls: end)",
        "too_few_calls": "the model answered with fewer tool calls than min_tool_calls",
        "empty_answer": "the final answer was empty",
        "text_check": "the final answer failed a text check",
    }.get(trajectory.status, trajectory.status)


def _refuses_tools(exc: ModelError) -> bool:
    """A server's "no tools here" (llama.cpp without --jinja, vLLM without tool parsers), not a passing fault."""
    status = getattr(exc, "status", None)
    return status in (400, 404, 422, 500, 501) and "tool" in str(exc).lower() and not exc.retryable


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
