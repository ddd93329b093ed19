"""The dialogue intent pipeline (the seed's CDSS workflow), as steps.

``dialogue_intent`` labels every user turn of a dialogue in ONE call and fans out one record per user
turn; ``intent_binary`` is the optional fine pass: a yes/no check of a record's coarse label by a
(usually stronger) model, meant for a sampled set. Sampling into train/test sets needs the whole
labelled set, so it is not a step: see :mod:`joydataforge.methods.dialogue.split` (``joyforge dialogue-split``).

Why one call per dialogue: the seed labelled each turn with its own prompt, paying for the same
dialogue once per turn. Here the model sees the whole dialogue with user turns numbered ``[1]..[n]`` and
answers ``{"turns": [{index, label, reason, content}]}``. The schema (built per dialogue) fixes the
number of items, the label set and, by default, pins item ``t`` to index ``t`` and that turn's text
(so grammar-constrained backends cannot misalign); what a free schema cannot express is checked after
it: every index exactly once, and each item's ``content`` equal to that user turn (whitespace and a
role prefix aside). A reply that fails is asked again with a new sample; after ``retries`` the
dialogue fails with the raw reply, never with guessed labels.

History: each output turn gets the dialogue lines before it, back to the user line of the k-th last
*round* (a round = a user line the assistant answers directly), which is how the seed's records were
built. Turns are located by position, never by searching their text, so a line
that occurs twice ("好的") gets the history of its own occurrence.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from ...engine.prompted import PromptedStep, add_call_meta, call_meta, keep_reasoning
from ...engine.step import Record, StepContext
from ...errors import InputError, StepError, ValidationFailed
from ...records import Message, content_hash, normalize_history
from .config import DialogueIntentConfig, IntentBinaryConfig

_ROLE_TEXT = {"user": "用户", "assistant": "助手", "system": "系统"}
_PREFIX = re.compile(r"^\s*(\[\d+\]\s*)?(用户|助手|user|assistant)\s*[:：]\s*", re.IGNORECASE)


def dialogue_messages(value: Any) -> list[Message]:
    """The dialogue as messages: the seed's newline-joined ``用户:``/``助手:`` string, or any history shape."""
    return [m for m in normalize_history(value) if m["content"].strip()]


def user_positions(messages: list[Message]) -> list[int]:
    """Positions (in ``messages``) of the user turns, in order; turn ``t`` (1-based) is at ``[t - 1]``."""
    return [i for i, m in enumerate(messages) if m["role"] == "user"]


def history_before(messages: list[Message], position: int, rounds: int | None) -> list[Message]:
    """The messages before ``position``, from the user line of the ``rounds``-th last round on.

    A round is a user line answered directly by the assistant (the ``[user, assistant]`` pair of the
    seed's history lists); the slice keeps every line from that user line to ``position``, so user
    lines that got no direct answer stay in. This reproduces the seed's CDSS records exactly
    (``tests/test_dialogue.py``). With fewer rounds than asked (or ``rounds=None``) everything before
    ``position`` is returned, a leading greeting included.
    """
    if rounds is not None and rounds <= 0:
        return []
    starts = [
        i for i in range(position - 1) if messages[i]["role"] == "user" and messages[i + 1]["role"] == "assistant"
    ]
    start = 0 if rounds is None or len(starts) <= rounds else starts[-rounds]
    return messages[start:position]


