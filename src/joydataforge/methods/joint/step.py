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
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from ...engine.prompted import add_call_meta, call_meta
from ...engine.step import Record, Step, StepContext
from ...errors import ConfigError, ModelError, StepError
from ...models.backends.base import Completion
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
        self.output_field = config.output_field
        self.drafts_field = config.drafts_field
        self.joint_field = config.joint_field
        self.options = dict(config.options)
        self.draft_params = dict(config.draft_params)
        self.fuse_params = dict(config.fuse_params)

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
        return {**entry, "text": completion.text.strip()}, completion

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
                add_call_meta(out, {**call_meta(self.name, model, completion), "role": f"draft#{sample}"})
        shown = [drafts[i]["value"] if schema is not None else drafts[i]["text"] for i in good]
        final_template = self.prompt(ctx, self.final_prompt)
        final_messages = final_template.render(record, {**self.options, "drafts": shown})
        fuser = ctx.model(self.fuser)
        self.counters["fuse_calls"] += 1
        joint: dict[str, Any] = {"mode": self.mode, "fuser": self.fuser, "used_drafts": good}
        try:
            if self.mode == "pick":
                pick_schema = copy.deepcopy(final_template.schema or PICK_SCHEMA)
                pick_schema["properties"]["best"].update(type="integer", minimum=1, maximum=len(shown))
                value, completion = await fuser.chat_json(final_messages, pick_schema, **self.fuse_params)
                best = value.get("best")
                if isinstance(best, bool) or not isinstance(best, int) or not 1 <= best <= len(shown):
                    # The schema already bounds it; this guards a backend or schema override that does not.
                    raise StepError(
                        f"step '{self.name}': pick {best!r} is not a draft number 1..{len(shown)}", raw=completion.text
                    )
                index = good[best - 1]
                final: Any = shown[best - 1]
                joint.update(best=index, model=drafts[index]["model"], reason=value.get("reason"))
                self.counters[f"picked:{drafts[index]['model']}#{drafts[index]['sample']}"] += 1
            elif schema is not None:
                fuse_schema = final_template.schema or schema
                final, completion = await fuser.chat_json(final_messages, fuse_schema, **self.fuse_params)
            else:
                completion = await fuser.chat(final_messages, **self.fuse_params)
                final = completion.text.strip()
                if not final:
                    raise StepError(
                        f"step '{self.name}': fuser '{self.fuser}' returned an empty reply", raw=completion.text
                    )
        except ModelError as exc:
            self.counters["fuse_failures"] += 1
            raise StepError(f"step '{self.name}': {self.mode} by '{self.fuser}' failed: {exc}", raw=exc.raw) from None
        except StepError:
            self.counters["fuse_failures"] += 1
            raise
        out[self.output_field] = final
        out[self.drafts_field] = drafts
        out[self.joint_field] = joint
        add_call_meta(out, {**call_meta(self.name, self.fuser, completion), "role": self.mode})
        self.counters["picked" if self.mode == "pick" else "fused"] += 1
        return out
