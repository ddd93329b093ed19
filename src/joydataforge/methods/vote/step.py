"""Multi-model voting (the seed's ``vote``) and vote-then-cascade (the seed's ``vote_and_pipeline``).

``vote``: every named model answers the same structured prompt for a record, concurrently, each through
the gateway (so each model's own rate and concurrency limits apply). The record keeps every answer and
the aggregate (see :mod:`.aggregate` for the rules). A voter whose call fails, whose reply never
validates or whose label is empty is recorded as failed, with its error and raw reply, and does not vote.
If every voter fails the record fails: there is nothing to aggregate, and an empty label must never win.

``cascade``: after a vote, only the records whose outcome matters (a majority on one of ``gate_labels``,
and optionally ties and no-quorum outcomes) go to a stronger model with its own prompt; the others pass
without a call. The stronger model's answer becomes the final label; the vote stays on the record.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ...engine.prompted import add_call_meta, call_meta, judge_view
from ...engine.step import Record, Step, StepContext
from ...errors import ConfigError, InputError, ModelError, StepError
from ...models.backends.base import Completion
from ..generate.config import LabelConfig
from ..generate.step import Label
from .aggregate import MAJORITY, NO_QUORUM, TIE, aggregate
from .config import CascadeConfig, VoteConfig
from .verifiers import verifier_vote

#: Keys of a voter's reply that the original's flat fields hold on their own (the rest goes to ``_res``).
_SEED_REPLY_KEYS = ("label", "reason", "reward_model_scores")


def seed_fields(votes: dict[str, dict[str, Any]], label: str | None) -> dict[str, Any]:
    """The original JoyDataForge's flat vote fields, with the values it wrote (``seed_fields: true``).

    Per voter ``<model>_label``, ``<model>_reason``, ``<model>_scores`` (the reply's
    ``reward_model_scores``, else ``[]``) and ``<model>_res`` (the reply's other keys, else ``[]``); a
    voter that failed gets ``""``, ``""``, ``[]`` and no ``_res``, which is what the original wrote once
    its retries ran out. ``label_vote``/``reason_vote`` are the majority label and ``"voted"``, or ``""``
    and ``""`` when there is no majority (``label`` None): the original's "no vote result", where it would
    otherwise have taken the first label seen. tests/test_fidelity_vote.py checks every value against the
    original's output in seed-data.
    """
    fields: dict[str, Any] = {}
    for model, answer in votes.items():
        if "error" in answer:
            fields.update({f"{model}_label": "", f"{model}_reason": "", f"{model}_scores": []})
            continue
        rest = {k: v for k, v in answer.items() if k not in _SEED_REPLY_KEYS}
        fields[f"{model}_label"] = answer["label"]
        fields[f"{model}_reason"] = answer.get("reason", "")
        fields[f"{model}_scores"] = answer.get("reward_model_scores", [])
        fields[f"{model}_res"] = rest or []
    fields["label_vote"] = label if label is not None else ""
    fields["reason_vote"] = "voted" if label is not None else ""
    return fields


class Vote(Step):
    """N models answer one structured prompt concurrently; their labels are aggregated by :mod:`.aggregate`.

    What the record gets and the settings are described by :class:`~.config.VoteConfig`. A voter's
    failure (call error, reply that never validates, empty label) is caught per voter so one bad model
    cannot fail the record; only a vote in which every voter failed does.
    """

    Config = VoteConfig
    config: VoteConfig

    def setup(self) -> None:
        config = self.config
        self.models = config.voters()
        self.weights = config.all_voter_weights()
        self.verifiers = list(config.verifiers)
        self.quorum = config.quorum
        self.output_field = config.output_field
        self.votes_field = config.votes_field
        self.seed_fields = config.seed_fields
        self.on_no_majority = config.on_no_majority
        self.params = dict(config.params)
        # One Label step holds the prompt and the schema (with options.labels as the enum): the same rules
        # as a single-model label, asked of every voter.
        self._labeler = Label(
            LabelConfig(
                model=self.models[0],
                prompt=config.prompt,
                schema=config.schema_,
                options=config.options,
                params=config.params,
                name=self.name,
            )
        )

    @property
    def options(self) -> dict[str, Any]:
        return self._labeler.options

    def check(self, ctx: StepContext) -> None:
        super().check(ctx)
        schema = self._labeler.schema(ctx)
        if "label" not in schema.get("properties", {}):
            raise ConfigError(f"step '{self.name}': the vote prompt's schema must have a 'label' property")

    def required_fields(self) -> set[str]:
        return self._labeler.required_fields()

    async def _ask(
        self, model: str, messages: list[dict[str, str]], schema: dict[str, Any], ctx: StepContext
    ) -> tuple[dict[str, Any], Completion | None]:
        """One voter's answer, or its failure with the error and the raw reply; never raises ModelError."""
        self.counters["calls"] += 1
        try:
            value, completion = await ctx.model(model).chat_json(messages, schema, **self.params)
        except ModelError as exc:
            return {"error": str(exc), "raw": exc.raw}, None
        label = value.get("label") if isinstance(value, dict) else None
        if not isinstance(label, str) or not label.strip():
            return {"error": f"model '{model}' gave no label", "raw": completion.text}, completion
        return {**value, "label": label.strip()}, completion

    async def run(self, record: Record, ctx: StepContext) -> Record | None:
        shown = judge_view(record) if self.config.judge_sees_reasoning else record  # else the answers alone
        messages = self._labeler.template(ctx).render(shown, self.options)
        schema = self._labeler.schema(ctx)
        answers = await asyncio.gather(*(self._ask(m, messages, schema, ctx) for m in self.models))
        votes = {model: answer for model, (answer, _) in zip(self.models, answers)}
        for model, answer in votes.items():
            if "error" in answer:
                self.counters[f"voter_failed:{model}"] += 1
        if all("error" in answer for answer in votes.values()):
            self.counters["all_voters_failed"] += 1
            raw = json.dumps({m: a.get("raw") for m, a in votes.items()}, ensure_ascii=False)
            errors = "; ".join(f"{m}: {a['error']}" for m, a in votes.items())
            raise StepError(f"step '{self.name}': every voter failed ({errors})", raw=raw)
        for voter in self.verifiers:  # verdicts of earlier verify steps vote too
            votes[voter.voter_name()] = verifier_vote(record, voter)
            self.counters[f"verifier:{voter.voter_name()}:{votes[voter.voter_name()]['status']}"] += 1

        result = aggregate(
            {m: a.get("label") if "error" not in a else None for m, a in votes.items()}, self.weights, self.quorum
        )
        self.counters[f"outcome:{result.outcome}"] += 1
        if result.outcome == MAJORITY:
            self.counters[f"label:{result.label}"] += 1
        else:
            if self.on_no_majority == "drop":
                self.counters[f"dropped:{result.outcome}"] += 1
                return None
            if self.on_no_majority == "fail":
                raise StepError(
                    f"step '{self.name}': vote ended in {result.outcome} (counts {result.as_dict()['counts']})",
                    raw=json.dumps(votes, ensure_ascii=False),
                )

        out = dict(record)
        out[self.votes_field] = votes
        out[self.output_field] = result.as_dict()
        if self.seed_fields:
            out.update(seed_fields(votes, result.label if result.outcome == MAJORITY else None))
        for model, (_, completion) in zip(self.models, answers):
            if completion is not None:
                add_call_meta(out, call_meta(self.name, model, completion, self._labeler.template(ctx)))
        return out


class Cascade(Label):
    """A :class:`Label` that is only called for the records whose vote the gate selects.

    What the record gets and the settings are described by :class:`~.config.CascadeConfig`. Records the
    gate lets pass cost no call; the vote's outcome decides which label they keep.
    """

    Config = CascadeConfig
    config: CascadeConfig

    def setup(self) -> None:
        super().setup()
        config = self.config
        self.gate_labels = set(config.gate_labels or [])
        self.gate_tie = config.gate_tie
        self.gate_no_quorum = config.gate_no_quorum
        self.vote_field = config.vote_field
        self.votes_field = config.votes_field
        self.cascade_field = config.cascade_field
        self.on_cascade_failure = config.on_cascade_failure
        self.gate_all = config.gate == "all"
        self.gate_on_failed_verify = config.gate_on_failed_verify
        self.verify_field = config.verify_field
        self.seed_fields = config.seed_fields

    def gate(self, vote: dict[str, Any]) -> str | None:
        """Why a record goes to the stronger model (``all``, ``label:X``, ``tie``, ``no_quorum``), or None."""
        if self.gate_all:
            return "all"
        outcome = vote.get("outcome")
        if outcome == MAJORITY and vote.get("label") in self.gate_labels:
            return f"label:{vote['label']}"
        if outcome == TIE and self.gate_tie:
            return TIE
        if outcome == NO_QUORUM and self.gate_no_quorum:
            return NO_QUORUM
        return None

    def _verify_gate(self, record: Record) -> str | None:
        """``verify_failed`` when ``gate_on_failed_verify`` and the record's verdict did not pass."""
        if not self.gate_on_failed_verify:
            return None
        verdict = record.get(self.verify_field)
        if not isinstance(verdict, dict) or not isinstance(verdict.get("passed"), bool):
            raise InputError("needs a verify step's verdict (run a 'verify' step first)", field=self.verify_field)
        return None if verdict["passed"] else "verify_failed"

    def _final(self, out: Record, label: Any, source: str) -> None:
        if self.seed_fields:  # the original left the records it did not post-label empty
            out.update(label="" if source in ("vote", "undecided") else label, reason="")
        elif self.output_field:
            out[self.output_field] = {"label": label}
        else:
            out[f"{self.prefix}label"] = label
        out[f"{self.prefix}label_source"] = source

    async def run(self, record: Record, ctx: StepContext) -> Record:
        vote = record.get(self.vote_field)
        if not isinstance(vote, dict) or "outcome" not in vote:
            raise InputError(f"step '{self.name}' needs a vote result (run a 'vote' step first)", None, self.vote_field)
        out = dict(record)
        because = self.gate(vote) or self._verify_gate(record)
        if because is None:
            self.counters["passed"] += 1
            out[self.cascade_field] = {"gated": False}
            decided = vote.get("outcome") == MAJORITY
            self._final(out, vote.get("label") if decided else None, "vote" if decided else "undecided")
            return out

        self.counters["gated"] += 1
        self.counters[f"gated:{because}"] += 1
        self.counters["cascade_calls"] += 1
        options = {**self.options, "vote": vote, "votes": record.get(self.votes_field, {})}
        shown = judge_view(record) if self.config.judge_sees_reasoning else record  # else the answers alone
        messages = self.template(ctx).render(shown, options)
        try:
            value, completion = await ctx.model(self.model).chat_json(messages, self.schema(ctx), **self.params)
            if not isinstance(value, dict):
                raise StepError(f"step '{self.name}': the cascade reply is not a JSON object", raw=completion.text)
            label = value.get("label")
            if not isinstance(label, str) or not label.strip():
                raise StepError(f"step '{self.name}': model '{self.model}' gave no label", raw=completion.text)
        except (ModelError, StepError) as exc:
            self.counters["cascade_failures"] += 1
            if self.on_cascade_failure == "keep_vote" and vote.get("outcome") == MAJORITY:
                self.counters["kept_vote_after_failure"] += 1
                out[self.cascade_field] = {
                    "gated": True,
                    "because": because,
                    "model": self.model,
                    "error": str(exc),
                    "raw": exc.raw,
                }
                self._final(out, vote.get("label"), "vote_kept_after_cascade_failure")
                return out
            raise StepError(
                f"step '{self.name}': cascade to '{self.model}' failed ({because}): {exc}", raw=exc.raw
            ) from None

        value = {**value, "label": label.strip()}
        out[self.cascade_field] = {"gated": True, "because": because, "model": self.model, "label": value["label"]}
        if self.config.keep_reasoning and completion.reasoning:  # the stronger model's trace, beside its label
            out[self.cascade_field]["reasoning"] = completion.reasoning
        if vote.get("outcome") == MAJORITY:  # "changed" only means something when the vote had a label
            out[self.cascade_field]["changed"] = value["label"] != vote.get("label")
            if value["label"] != vote.get("label"):
                self.counters["changed_by_cascade"] += 1
        if self.seed_fields:  # the original took only these two keys of the stronger model's reply
            reason = value.get("reason")
            out.update(label=value["label"], reason=reason if isinstance(reason, str) else "")
        elif self.output_field:
            out[self.output_field] = value
        else:
            for key, item in value.items():
                out[f"{self.prefix}{key}"] = item
        out[f"{self.prefix}label_source"] = "cascade"
        add_call_meta(out, call_meta(self.name, self.model, completion, self.template(ctx)))
        self.counters[f"label:{value['label']}"] += 1
        return out