def history_text(messages: list[Message]) -> str:
    """The seed's history string: one ``用户: ...`` / ``助手: ...`` line per message."""
    return "\n".join(f"{_ROLE_TEXT.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def _pinned_text(text: str) -> dict[str, Any]:
    """A schema that admits exactly the turn's text, in a form llama.cpp's grammar converter gets right.

    The converter writes a ``const`` string with JSON ``\\u`` escapes, so an emoji becomes a surrogate
    pair, two code points no output can match: pinning it that way would make every reply fail. A
    ``pattern`` keeps the characters as they are, so text outside the Basic Multilingual Plane is
    pinned by an anchored pattern when it holds no regex metacharacter; otherwise it stays a free
    string, and the content check after parsing covers it.
    """
    if all(ord(ch) <= 0xFFFF for ch in text):
        return {"const": text}
    if re.escape(text) == text:
        return {"type": "string", "pattern": f"^{text}$"}
    return {"type": "string"}


def _same_text(reply: str, turn: str) -> bool:
    def norm(text: str) -> str:
        return "".join(_PREFIX.sub("", text).split()).casefold()

    return norm(reply) == norm(turn)


class DialogueIntent(PromptedStep):
    """Label all user turns of a dialogue in one call; one output record per user turn.

    The settings are :class:`DialogueIntentConfig`'s. Duplicate dialogues are recognised by their id:
    the first record with an id takes it (also when its labelling then fails, so the failure is in
    ``failures.jsonl`` once) and later ones are dropped and counted (``duplicate_dialogues``). Output
    ids are ``<dialog_id>:<turn_index>``, so duplicates left over across resumed runs are recognisable,
    and ``dialogue-split`` drops them.
    """

    Config = DialogueIntentConfig
    config: DialogueIntentConfig

    def setup(self) -> None:
        super().setup()
        self.labels = self.config.label_table()
        self.dialog_field = self.config.dialog_field
        self.dialog_id_field = self.config.dialog_id_field
        self.history_rounds = self.config.history_rounds
        self.history_format = self.config.history_format
        self.check_content = self.config.check_content
        self.pin_turns = self.config.pin_turns
        self.retries = self.config.retries
        self.reason_max_chars = self.config.reason_max_chars
        self.keep_fields = list(self.config.keep_fields)
        self._labelled: set[str] = set()

    def required_fields(self) -> set[str]:
        return {self.dialog_field}

    def schema(self, turns: list[str]) -> dict[str, Any]:
        """The reply schema for a dialogue whose user turns are ``turns``.

        With ``pin_turns`` (default) item ``t`` is pinned to ``index: t`` and ``content: <turn t>``
        (``prefixItems`` + ``const``): a grammar-constrained backend (llama.cpp) then cannot misalign
        at all and only chooses labels and reasons, and any other backend's reply is validated against
        the same pins. Without it, items are free and alignment is checked after parsing.
        """
        n_turns = len(turns)
        reason: dict[str, Any] = {"type": "string"}
        if self.reason_max_chars:
            reason["maxLength"] = self.reason_max_chars
        label = {"type": "string", "enum": list(self.labels)}
        required = ["index", "label", "reason", "content"]
        array: dict[str, Any] = {"type": "array", "minItems": n_turns, "maxItems": n_turns}
        if self.pin_turns:
            array["prefixItems"] = [
                {
                    "type": "object",
                    "required": required,
                    "properties": {
                        "index": {"const": t},
                        "label": label,
                        "reason": reason,
                        "content": _pinned_text(text),
                    },
                }
                for t, text in enumerate(turns, start=1)
            ]
            array["items"] = False
        else:
            array["items"] = {
                "type": "object",
                "required": required,
                "properties": {
                    "index": {"type": "integer", "minimum": 1, "maximum": n_turns},
                    "label": label,
                    "reason": reason,
                    "content": {"type": "string"},
                },
            }
        return {"type": "object", "properties": {"turns": array}, "required": ["turns"]}

    def dialog_id(self, record: Record, messages: list[Message]) -> str:
        fields = [self.dialog_id_field] if self.dialog_id_field else ["dialog_id", "diaglog_id"]
        for field in fields:
            value = record.get(field)
            if value not in (None, ""):
                return str(value)
        if self.dialog_id_field:
            raise InputError(
                f"step '{self.name}': the dialogue id field is missing or empty", None, self.dialog_id_field
            )
        return content_hash([[m["role"], m["content"]] for m in messages], 8)

    async def run(self, record: Record, ctx: StepContext) -> list[Record]:
        if self.dialog_field not in record:
            raise InputError(f"step '{self.name}': the record has no dialogue", None, self.dialog_field)
        try:
            messages = dialogue_messages(record[self.dialog_field])
        except TypeError as exc:
            raise InputError(f"step '{self.name}': {exc}", None, self.dialog_field) from None
        positions = user_positions(messages)
        if not positions:
            raise InputError(f"step '{self.name}': the dialogue has no user turn", None, self.dialog_field)
        dialog_id = self.dialog_id(record, messages)
        if dialog_id in self._labelled:  # no await since the check: atomic under asyncio
            self.counters["duplicate_dialogues"] += 1
            return []
        # Taken even if the labelling fails: a copy would ask the same question and fail the same way
        # (the failure is recorded once, and `--retry-failed` redoes it).
        self._labelled.add(dialog_id)
        view = {k: v for k, v in record.items() if not k.startswith("_")}
        turns, completion = await self._label(ctx, view, messages, positions)
        meta = call_meta(self.name, self.model, completion, self.template(ctx))
        outputs = []
        for t, position in enumerate(positions, start=1):
            answer = turns[t]
            history = history_before(messages, position, self.history_rounds)
            out: Record = {key: copy.deepcopy(record[key]) for key in self.keep_fields if key in record}
            out.update(
                id=f"{dialog_id}:{t}",
                dialog_id=dialog_id,
                turn_index=t,
                input=messages[position]["content"],
                history=history_text(history) if self.history_format == "text" else history,
                label=answer["label"],
                reason=answer["reason"],
            )
            keep_reasoning(out, "label", completion, self.config.keep_reasoning)  # as `label` keeps it
            out["_meta"] = copy.deepcopy(record.get("_meta") or {})
            add_call_meta(out, dict(meta))
            outputs.append(out)
            self.counters[f"label:{answer['label']}"] += 1
        self.counters["dialogues"] += 1
        self.counters["turns"] += len(outputs)
        return outputs

    def labelling_prompt(
        self, ctx: StepContext, view: Record, messages: list[Message], positions: list[int]
    ) -> tuple[Any, dict[str, Any]]:
        """The prompt and reply schema of the one call that labels a dialogue's user turns (``joyforge plan``
        counts its tokens from this too)."""
        turn_of = {p: t for t, p in enumerate(positions, start=1)}
        lines = [
            {
                "index": turn_of.get(i),
                "role": m["role"],
                "speaker": _ROLE_TEXT.get(m["role"], m["role"]),
                "content": m["content"],
            }
            for i, m in enumerate(messages)
        ]
        options = {
            **self.options,
            "turns": lines,
            "n_turns": len(positions),
            "labels": [{"name": k, "description": v} for k, v in self.labels.items()],
            "reason_max_chars": self.reason_max_chars,
        }
        rendered = self.template(ctx).render(view, options)
        return rendered, self.schema([messages[p]["content"] for p in positions])

    async def _label(
        self, ctx: StepContext, view: Record, messages: list[Message], positions: list[int]
    ) -> tuple[dict[int, dict[str, Any]], Any]:
        """One call per dialogue; a mismatching reply is asked again with a new sample."""
        rendered, schema = self.labelling_prompt(ctx, view, messages, positions)
        model = ctx.model(self.model)
        problem, raw = "", None
        for attempt in range(self.retries + 1):
            if attempt:
                self.counters["retries"] += 1
            self.counters["attempts"] += 1
            try:
                value, completion = await model.chat_json(rendered, schema, sample=attempt, **self.params)
            except ValidationFailed as exc:
                self.counters["invalid_replies"] += 1
                problem, raw = str(exc), exc.raw
                continue
            problem = self._mismatch(value["turns"], messages, positions)
            if not problem:
                return {item["index"]: item for item in value["turns"]}, completion
            self.counters[f"rejected:{problem.split(':')[0]}"] += 1
            raw = completion.text
        raise StepError(
            f"step '{self.name}': no usable labelling after {self.retries + 1} attempt(s): {problem}", raw=raw
        )

    def _mismatch(self, items: list[dict[str, Any]], messages: list[Message], positions: list[int]) -> str:
        """Why a schema-valid reply does not line up with the user turns ('' when it does)."""
        indexes = [item["index"] for item in items]
        expected = list(range(1, len(positions) + 1))
        if sorted(indexes) != expected:
            missing = sorted(set(expected) - set(indexes))
            repeated = sorted({i for i in indexes if indexes.count(i) > 1})
            return f"index_mismatch: missing {missing}, repeated {repeated}"
        if self.check_content:
            for item in items:
                turn = messages[positions[item["index"] - 1]]["content"]
                if not _same_text(item["content"], turn):
                    return (
                        f"content_mismatch: turn {item['index']} is {turn[:40]!r}, reply says {item['content'][:40]!r}"
                    )
        return ""


class IntentBinaryCheck(PromptedStep):
    """The fine pass of coarse-then-fine labelling (settings: :class:`IntentBinaryConfig`).

    One yes/no call per record whose coarse label is to be checked, answered against :attr:`SCHEMA`;
    the prompt (the label's own from ``label_prompts``, else ``prompt``) sees the label and its
    description (``options.label``, ``options.description``).
    """

    Config = IntentBinaryConfig
    config: IntentBinaryConfig
    SCHEMA: dict[str, Any] = {
        "type": "object",
        "properties": {"match": {"type": "boolean"}, "reason": {"type": "string"}},
        "required": ["match", "reason"],
    }

    def setup(self) -> None:
        super().setup()
        self.labels = self.config.label_table()
        self.label_field = self.config.label_field
        check_labels = self.config.check_labels
        self.check_labels = set(check_labels) if check_labels is not None else None
        self.on_reject = self.config.on_reject
        self.fallback_label = self.config.fallback_label
        self.label_prompts = dict(self.config.label_prompts)
        self._label_templates: dict[str, Any] = {}

    def check(self, ctx: StepContext) -> None:
        super().check(ctx)
        self._label_templates = {label: ctx.prompts.get(ref) for label, ref in self.label_prompts.items()}

    def template_for(self, ctx: StepContext, label: str) -> Any:
        """The prompt that checks ``label``: its own from ``label_prompts``, else the step's ``prompt``."""
        if label in self.label_prompts:
            if label not in self._label_templates:
                self._label_templates[label] = ctx.prompts.get(self.label_prompts[label])
            return self._label_templates[label]
        return self.template(ctx)

    def required_fields(self) -> set[str]:
        fields = super().required_fields() | {self.label_field}
        for template in self._label_templates.values():
            fields |= template.required_fields
        return fields

    async def run(self, record: Record, ctx: StepContext) -> Record | None:
        label = record.get(self.label_field)
        if not isinstance(label, str) or not label:
            raise InputError(f"step '{self.name}': the record has no coarse label", None, self.label_field)
        if self.check_labels is not None and label not in self.check_labels:
            self.counters["skipped"] += 1
            return record
        options = {**self.options, "label": label, "description": self.labels.get(label, "")}
        messages = self.template_for(ctx, label).render(record, options)
        value, completion = await ctx.model(self.model).chat_json(messages, self.SCHEMA, **self.params)
        out = {**record, "binary_match": value["match"], "binary_reason": value["reason"]}
        out["_meta"] = copy.deepcopy(record.get("_meta") or {})
        add_call_meta(out, call_meta(self.name, self.model, completion, self.template_for(ctx, label)))
        self.counters["checked"] += 1
        if value["match"]:
            self.counters["confirmed"] += 1
            return out
        self.counters[f"rejected:{label}"] += 1
        if self.on_reject == "drop":
            return None
        if self.on_reject == "relabel":
            out["coarse_label"] = label
            out[self.label_field] = self.fallback_label
        return out
