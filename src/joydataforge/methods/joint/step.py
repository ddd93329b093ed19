"""Joint synthesis: several models draft, one model fuses the drafts or picks the best.

Drafting runs concurrently (one gateway call per drafter, each under its model's limits). A drafter may
be listed more than once: its k-th occurrence asks for sample ``k``, a distinct cached sample of the same
prompt, so one model can stand in for several. Failed drafters are kept on the record with their error
and raw reply; at least ``min_drafts`` drafts must succeed, or the record fails.

- ``mode: fuse``: the fuser reads the drafts (``options.drafts`` in its prompt) and writes the final
  answer, free text, or JSON when the draft prompt has a schema (drafts are then records, not texts).
- ``mode: pick``: the fuser answers ``{best, reason}`` with ``best`` the 1-based number of a draft as
  shown to it. The schema bounds ``best`` to the drafts shown, so an out-of-range number is re-asked by
  the gateway and, if it persists, fails the record; it is never clamped or replaced by the first draft.

Position bias: a judge shown candidates in drafter order every time favours the first (a small model
picked draft #0 in 3 of 3 records). ``pick_order: shuffle`` (default) shows each record's drafts in an
order drawn from ``ctx.rng`` (run seed, step, record id: the same on every run and resume) and records
it; ``rotate`` asks once per rotation of that order, so each draft is seen in each position exactly once
(the same cure as ``dpo``'s pairwise judging in both orders), and the draft picked most often wins; a
shared top is broken by the same seeded generator, never by position, and recorded as ``tied``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
from typing import Any

from ...engine.prompted import add_call_meta, call_meta, reasoning_field
from ...engine.step import Record, Step, StepContext, source_id_of
from ...errors import ConfigError, ModelError, StepError
from ...models.backends.base import Completion
from ...text.sanity import TextSanity
from .config import JointConfig

PICK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"best": {"type": "integer", "minimum": 1}, "reason": {"type": "string"}},
    "required": ["best", "reason"],
}


class Joint(Step):
    """Drafts concurrently (one gateway call per drafter), then one fuser call over the successful drafts.

    What the record gets and the settings are described by :class:`~.config.JointConfig`. Drafts are
    numbered for the fuser among the successful ones only; ``used_drafts`` maps them back to drafter order.
    """

    Config = JointConfig
    config: JointConfig

    def setup(self) -> None:
        config = self.config
        self.drafters = list(config.drafters)
        self.fuser = config.fuser
        self.mode = config.mode
        self.draft_prompt = config.draft_prompt
        self.final_prompt = config.final_prompt()
        self.min_drafts = config.min_drafts
        self.pick_order = config.pick_order
        self.output_field = config.output_field
        self.drafts_field = config.drafts_field
        self.joint_field = config.joint_field
        self.options = dict(config.options)
        self.draft_params = dict(config.draft_params)
        self.fuse_params = dict(config.fuse_params)
        self.sanity = TextSanity(config.text_checks)

    def check(self, ctx: StepContext) -> None:
        super().check(ctx)
        self.prompt(ctx, self.draft_prompt)
        final = self.prompt(ctx, self.final_prompt)
        if self.mode == "pick" and final.schema is not None and "best" not in final.schema.get("properties", {}):
            raise ConfigError(
                f"step '{self.name}': the pick prompt '{self.final_prompt}' needs a 'best' property in its schema"
            )

    async def _draft(
        self, model: str, sample: int, messages: list[dict[str, str]], schema: dict[str, Any] | None, ctx: StepContext
    ) -> tuple[dict[str, Any], Completion | None]:
        """One draft, or the drafter's failure with its error and raw reply; never raises ModelError."""
        self.counters["draft_calls"] += 1
        entry: dict[str, Any] = {"model": model, "sample": sample}
        try:
            if schema is not None:
                value, completion = await ctx.model(model).chat_json(
                    messages, schema, sample=sample, **self.draft_params
                )
                return {**entry, "value": value}, completion
            completion = await ctx.model(model).chat(messages, sample=sample, **self.draft_params)
        except ModelError as exc:
            return {**entry, "error": str(exc), "raw": exc.raw}, None
        if not completion.text.strip():
            return {**entry, "error": "empty reply", "raw": completion.text}, completion
        problem = self.sanity.problem(completion.text.strip(), self.prompt(ctx, self.draft_prompt))
        if problem is not None:  # a junk draft is a failed draft: the fuser never sees it
            self.counters[problem.counter] += 1
            return {**entry, "error": f"fails the text check {problem}", "raw": completion.text}, completion
        entry["text"] = completion.text.strip()
        if self.config.keep_reasoning and completion.reasoning:  # kept apart: the fuser and picker see the text
            entry["reasoning"] = completion.reasoning
        return entry, completion

    async def run(self, record: Record, ctx: StepContext) -> Record:
        draft_template = self.prompt(ctx, self.draft_prompt)
        schema = draft_template.schema
        messages = draft_template.render(record, self.options)
        seen: dict[str, int] = {}
        calls = []
        for model in self.drafters:
            sample = seen.get(model, 0)
            seen[model] = sample + 1
            calls.append(self._draft(model, sample, messages, schema, ctx))
        results = await asyncio.gather(*calls)
        drafts = [entry for entry, _ in results]
        good = [i for i, d in enumerate(drafts) if "error" not in d]
        self.counters["drafts_ok"] += len(good)
        self.counters["drafts_failed"] += len(drafts) - len(good)
        if len(good) < self.min_drafts:
            self.counters["too_few_drafts"] += 1
            raise StepError(
                f"step '{self.name}': {len(good)} of {len(drafts)} drafts succeeded, min_drafts is {self.min_drafts}",
                raw=json.dumps(drafts, ensure_ascii=False),
            )

        out = dict(record)
        for (model, sample), (_, completion) in zip(((d["model"], d["sample"]) for d in drafts), results):
            if completion is not None:
                meta = call_meta(self.name, model, completion, draft_template)
                add_call_meta(out, {**meta, "role": f"draft#{sample}"})
        shown = [drafts[i]["value"] if schema is not None else drafts[i]["text"] for i in good]
        final_template = self.prompt(ctx, self.final_prompt)
        fuser = ctx.model(self.fuser)
        self.counters["fuse_calls"] += 1
        joint: dict[str, Any] = {"mode": self.mode, "fuser": self.fuser, "used_drafts": good}
        try:
            if self.mode == "pick":
                rng = ctx.rng(_record_key(record), self.name)
                index, pick_calls = await self._pick(ctx, record, drafts, good, shown, rng, joint)
                final: Any = shown[good.index(index)]
                for meta in pick_calls:
                    add_call_meta(out, meta)
                self.counters[f"picked:{drafts[index]['model']}#{drafts[index]['sample']}"] += 1
            elif schema is not None:
                fuse_schema = final_template.schema or schema
                final_messages = final_template.render(record, {**self.options, "drafts": shown})
                final, completion = await fuser.chat_json(final_messages, fuse_schema, **self.fuse_params)
            else:
                final_messages = final_template.render(record, {**self.options, "drafts": shown})
                completion = await fuser.chat(final_messages, **self.fuse_params)
                final = completion.text.strip()
                if not final:
                    raise StepError(
                        f"step '{self.name}': fuser '{self.fuser}' returned an empty reply", raw=completion.text
                    )
                problem = self.sanity.problem(final, final_template)
                if problem is not None:
                    self.counters[problem.counter] += 1
                    raise StepError(
                        f"step '{self.name}': the answer fused by '{self.fuser}' fails the text check {problem}",
                        raw=completion.text,
                    )
        except ModelError as exc:
            self.counters["fuse_failures"] += 1
            raise StepError(f"step '{self.name}': {self.mode} by '{self.fuser}' failed: {exc}", raw=exc.raw) from None
        except StepError:
            self.counters["fuse_failures"] += 1
            raise
        out[self.output_field] = final
        trace = drafts[index].get("reasoning") if self.mode == "pick" else completion.reasoning
        if self.config.keep_reasoning and trace:  # the trace of the picked draft, or the fuser's
            out[reasoning_field(self.output_field)] = trace
        out[self.drafts_field] = drafts
        out[self.joint_field] = joint
        if self.mode != "pick":
            add_call_meta(out, {**call_meta(self.name, self.fuser, completion, final_template), "role": self.mode})
        self.counters["picked" if self.mode == "pick" else "fused"] += 1
        return out

    def _orders(self, good: list[int], rng: random.Random) -> list[list[int]]:
        """The orders (indexes into the drafts list) the picker sees: one, or every rotation of one."""
        order = list(good)
        if self.pick_order != "fixed":
            rng.shuffle(order)
        if self.pick_order != "rotate":
            return [order]
        return [order[r:] + order[:r] for r in range(len(order))]

    async def _pick(
        self,
        ctx: StepContext,
        record: Record,
        drafts: list[dict[str, Any]],
        good: list[int],
        shown: list[Any],
        rng: random.Random,
        joint: dict[str, Any],
    ) -> tuple[int, list[dict[str, Any]]]:
        """The index (into ``drafts``) of the picked draft, and the provenance of the pick call(s).

        One call per order from :meth:`_orders`, concurrently; each answer is mapped back through the
        order it was shown. With several orders the draft picked most often wins; a shared top is broken
        by ``rng`` (seeded per record), never by position.
        """
        final_template = self.prompt(ctx, self.final_prompt)
        pick_schema = copy.deepcopy(final_template.schema or PICK_SCHEMA)
        pick_schema["properties"]["best"].update(type="integer", minimum=1, maximum=len(shown))
        text_of = dict(zip(good, shown))
        orders = self._orders(good, rng)

        async def ask(order: list[int]) -> tuple[int, Any, Completion]:
            messages = final_template.render(record, {**self.options, "drafts": [text_of[i] for i in order]})
            value, completion = await ctx.model(self.fuser).chat_json(messages, pick_schema, **self.fuse_params)
            best = value.get("best")
            if isinstance(best, bool) or not isinstance(best, int) or not 1 <= best <= len(order):
                # The schema already bounds it; this guards a backend or schema override that does not.
                raise StepError(
                    f"step '{self.name}': pick {best!r} is not a draft number 1..{len(order)}", raw=completion.text
                )
            self.counters[f"picked_position:{best}"] += 1
            return order[best - 1], value.get("reason"), completion

        if len(orders) > 1:
            self.counters["fuse_calls"] += len(orders) - 1  # one is counted by the caller
        results = await asyncio.gather(*(ask(order) for order in orders), return_exceptions=True)
        for result in results:  # every call has finished; the first failure fails the pick
            if isinstance(result, BaseException):
                raise result
        answers = [result for result in results if not isinstance(result, BaseException)]
        metas = []
        for r, (_, _, completion) in enumerate(answers):
            meta = {**call_meta(self.name, self.fuser, completion, final_template), "role": "pick"}
            if len(orders) > 1:
                meta["rotation"] = r
            metas.append(meta)
        if len(orders) == 1:
            index, reason, _ = answers[0]
            joint.update(best=index, model=drafts[index]["model"], reason=reason, order=orders[0])
            return index, metas
        picks = [0] * len(drafts)
        for index, _, _ in answers:
            picks[index] += 1
        top = max(picks)
        leaders = [i for i in good if picks[i] == top]
        index = leaders[0] if len(leaders) == 1 else rng.choice(leaders)
        reason = next(reason for i, reason, _ in answers if i == index)
        joint.update(
            best=index,
            model=drafts[index]["model"],
            reason=reason,
            order=orders[0],
            rotations=[{"order": order, "best": i, "reason": why} for order, (i, why, _) in zip(orders, answers)],
            picks=picks,
        )
        if len(leaders) > 1:
            joint["tied"] = leaders
            self.counters["pick_ties"] += 1
        return index, metas


def _record_key(record: Record) -> str:
    """The id that seeds a record's draft order: its own ``id``, else the input record it came from."""
    own = record.get("id")
    if isinstance(own, (str, int)) and not isinstance(own, bool) and str(own).strip():
        return str(own)
    return source_id_of(record)
