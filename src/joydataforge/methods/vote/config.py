"""Settings of multi-model voting (``vote``) and of sending the votes that matter to a stronger model (``cascade``)."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from ...config.base import StepConfig
from ...config.messages import SettingError, shown
from ...config.reasoning import judge_sees_reasoning_field, keep_reasoning_field
from ..generate.config import LabelConfig
from ..verify.config import VerifierVoter

ModelName = Annotated[str, Field(min_length=1)]
Weight = Annotated[float, Field(gt=0, strict=True)]  # strict: `true` or "2" is a mistake, not a weight


def _voters_form(value: Any) -> str | None:
    """Which way ``models`` is written: a list of names, or a mapping name -> weight."""
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, list):
        return "list"
    return None


# One form is validated, chosen by the value's shape, so a mistake is reported once, in the form the user wrote.
Voters = Annotated[
    Annotated[list[ModelName], Field(min_length=1), Tag("list")]
    | Annotated[dict[ModelName, Weight], Field(min_length=1), Tag("dict")],
    Discriminator(
        _voters_form,
        custom_error_type="voters_form",
        custom_error_message="must be a list of model names or a mapping name -> weight",
    ),
]


def check_quorum(quorum: Any) -> int | float | None:
    """A quorum setting as the rules read it: ``None`` (strict majority), an int >= 1, or a fraction in (0, 1].

    The int/float distinction is the meaning: ``1`` is one vote, ``1.0`` is every voter's weight.
    """
    if quorum is None:
        return None
    if isinstance(quorum, bool) or not isinstance(quorum, Real):
        raise SettingError("quorum", f"must be an integer (votes) or a fraction in (0, 1] (got {shown(quorum)})")
    if isinstance(quorum, int):
        if quorum < 1:
            raise SettingError("quorum", f"must be at least 1 vote, or a fraction in (0, 1] (got {quorum})")
        return quorum
    if not 0 < float(quorum) <= 1:
        raise SettingError("quorum", f"a fractional quorum must be in (0, 1] (got {quorum})")
    return float(quorum)


def check_weights(weights: Mapping[str, float] | None, models: list[str]) -> dict[str, float]:
    """Every voter's weight (default 1); a weight that names no voter is a mistake, not a silent no-op.

    Weights are positive numbers by the settings' types; this is the check that needs the voters too.
    """
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(models))
    if unknown:
        raise SettingError("weights", f"names models that do not vote: {unknown} (voters: {models})")
    return {model: float(weights.get(model, 1)) for model in models}


def check_reachable(quorum: int | float | None, weights: Mapping[str, float]) -> None:
    """A vote count no set of voters can reach would turn every record into ``no_quorum``."""
    total = sum(weights.values())
    if isinstance(quorum, int) and quorum > total:
        raise SettingError("quorum", f"{quorum} can never be reached by voters of total weight {total:g}")


class VoteConfig(StepConfig):
    """Every listed model answers the same structured prompt; the record keeps each answer and the aggregate.

    Voters run concurrently, each under its own model's rate and concurrency limits. A voter whose call
    fails, whose reply never validates or whose label is empty does not vote; it is kept with its error
    and raw reply. If every voter fails the record fails (an empty label never wins).

    Output (field names configurable):

    - ``votes``: ``{model: {label, reason, ...}}`` for voters that answered, ``{model: {error, raw}}`` for
      those that failed;
    - ``vote``: ``{label, outcome, agreement, support, required, counts, voters, valid, failed_voters}``
      where ``outcome`` is ``majority`` (``label`` set), ``tie`` (``label`` null, ``tied`` lists the
      leaders) or ``no_quorum`` (``label`` null);
    - with ``seed_fields: true`` also the original JoyDataForge's flat fields, with the values it wrote:
      ``<model>_label``, ``<model>_reason``, ``<model>_scores`` (the reply's ``reward_model_scores``, else
      ``[]``), ``<model>_res`` (the reply's other keys, else ``[]``); a failed voter gets ``""``, ``""``,
      ``[]`` and no ``_res``, as there. ``label_vote`` is the majority label and ``reason_vote`` is
      ``"voted"``; after a tie or a missed quorum both are ``""`` (the original's "no vote result"; it
      never refused a tie, it took the first label seen). ``docs/original.md`` lists each value.

    A tie is never resolved by "the first label seen"; ``on_no_majority`` decides what happens to a tie or
    a missed quorum.
    """

    kind: ClassVar[str] = "vote"
    positional: ClassVar[tuple[str, ...]] = ("models", "prompt")
    summary: ClassVar[str] = "several models label each record; the weighted majority, its agreement and every answer"
    example: ClassVar[dict[str, Any]] = {
        "models": ["smollm2-cool", "smollm2-warm", "smollm2-hot"],
        "prompt": "zh/intent_cdss",
    }

    models: Voters = Field(
        description=(
            "Named models (from models.yaml) that vote, each once: a list of names, or a mapping name -> weight "
            "(`{gpt: 2, glm: 1}`) as a shorthand for names plus `weights`. For a second vote by one model add a "
            "named variant in models.yaml."
        )
    )
    prompt: str = Field(
        default="vote_label",
        min_length=1,
        description=(
            "Prompt template every voter answers, with a JSON schema that has a `label` property: a built-in name "
            "(`vote_label`, `zh/intent_cdss`) or the path of a YAML prompt file, relative to the pipeline file."
        ),
    )
    quorum: int | float | None = Field(
        default=None,
        description=(
            "Weight the winning label needs. Unset: more than half of all voters' weight (2 of 3, 3 of 4). "
            "An integer: at least that many (weighted) votes. A fraction in (0, 1]: that share of all voters' "
            "weight, failed voters included (a failure makes the quorum harder to reach, never easier)."
        ),
    )
    weights: dict[ModelName, Weight] | None = Field(
        default=None,
        description=(
            "Weight of each voter's vote, a positive number; voters not listed weigh 1. Every name must be a voter."
        ),
    )
    output_field: str = Field(
        default="vote",
        min_length=1,
        description=(
            "Field that receives the aggregate `{label, outcome, agreement, support, required, counts, ...}`."
        ),
    )
    votes_field: str = Field(
        default="votes",
        min_length=1,
        description=("Field that receives every voter's answer (or its error and raw reply), by model name."),
    )
    seed_fields: bool = Field(
        default=False,
        description=(
            "Also write the original JoyDataForge's flat fields with its values: `<model>_label`, `<model>_reason`, "
            '`<model>_scores`, `<model>_res`, `label_vote` (the majority label) and `reason_vote` (`"voted"`; both '
            '`""` after a tie or a missed quorum).'
        ),
    )
    on_no_majority: Literal["keep", "drop", "fail"] = Field(
        default="keep",
        description=(
            "What a tie or a missed quorum does to the record: `keep` it with that outcome and label null (a later "
            "`cascade` can resolve it), `drop` it (counted as `dropped:<outcome>`), or `fail` it (failures.jsonl)."
        ),
    )
    schema_: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description=("A JSON schema to use instead of the prompt's own; it must have a `label` property."),
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Extra values the template reads as `options.NAME`; `options.labels` restricts every voter's `label` "
            "to that list (the schema's enum)."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Sampling parameters for every voter's call (`temperature`, `max_tokens`, ...), over each model's own."
        ),
    )
    verifiers: list[VerifierVoter] = Field(
        default_factory=list,
        description=(
            "Verdicts of earlier `verify` steps counted as voters, each `{verdict_field, pass_label, fail_label, "
            "weight, name}`: a passed check votes `pass_label`, a failed one `fail_label` (or not at all). They "
            "count in the quorum like models; a vote in which every model failed still fails the record."
        ),
    )
    judge_sees_reasoning: bool = judge_sees_reasoning_field(
        "the voters each record field the prompt reads that an earlier step kept a trace of (`<field>_reasoning`: "
        "a generated `target`, say)"
    )

    @field_validator("quorum", mode="before")
    @classmethod
    def _quorum(cls, value: Any) -> int | float | None:
        return check_quorum(value)

    @model_validator(mode="after")
    def _voters_and_weights(self) -> "VoteConfig":
        if isinstance(self.models, dict) and self.weights:
            raise SettingError("weights", "give weights either in models: {name: weight} or in weights:, not both")
        voters = self.voters()
        duplicates = sorted({m for m in voters if voters.count(m) > 1})
        if duplicates:
            raise SettingError(
                "models",
                f"a model may vote only once, {duplicates} listed twice "
                "(add a named variant in models.yaml for a second voter)",
            )
        names = [v.voter_name() for v in self.verifiers]
        clash = sorted({n for n in names if n in voters or names.count(n) > 1})
        if clash:
            raise SettingError("verifiers", f"voter names must be unique and not models' names: {clash} (set name:)")
        labels = self.options.get("labels")
        for k, verifier in enumerate(self.verifiers):
            for key in ("pass_label", "fail_label"):
                label = getattr(verifier, key)
                if label is not None and isinstance(labels, list) and label not in labels:
                    raise SettingError(f"verifiers[{k}].{key}", f"{label!r} is not one of options.labels {labels}")
        check_reachable(self.quorum, self.all_voter_weights())
        return self

    def all_voter_weights(self) -> dict[str, float]:
        """The models' weights and the verifiers', by voter name: what the aggregate weighs."""
        return {**self.voter_weights(), **{v.voter_name(): float(v.weight) for v in self.verifiers}}

    def voters(self) -> list[str]:
        """The voting models in the order written (the order of calls, answers and provenance)."""
        return list(self.models)

    def voter_weights(self) -> dict[str, float]:
        """Every voter's weight, from the ``models`` mapping or from ``weights`` (default 1)."""
        given = self.models if isinstance(self.models, dict) else self.weights
        return check_weights(given, self.voters())

    def model_names(self) -> list[str]:
        return self.voters()


class CascadeConfig(LabelConfig):
    """After a ``vote``: the records whose vote matters go to a stronger model, whose answer becomes the label.

    Gated: a ``majority`` on one of ``gate_labels``, a ``tie`` when ``gate_tie``, a ``no_quorum`` when
    ``gate_no_quorum``; or every record with ``gate: all`` (what the original did when its list of labels
    to post-process was empty). Gated records get the model's JSON keys at the top level (``label``, ``reason``;
    or under ``output_field``, or with ``prefix``) and ``label_source: cascade``. The others pass without a
    call and get the vote's label (``label_source: vote``), or ``label: null`` with ``label_source:
    undecided`` after an ungated tie or missed quorum. ``cascade`` on the record says whether and why it was
    gated (``{gated, because, model, label}``, plus ``changed`` when the vote had a majority to change).
    The vote stays on the record.

    The prompt sees the vote as ``options.vote`` and the answers as ``options.votes``. A failed cascade call
    fails the record (with the raw reply) unless ``on_cascade_failure: keep_vote``, which keeps a majority
    label and marks it ``label_source: vote_kept_after_cascade_failure`` (there is nothing to keep after a
    tie or a missed quorum, so those still fail).

    With ``seed_fields: true`` the record gets the original JoyDataForge's final fields instead: a gated
    record ``label`` and ``reason`` from the model (only those two keys), a passed one ``label: ""`` and
    ``reason: ""`` (the original left records it did not post-label empty; the vote's label is in
    ``label_vote`` when the vote step also has ``seed_fields``).
    """

    kind: ClassVar[str] = "cascade"
    summary: ClassVar[str] = "after a vote, a stronger model relabels the records whose vote matters (a label, ties)"
    example: ClassVar[dict[str, Any]] = {
        "model": "smollm2-judge",
        "prompt": "zh/cascade_label",
        "gate_labels": ["药品"],
        "gate_tie": True,
    }

    model: str = Field(min_length=1, description="Named model (from models.yaml), the stronger one, that decides.")
    prompt: str = Field(
        default="cascade_label",
        min_length=1,
        description=(
            "Prompt template with a JSON schema that has a `label` property: a built-in name (`cascade_label`, "
            "`zh/cascade_label`) or the path of a YAML prompt file, relative to the pipeline file."
        ),
    )
    gate: Literal["vote", "all"] = Field(
        default="vote",
        description=(
            "`vote`: send the records the vote's outcome selects (`gate_labels`, `gate_tie`, `gate_no_quorum`); "
            "`all`: send every record, whatever its vote (the original's behaviour with an empty label list)."
        ),
    )
    gate_labels: list[str] | None = Field(
        default=None,
        description=(
            "Vote labels that send a record to the model when they win a majority (`[药品]`). An empty list is "
            "refused: to send every record write `gate: all`."
        ),
    )
    gate_tie: bool = Field(default=False, description="Also send records whose vote ended in a tie.")
    gate_no_quorum: bool = Field(default=False, description="Also send records whose vote missed the quorum.")
    gate_on_failed_verify: bool = Field(
        default=False,
        description=(
            "Also send records whose `verify` verdict (in `verify_field`) did not pass: failed, or undecided "
            "(`because: verify_failed`)."
        ),
    )
    verify_field: str = Field(
        default="verify",
        min_length=1,
        description="Field holding the verify step's verdict, read with `gate_on_failed_verify`.",
    )
    vote_field: str = Field(
        default="vote",
        min_length=1,
        description=("Field holding the vote's aggregate (the vote step's `output_field`)."),
    )
    votes_field: str = Field(
        default="votes",
        min_length=1,
        description=(
            "Field holding the voters' answers (the vote step's `votes_field`), shown to the prompt as `options.votes`."
        ),
    )
    keep_reasoning: bool = keep_reasoning_field(
        "`<cascade_field>.reasoning` (the stronger model's trace; its label is read from the answer alone)"
    )
    judge_sees_reasoning: bool = judge_sees_reasoning_field(
        "the stronger model each record field the prompt reads that an earlier step kept a trace of "
        "(`<field>_reasoning`)"
    )
    cascade_field: str = Field(
        default="cascade",
        min_length=1,
        description=(
            "Field that receives `{gated, because, model, label, changed}`: whether and why the record was sent."
        ),
    )
    on_cascade_failure: Literal["fail", "keep_vote"] = Field(
        default="fail",
        description=(
            "A failed call or an answer without a label: `fail` the record (failures.jsonl, with the raw reply), or "
            "`keep_vote`: keep a majority label, marked `label_source: vote_kept_after_cascade_failure`."
        ),
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Extra values the template reads as `options.NAME`: `labels` restricts the model's `label` to that list, "
            "`show_votes` (built-in prompts) shows the voters' answers; the step adds `vote` and `votes`."
        ),
    )
    output_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Store the model's whole JSON reply under this field (the final label as `{label}` for passed records); "
            "when unset its keys go to the top level of the record."
        ),
    )
    seed_fields: bool = Field(
        default=False,
        description=(
            "Write the original JoyDataForge's final fields: `label` and `reason` from the model for a gated record, "
            '`""` and `""` for a passed one (its vote label stays in `label_vote`). Needs `output_field` and '
            "`prefix` unset."
        ),
    )

    @model_validator(mode="after")
    def _gates_something(self) -> "CascadeConfig":
        if self.gate == "all":
            chosen = [
                name
                for name in ("gate_labels", "gate_tie", "gate_no_quorum", "gate_on_failed_verify")
                if getattr(self, name)
            ]
            if self.gate_labels is not None and "gate_labels" not in chosen:
                chosen.insert(0, "gate_labels")
            if chosen:
                raise SettingError(
                    chosen[0], "has no effect with gate: all, which sends every record; remove one or the other"
                )
        elif self.gate_labels == [] and not (self.gate_tie or self.gate_no_quorum or self.gate_on_failed_verify):
            raise SettingError(
                "gate_labels", "an empty list gates nothing; to send every record to the model write gate: all"
            )
        elif not (self.gate_labels or self.gate_tie or self.gate_no_quorum or self.gate_on_failed_verify):
            raise SettingError(
                "gate_labels",
                "nothing would be gated; set gate_labels, gate_tie, gate_no_quorum or gate_on_failed_verify "
                "(or gate: all for every record)",
            )
        if self.seed_fields and (self.output_field or self.prefix):
            raise SettingError(
                "seed_fields", "writes label and reason at the top level; leave output_field and prefix unset"
            )
        return self
