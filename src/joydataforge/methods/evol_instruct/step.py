"""Evol-Instruct ("Wizard"): evolve each query over rounds into harder and rarer ones, judged and weeded.

One input record is the root of a tree. Each round samples up to ``sample_size`` instructions from the
pool (seeded per record), evolves each with every configured operation (in-depth: the WizardLM
operations and the seed's "change direction or scope"; in-breadth: rarer siblings), eliminates the
children the paper eliminates (no information gain, leaked prompt words, unanswerable, near-duplicate
of an instruction already in the tree), judges the rest on the seed's scale (``valid`` -2/-1/1,
difficulty ``score`` 0-100), and carries the top ``top_fraction`` of the valid children into the next
round's pool. All independent model calls of a round run concurrently; the gateway keeps each model
within its limits.

What the seed did differently, on purpose: it asked for the share to carry *before* dropping invalid
children, took the first *character* of a string ``task_label``, crashed a whole record on one
non-numeric score, judged nothing against the parent, and made its calls one after another. Here the
share is computed after filtering (at least one if any child is valid), a string label is one label,
a judging failure is retried with a new sample and then recorded as an elimination, and every
eliminated child is kept in the output with its reason.

Outputs (``output``): ``nested`` is the seed's shape, the input record plus ``wizard_llm_querys`` (one
entry per round with ``l_depth_instructions`` and ``l_breadth_instructions``: ``instruction``,
``task_label``, ``score``, ``valid``, ``pre_query``, plus lineage) and ``wizard_root``; ``flat`` fans
out one record per kept instruction, ``input`` (+ ``target`` when answered) and ``evol`` lineage, ready
for :mod:`joydataforge.io.exports`.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import Any

from ...engine.prompted import call_meta
from ...engine.step import Record, Step, StepContext, source_id_of
from ...errors import ConfigError, InputError, ModelError, StepError
from ...prompts.renderer import PromptTemplate
from ...records import normalize_history
from ...text.sanity import TextSanity
from ..verify.verifier import Verifier
from .config import EvolInstructConfig
from .operations import (
    DEFAULT_LEAK_PHRASES,
    OPERATIONS,
    JudgingError,
    Operation,
    TreeIndex,
    content_words,
    copied_from_prompt,
    is_unanswerable,
    leaked_phrase,
    parse_judgement,
    parse_verdict,
    select_top,
)


def labels_of(value: Any, where: str = "task_label") -> list[str]:
    """A record's ``task_label`` as a list: a string is ONE label (never its characters); None is none."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v for v in value if v.strip()]
    raise InputError(f"task_label must be a string or a list of strings, not {type(value).__name__}", field=where)


def root_instruction(record: Record) -> tuple[str, str]:
    """``(text, field)``: ``rewrite_query`` when it holds text (a self-contained rewrite), else ``input``."""
    for name in ("rewrite_query", "input"):
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip(), name
    raise InputError(
        "the record has no text to evolve: 'rewrite_query' and 'input' are missing or empty", field="input"
    )


@dataclass
class Node:
    """One instruction of the tree: the root or an evolved child, with what happened to it."""

    id: str
    instruction: str
    task_label: Any
    round: int
    operation: str
    kind: str
    parent: "Node | None" = None
    valid: int | None = None
    score: int | None = None
    answer: str | None = None
    answer_reasoning: str | None = None  # the answering model's trace, when kept (keep_reasoning)
    eliminated: str | None = None
    detail: str | None = None
    raw: str | None = None
    selected: bool = False
    verified: dict[str, Any] | None = None  # the verify check's verdict on the answer, when one ran
    calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_text: str = ""  # the evolving prompt minus the parent's own text, for the copy check (not output)

    def eliminate(self, reason: str, detail: str | None = None, raw: str | None = None) -> None:
        self.eliminated, self.detail, self.raw = reason, detail, raw

    def lineage(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent_id": self.parent.id if self.parent else None,
            "round": self.round,
            "operation": self.operation,
            "kind": self.kind,
        }

    def as_candidate(self) -> dict[str, Any]:
        """The seed's candidate shape, plus lineage (and the answer when there is one)."""
        out = {
            "instruction": self.instruction,
            "task_label": self.task_label,
            "score": self.score,
            "valid": self.valid,
            "pre_query": self.parent.instruction if self.parent else None,
            **self.lineage(),
            "selected": self.selected,
        }
        if self.answer is not None:
            out["answer"] = self.answer
        if self.answer_reasoning:
            out["answer_reasoning"] = self.answer_reasoning
        if self.verified is not None:
            out["verified"] = self.verified
        return out

    def as_eliminated(self) -> dict[str, Any]:
        out = {
            "instruction": self.instruction,
            "task_label": self.task_label,
            "pre_query": self.parent.instruction if self.parent else None,
            **self.lineage(),
            "eliminated": self.eliminated,
            "detail": self.detail,
        }
        if self.raw is not None:
            out["raw"] = self.raw
        if self.answer is not None:
            out["answer"] = self.answer
        if self.answer_reasoning:
            out["answer_reasoning"] = self.answer_reasoning
        if self.verified is not None:
            out["verified"] = self.verified
        return out


