"""Critique and revise: one model drafts, another critiques, the first revises, for a few rounds.

Each round the critic sees the current answer and replies ``{issues: [...], verdict: approve|revise,
score: 1-10}``. The loop stops early when the critic approves (``verdict == approve``; or, when
``approve_score`` is set, ``score >= approve_score`` whatever the verdict); otherwise the author
revises with the issues in hand. Every round is kept on the record, so the path from the first draft
to the final answer can be audited or turned into preference pairs (draft vs revision). After
``rounds`` critiques without approval the last revision is the answer, marked ``approved: false`` (it
was never critiqued); ``on_not_approved`` can drop or fail it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...engine.prompted import add_call_meta, call_meta, reasoning_field, with_reasoning
from ...engine.step import Record, Step, StepContext
from ...errors import ConfigError, ModelError, StepError
from ...text.sanity import TextSanity
from .config import CritiqueReviseConfig

if TYPE_CHECKING:
    from ...prompts.renderer import PromptTemplate


class CritiqueRevise(Step):
    """Draft (or take ``answer_field``), then critique -> revise until approved or out of ``rounds``.

    What the record gets and the settings are described by :class:`~.config.CritiqueReviseConfig`. The
    rounds run one after another (each needs the previous answer); a failed call fails the record.
    """

    Config = CritiqueReviseConfig
    config: CritiqueReviseConfig

    def setup(self) -> None:
        config = self.config
        self.model = config.model
        self.critic = config.critic
        self.rounds = config.rounds
        self.draft_prompt = config.draft_prompt
        self.critique_prompt = config.critique_prompt
        self.revise_prompt = config.revise_prompt
        self.answer_field = config.answer_field
        self.approve_score = config.approve_score
        self.on_not_approved = config.on_not_approved
        self.output_field = config.output_field
        self.rounds_field = config.rounds_field
        self.summary_field = config.summary_field
        self.options = dict(config.options)
        self.params = dict(config.params)
        self.critic_params = dict(config.critic_params)
        self.sanity = TextSanity(config.text_checks)

    def check(self, ctx: StepContext) -> None:
        super().check(ctx)
        if self.answer_field is None:
            self.prompt(ctx, self.draft_prompt)
        self.prompt(ctx, self.revise_prompt)
        schema = self.prompt(ctx, self.critique_prompt).schema
        props = (schema or {}).get("properties", {})
        if not {"issues", "verdict"} <= set(props):
            raise ConfigError(
                f"step '{self.name}': the critique prompt '{self.critique_prompt}' needs a schema "
                "with 'issues' and 'verdict' properties"
            )

    def approves(self, critique: dict[str, Any]) -> bool:
        """The verdict decides; with ``approve_score`` the score decides instead (critics, small ones
        especially, say "approve" to answers they score 1 out of 10)."""
        if self.approve_score is None:
            return str(critique.get("verdict", "")).strip().lower() == "approve"
        score = critique.get("score")
        return isinstance(score, (int, float)) and not isinstance(score, bool) and score >= self.approve_score

    async def _write(
        self,
        ctx: StepContext,
        template: PromptTemplate,
        options: dict[str, Any],
        record: Record,
        out: Record,
        role: str,
    ) -> tuple[str, str | None]:
        """The text (a draft or a revision) and the author's reasoning trace, if it gave one."""
        messages = template.render(record, options)
        try:
            completion = await ctx.model(self.model).chat(messages, **self.params)
        except ModelError as exc:
            raise StepError(f"step '{self.name}': {role} by '{self.model}' failed: {exc}", raw=exc.raw) from None
        if not completion.text.strip():
            raise StepError(f"step '{self.name}': {role} by '{self.model}' is empty", raw=completion.text)
        problem = self.sanity.problem(completion.text.strip(), template)
        if problem is not None:
            self.counters[problem.counter] += 1
            raise StepError(
                f"step '{self.name}': {role} by '{self.model}' fails the text check {problem}", raw=completion.text
            )
        add_call_meta(out, {**call_meta(self.name, self.model, completion, template), "role": role})
        return completion.text.strip(), completion.reasoning

    async def run(self, record: Record, ctx: StepContext) -> Record | None:
        out = dict(record)
        if self.answer_field is not None:
            answer = record.get(self.answer_field)
            if not isinstance(answer, str) or not answer.strip():
                raise StepError(f"step '{self.name}': field '{self.answer_field}' holds no answer to critique")
            trace = record.get(reasoning_field(self.answer_field))  # the given answer's own trace, if kept
            answer, trace = answer.strip(), trace if isinstance(trace, str) and trace.strip() else None
        else:
            self.counters["drafts"] += 1
            answer, trace = await self._write(
                ctx, self.prompt(ctx, self.draft_prompt), self.options, record, out, "draft"
            )
        history: list[dict[str, Any]] = []
        approved = False
        critic_template = self.prompt(ctx, self.critique_prompt)
        for number in range(1, self.rounds + 1):
            self.counters["critiques"] += 1
            # The critic reads the answer alone, or with judge_sees_reasoning the trace that led to it too.
            shown = with_reasoning(answer, trace) if self.config.judge_sees_reasoning else answer
            messages = critic_template.render(record, {**self.options, "answer": shown, "round": number})
            try:
                critique, completion = await ctx.model(self.critic).chat_json(
                    messages, critic_template.schema, **self.critic_params
                )
            except ModelError as exc:
                self.counters["critique_failures"] += 1
                raise StepError(
                    f"step '{self.name}': critique round {number} by '{self.critic}' failed: {exc}", raw=exc.raw
                ) from None
            add_call_meta(
                out, {**call_meta(self.name, self.critic, completion, critic_template), "role": f"critique#{number}"}
            )
            approved = self.approves(critique)
            entry: dict[str, Any] = {
                "round": number,
                "answer": answer,
                "critique": critique,
                "approved": approved,
                "revision": None,
            }
            history.append(entry)
            if approved:
                self.counters[f"approved_round:{number}"] += 1
                break
            self.counters["revisions"] += 1
            revise_options = {**self.options, "answer": answer, "critique": critique, "round": number}
            answer, trace = await self._write(
                ctx, self.prompt(ctx, self.revise_prompt), revise_options, record, out, f"revision#{number}"
            )
            entry["revision"] = answer

        summary = {
            "approved": approved,
            "rounds": len(history),
            "stopped": "approved" if approved else "max_rounds",
            "author": self.model,
            "critic": self.critic,
        }
        if not approved:
            self.counters["not_approved"] += 1
            if self.on_not_approved == "drop":
                return None
            if self.on_not_approved == "fail":
                raise StepError(
                    f"step '{self.name}': not approved after {self.rounds} round(s)", raw=str(history[-1]["critique"])
                )
        out[self.output_field] = answer
        if self.config.keep_reasoning and trace:  # the trace of the text that became the answer
            out[reasoning_field(self.output_field)] = trace
        out[self.rounds_field] = history
        out[self.summary_field] = summary
        return out