class EvolInstruct(Step):
    """Evol-Instruct over ``rounds`` rounds; see the module docstring and :class:`.config.EvolInstructConfig`.

    A record is one tree: its root joins a :class:`TreeIndex` (the duplicate rule's memory), every round's
    calls run concurrently, and the rules that need no model run first, in generation order, so the
    outcome never depends on which call finished first.
    """

    Config = EvolInstructConfig
    config: EvolInstructConfig

    def setup(self) -> None:
        config = self.config
        self.model = config.model
        self.judge_model = config.judge_model_name()
        self.equal_model = config.equal_model_name()
        self.answer_model = config.answer_model
        self.language = config.language
        self.domain = config.domain
        self.rounds = config.rounds
        self.sample_size = config.sample_size
        self.operations: list[Operation] = [OPERATIONS[name] for name in dict.fromkeys(config.operations)]
        self.children = config.children_per_operation()
        self.top_fraction = config.top_fraction
        self.rules = set(config.eliminate)
        self.duplicate_threshold = config.duplicate_threshold
        self.refusal_max_words = config.refusal_max_words
        self.leak_phrases = tuple(DEFAULT_LEAK_PHRASES) + tuple(config.leak_phrases)
        self.sanity = TextSanity(config.text_checks)
        self.judge_root = config.judge_root
        self.judge_retries = config.judge_retries
        self.use_history = config.use_history
        self.output = config.output
        self.output_field = config.output_field
        self.prompt_refs = config.prompt_refs()
        self.params = dict(config.params)
        self.judge_params = dict(config.judge_params)
        self.answer_params = dict(config.answer_params)
        self.options = dict(config.options)
        self._templates: dict[str, PromptTemplate] = {}
        self.verifier = Verifier(config.verify, from_record=False) if config.verify is not None else None
        self.verify_samples = config.verify.samples if config.verify is not None else 1
        self._schemas: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------ set-up

    def _roles(self) -> list[str]:
        roles = sorted({self._role_of(op) for op in self.operations}) + ["judge"]
        if "equal" in self.rules:
            roles.append("equal")
        if self.answer_model:
            roles.append("answer")
        return roles

    def template(self, ctx: StepContext, role: str) -> PromptTemplate:
        if role not in self._templates:
            self._templates[role] = ctx.prompts.get(self.prompt_refs[role])
        return self._templates[role]

    def evolve_schema(self, ctx: StepContext, op: Operation) -> dict[str, Any]:
        """The evolving prompt's schema with the list capped at this operation's child count."""
        if op.name not in self._schemas:
            role = self._role_of(op)
            schema = copy.deepcopy(self.template(ctx, role).schema)
            items = (schema or {}).get("properties", {}).get("instructions")
            if not isinstance(items, dict) or items.get("type") != "array":
                raise ConfigError(
                    f"step '{self.name}': prompt '{self.prompt_refs[role]}' needs a schema with an "
                    "'instructions' array (of strings, or of objects with 'instruction')"
                )
            items["minItems"] = 1
            items["maxItems"] = self.children[op.name]
            self._schemas[op.name] = schema
        return self._schemas[op.name]

    @staticmethod
    def _role_of(op: Operation) -> str:
        return "breadth" if op.kind == "breadth" else op.prompt.removeprefix("evol_")

    def check(self, ctx: StepContext) -> None:
        super().check(ctx)
        for role in self._roles():
            template = self.template(ctx, role)
            if role in ("judge", "equal") and template.schema is None:
                raise ConfigError(f"step '{self.name}': prompt '{self.prompt_refs[role]}' needs a JSON schema")
        for op in self.operations:
            self.evolve_schema(ctx, op)

    # ------------------------------------------------------------ the run

    async def run(self, record: Record, ctx: StepContext) -> list[Record] | Record | None:
        text, _ = root_instruction(record)
        root_id = source_id_of(record)
        root = Node(root_id, text, record.get("task_label"), 0, "root", "root")
        labels_of(root.task_label)  # a bad task_label fails here, naming the field
        rng = ctx.rng(root_id, self.name)
        tree = TreeIndex(self.duplicate_threshold)
        tree.add(root.id, root.instruction)
        calls: list[dict[str, Any]] = []
        if self.judge_root:
            await self._judge(root, ctx)
            calls.extend(root.calls)
        pool, rounds_out, kept = [root], [], []
        for round_no in range(1, self.rounds + 1):
            parents = rng.sample(pool, min(self.sample_size, len(pool)))
            entry, children, carried = await self._round(round_no, root_id, parents, record, tree, ctx, calls)
            rounds_out.append(entry)
            kept.extend(c for c in children if c.eliminated is None and c.valid == 1)
            pool = carried
            if not pool:
                self.counters["stopped_no_valid_child"] += 1
                break
        errors_total = sum(len(r["errors"]) for r in rounds_out)
        if errors_total and not any(
            r["l_depth_instructions"] or r["l_breadth_instructions"] or r["l_eliminated_instructions"]
            for r in rounds_out
        ):
            first = rounds_out[0]["errors"][0]
            raise StepError(
                f"step '{self.name}': every evolution call failed; first: {first['error']}", raw=first.get("raw")
            )
        if self.output == "flat":
            return [self._flat(node, root) for node in kept]
        out = dict(record)
        out["wizard_root"] = {
            **root.lineage(),
            "instruction": root.instruction,
            "task_label": root.task_label,
            "valid": root.valid,
            "score": root.score,
            **({"judge_error": root.detail} if root.detail else {}),
        }
        out["wizard_round_cnt"] = len(rounds_out)
        out[self.output_field] = rounds_out
        meta = dict(out.get("_meta") or {})
        meta["calls"] = list(meta.get("calls") or []) + calls
        out["_meta"] = meta
        return out

    async def _round(
        self,
        round_no: int,
        root_id: str,
        parents: list[Node],
        record: Record,
        tree: TreeIndex,
        ctx: StepContext,
        calls: list[dict[str, Any]],
    ) -> tuple[dict[str, Any], list[Node], list[Node]]:
        """One round: evolve every sampled parent with every operation, weed, judge, select.

        Returns the round's entry of the nested output, all its children, and the ones carried on.
        """
        jobs = [(parent, op) for parent in parents for op in self.operations]
        replies = await asyncio.gather(*(self._evolve(parent, op, record, ctx) for parent, op in jobs))
        children: list[Node] = []
        errors: list[dict[str, Any]] = []
        for (parent, op), (items, meta, error, prompt_text) in zip(jobs, replies):
            if meta is not None:
                calls.append(meta)
            if error is not None:
                errors.append({"parent_id": parent.id, "operation": op.name, **error})
                continue
            for instruction, label in items:
                node_id = f"{root_id}:r{round_no}.{len(children) + 1}"
                children.append(
                    Node(
                        node_id,
                        instruction,
                        label if label is not None else parent.task_label,
                        round_no,
                        op.name,
                        op.kind,
                        parent,
                        prompt_text=prompt_text,
                    )
                )
        for child in children:  # cheap rules first, in generation order, so results never depend on timing
            self._local_checks(child, tree, self.template(ctx, self._role_of(OPERATIONS[child.operation])))
        await asyncio.gather(*(self._assess(child, ctx) for child in children if child.eliminated is None))
        judged = [c for c in children if c.eliminated is None]
        carried = [
            item["node"]
            for item in select_top([{"valid": c.valid, "score": c.score, "node": c} for c in judged], self.top_fraction)
        ]
        for node in carried:
            node.selected = True
        for child in children:
            calls.extend(child.calls)
            self._count(child)
        entry = {
            "l_depth_instructions": [c.as_candidate() for c in judged if c.kind == "depth"],
            "l_breadth_instructions": [c.as_candidate() for c in judged if c.kind == "breadth"],
            "l_eliminated_instructions": [c.as_eliminated() for c in children if c.eliminated is not None],
            "wizard_round_cnt": round_no,
            "sampled": [p.id for p in parents],
            "selected": [node.id for node in carried],
            "errors": errors,
        }
        return entry, children, carried

    # ------------------------------------------------------------ one parent, one operation

    async def _evolve(
        self, parent: Node, op: Operation, record: Record, ctx: StepContext
    ) -> tuple[list[tuple[str, Any]], dict[str, Any] | None, dict[str, Any] | None, str]:
        """``(children as (instruction, new label or None), call meta, error, prompt text)`` for one call.

        The prompt text (system and user, with the parent's instruction and history cut out) lets the
        leak rule catch children copied from the prompt itself, e.g. its worked example."""
        values = {
            "instruction": parent.instruction,
            "labels": labels_of(parent.task_label),
            "operation": op.name,
            "count": self.children[op.name],
            "domain": self.domain,
            "language": self.language,
        }
        if parent.parent is None and self.use_history and record.get("history") is not None:
            values["history"] = record["history"]
        template = self.template(ctx, self._role_of(op))
        messages = template.render(values, self.options)
        prompt_text = "\n".join(m["content"] for m in messages).replace(parent.instruction, " ")
        if "history" in values:
            for message in normalize_history(values["history"]):
                prompt_text = prompt_text.replace(message["content"], " ")
        self.counters["evolve_calls"] += 1
        try:
            value, completion = await ctx.model(self.model).chat_json(
                messages, self.evolve_schema(ctx, op), **self.params
            )
        except ModelError as exc:
            self.counters["evolve_failures"] += 1
            return [], None, {"error": str(exc), "raw": exc.raw}, prompt_text
        items: list[tuple[str, Any]] = []
        for item in value.get("instructions", [])[: self.children[op.name]]:
            if isinstance(item, str):
                items.append((item.strip(), None))
            elif isinstance(item, dict) and isinstance(item.get("instruction"), str):
                label = item.get("task_label") if op.new_label else None
                items.append(
                    (item["instruction"].strip(), label.strip() if isinstance(label, str) and label.strip() else None)
                )
        return items, call_meta(self.name, self.model, completion, template), None, prompt_text

    # ------------------------------------------------------------ elimination and judging

    def _local_checks(self, child: Node, tree: TreeIndex, template: PromptTemplate) -> None:
        """The rules that need no model: empty, leaked prompt words, the text checks (a bare number, JSON debris,
        a loop, the evolving prompt's labels: ``template``), near-duplicate of the tree.

        A child that passes joins the tree at once, so a later sibling that repeats it is the duplicate,
        whatever the model checks later decide about the first one: the outcome depends on generation
        order only, never on which call finished first.
        """
        if not content_words(child.instruction):
            child.eliminate("empty", "no words besides punctuation and stop words")
            return
        if "leak" in self.rules:
            phrase = leaked_phrase(child.instruction, self.leak_phrases)
            if phrase:
                child.eliminate("leak", f"contains the evolving prompt's words {phrase!r}")
                return
            if copied_from_prompt(child.instruction, child.prompt_text):
                child.eliminate("leak", "copied from the evolving prompt's own text (e.g. its example)")
                return
        if self._fails_text_check(child, child.instruction, template, "instruction"):
            return
        if "duplicate" in self.rules:
            found = tree.find(child.instruction)
            if found:
                child.eliminate("duplicate", f"near-duplicate of {found[0]} (similarity {found[1]:.2f})")
                return
        tree.add(child.id, child.instruction)

    def _fails_text_check(self, child: Node, text: str, template: PromptTemplate, what: str) -> bool:
        """Eliminate ``child`` as ``text_check`` when ``text`` (its instruction or its answer) fails a rule."""
        problem = self.sanity.problem(text, template)
        if problem is None:
            return False
        self.counters[problem.counter] += 1
        child.eliminate("text_check", f"the {what} fails {problem.rule}: {problem.detail}")
        return True

    async def _assess(self, child: Node, ctx: StepContext) -> None:
        """Equal check, answer (and unanswerable check), then judgement; stops at the first elimination."""
        assert child.parent is not None
        if "equal" in self.rules:
            messages = self.template(ctx, "equal").render(
                {"parent": child.parent.instruction, "instruction": child.instruction, "domain": self.domain},
                self.options,
            )
            try:
                value, completion = await ctx.model(self.equal_model).chat_json(
                    messages, self.template(ctx, "equal").schema, **self.judge_params
                )
                child.calls.append(call_meta(self.name, self.equal_model, completion, self.template(ctx, "equal")))
                if parse_verdict(value):
                    child.eliminate("no_information_gain", "judged equal to its parent")
                    return
            except ModelError as exc:
                child.eliminate("equal_check_failed", str(exc), exc.raw)
                return
            except JudgingError as exc:
                child.eliminate("equal_check_failed", str(exc), completion.text)
                return
        if self.answer_model:
            messages = self.template(ctx, "answer").render(
                {"input": child.instruction, "domain": self.domain}, self.options
            )
            try:
                completion = await ctx.model(self.answer_model).chat(messages, **self.answer_params)
            except ModelError as exc:
                child.eliminate("answer_failed", str(exc), exc.raw)
                return
            child.calls.append(call_meta(self.name, self.answer_model, completion, self.template(ctx, "answer")))
            child.answer = completion.text.strip()
            if self.config.keep_reasoning and completion.reasoning:
                child.answer_reasoning = completion.reasoning
            if "unanswerable" in self.rules:
                why = is_unanswerable(child.answer, self.refusal_max_words)
                if why:
                    child.eliminate("unanswerable", f"the answering model's reply is a {why.replace('_', ' ')}")
                    return
            if self._fails_text_check(child, child.answer, self.template(ctx, "answer"), "answer"):
                return
            if self.verifier is not None and not await self._verified(child, messages, ctx):
                return
        await self._judge(child, ctx)
        if child.valid is None:
            child.eliminate("judge_failed", child.detail, child.raw)

    async def _verified(self, child: Node, messages: list[dict[str, str]], ctx: StepContext) -> bool:
        """The ``verify`` check on the child's answer (and, with ``samples``, on the agreement of more answers);
        a child that fails it is eliminated as ``unverifiable``."""
        assert self.verifier is not None and self.answer_model is not None and child.answer is not None
        self.counters["verify_checks"] += 1
        verdict = await self.verifier.verify(child.answer, {})
        for sample in range(1, self.verify_samples if verdict.passed else 1):
            try:
                completion = await ctx.model(self.answer_model).chat(messages, sample=sample, **self.answer_params)
            except ModelError as exc:
                child.eliminate("answer_failed", str(exc), exc.raw)
                return False
            child.calls.append(call_meta(self.name, self.answer_model, completion, self.template(ctx, "answer")))
            verdict = await self.verifier.agree(completion.text, child.answer)
            if not verdict.passed:
                verdict.reason = f"answer {sample + 1} of {self.verify_samples} disagrees: {verdict.reason}"
                break
        child.verified = verdict.as_dict()
        if not verdict.passed:
            child.eliminate("unverifiable", verdict.reason)
            return False
        return True

    async def _judge(self, node: Node, ctx: StepContext) -> None:
        """Validity and score, re-asked with a new sample when unusable; a final failure is recorded, never raised."""
        template = self.template(ctx, "judge")
        messages = template.render({"instruction": node.instruction, "domain": self.domain}, self.options)
        error, raw = "", None
        for attempt in range(self.judge_retries + 1):
            self.counters["judge_calls"] += 1
            try:
                value, completion = await ctx.model(self.judge_model).chat_json(
                    messages, template.schema, sample=attempt, **self.judge_params
                )
            except ModelError as exc:
                error, raw = str(exc), exc.raw
                continue
            node.calls.append(call_meta(self.name, self.judge_model, completion, template))
            try:
                node.valid, node.score, capped = parse_judgement(value)
            except JudgingError as exc:
                error, raw = f"unusable judgement: {exc}", completion.text
                continue
            if capped:
                self.counters["score_capped"] += 1
            return
        self.counters["judge_failures"] += 1
        node.detail, node.raw = f"{error} (after {self.judge_retries + 1} attempts)", raw

    def _count(self, child: Node) -> None:
        self.counters["children"] += 1
        if child.eliminated:
            self.counters[f"eliminated:{child.eliminated}"] += 1
        elif child.valid == 1:
            self.counters["valid"] += 1
        else:
            self.counters["invalid"] += 1
        if child.selected:
            self.counters["carried"] += 1

    # ------------------------------------------------------------ flat output

    def _flat(self, node: Node, root: Node) -> Record:
        """One kept instruction as a training record; ``evol`` says where it came from."""
        assert node.parent is not None
        out: Record = {"id": node.id, "input": node.instruction}
        if node.answer is not None:
            out["target"] = node.answer
        if node.answer_reasoning:
            out["target_reasoning"] = node.answer_reasoning
        out.update(
            {
                "task_label": node.task_label,
                "score": node.score,
                "valid": node.valid,
                "evol": {
                    "root_id": root.id,
                    "parent_id": node.parent.id,
                    "round": node.round,
                    "operation": node.operation,
                    "kind": node.kind,
                    "selected": node.selected,
                    "root_input": root.instruction,
                    "parent_input": node.parent.instruction,
                    "root_score": root.score,
                    "root_valid": root.valid,
                },
            }
        )
        if node.verified is not None:
            out["verified"] = node.verified
        out["_meta"] = {"calls": list(node.calls)}
        return out
