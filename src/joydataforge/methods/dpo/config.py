"""Settings of ``dpo``: where candidates come from, how they are scored, which become pairs, what is written."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, StrictFloat, StrictInt, Tag, field_validator, model_validator

from ...config.base import StepConfig
from ...config.messages import SettingError
from ...config.reasoning import judge_sees_reasoning_field, keep_reasoning_field
from ...config.text_checks import TextChecks, text_checks_field
from ..verify.config import RequireVerified, raise_first_problem

Scorer = Literal["pointwise", "pairwise", "reward"]
PairRule = Literal["best_vs_worst", "best_vs_random", "all_pairs"]

DEFAULT_ASPECTS: dict[str, str] = {
    "helpfulness": "Does the answer address the user's actual need, with useful detail?",
    "correctness": "Is every statement accurate, with no invented facts or wrong advice?",
    "harmlessness": "Is the answer safe, with due caution where health, law or money are at stake?",
    "instruction_following": "Does the answer do what was asked, in the requested form and language?",
}
"""The built-in rubric: aspects a user may name without describing them."""

DEFAULT_JUDGE_PROMPTS: dict[str, str] = {"pointwise": "judge_pointwise", "pairwise": "judge_pairwise"}
"""The judge prompt of each LLM scorer when ``judge_prompt`` is not given (a reward model needs none)."""

ModelName = Annotated[str, Field(min_length=1)]


def _list_or_table(value: Any) -> str | None:
    return "dict" if isinstance(value, dict) else "list" if isinstance(value, (list, tuple)) else None


# ``aspects`` is a list of built-in names or a table of one's own: the input's type picks the branch, so a
# mistake in the table is said about the table alone, and anything else in one line.
Aspects = Annotated[
    Annotated[list[str], Tag("list")] | Annotated[dict[str, str], Tag("dict")],
    Discriminator(
        _list_or_table,
        custom_error_type="value_error",
        custom_error_context={"error": "must be a list of aspect names or a mapping {name: description}"},
    ),
]


def aspect_descriptions(aspects: list[str] | dict[str, str]) -> dict[str, str]:
    """The rubric as ``{name: description}``: listed names take the built-in descriptions."""
    if isinstance(aspects, dict):
        return dict(aspects)
    return {name: DEFAULT_ASPECTS[name] for name in aspects}


class PreferencePairsConfig(StepConfig):
    """Preference data for DPO: candidate answers, scored by judges or a reward model, turned into pairs.

    Candidates are read from the record (``candidates_field``, the seed's ``response_candidates``) and/or
    generated: every model in ``models`` x every temperature in ``temperatures`` x ``samples`` samples.
    Failed generations, blank and duplicate texts are kept in the provenance with their reason and never
    scored. ``scorer`` scores them: ``pointwise`` (a rubric judge gives each aspect a score with a
    rationale; several judges are averaged), ``pairwise`` (every two candidates compared in both orders; a
    pair that flips with the order is a tie) or ``reward`` (one reward model). A failed judgement is
    recorded, never read as a zero. ``rule``, ``margin`` and ``length_penalty`` pick the pairs; pairs not
    made are counted by reason (``dropped:tie``, ``dropped:contradicted``, ``dropped:below_margin``,
    ``dropped:length_decided``).

    ``output: pairs`` writes one record per pair in TRL's format: ``prompt``, ``chosen``, ``rejected``
    (strings or message lists, see ``trl_format``), ``score_chosen``, ``score_rejected``,
    ``rationale_chosen``/``rationale_rejected``, ``source_chosen``/``source_rejected`` (provenance),
    ``length_chosen``/``length_rejected``/``length_diff`` and ``dpo`` (scorer, rule, judges, candidate
    count). ``output: scores`` writes the seed's shape: the record with its candidates, one score per
    candidate in ``scores_field``, ``candidate_sources`` and ``candidate_judgements`` (and
    ``pairwise_verdicts`` for the pairwise scorer). The stats report judge agreement (``judge_agreement``)
    and, for pairwise judging, how often a verdict survived swapping the order (``order_agreement``).
    """

    kind: ClassVar[str] = "dpo"
    positional: ClassVar[tuple[str, ...]] = ("judges",)
    summary: ClassVar[str] = (
        "candidate answers scored by LLM judges or a reward model, turned into "
        "chosen/rejected pairs for DPO (TRL's format)"
    )
    example: ClassVar[dict[str, Any]] = {
        "models": ["smollm2-answer"],
        "temperatures": [0.3, 0.9],
        "samples": 2,
        "prompt": "en/answer",
        "judges": ["smollm2-judge-greedy"],
        "judge_prompt": "en/judge_pointwise",
    }

    judges: list[ModelName] = Field(
        min_length=1,
        description=(
            "Named models that score the candidates: LLM judges for `pointwise` and `pairwise` (a model listed "
            "twice judges twice, with distinct samples), exactly one reward model for `reward`. A single name "
            "may be written without a list."
        ),
    )
    scorer: Scorer = Field(
        default="pointwise",
        description=(
            "`pointwise`: each judge scores each candidate on the rubric (`aspects`, `scale`), the mean of the "
            "aspect scores, averaged over judges; `pairwise`: each judge compares every two candidates in both "
            "orders and a candidate's score is its mean win share (1 win, 0.5 tie, 0 loss); `reward`: the "
            "reward model's score of the conversation."
        ),
    )
    candidates_field: str | None = Field(
        default="response_candidates",
        min_length=1,
        description=(
            "Record field holding candidate answers (a list of strings, or of objects with `text`), scored "
            "along with any generated ones; null reads none from the record."
        ),
    )
    models: list[ModelName] = Field(
        default_factory=list,
        description=(
            "Named models that generate candidates (each with every temperature and sample); empty: only the "
            "record's candidates are scored."
        ),
    )
    samples: StrictInt = Field(
        default=1, ge=1, description=("Samples per model and temperature: distinct cached samples of the same prompt.")
    )
    temperatures: list[Annotated[StrictFloat, Field(ge=0)]] | None = Field(
        default=None,
        min_length=1,
        description=(
            "Sampling temperatures for the generating models, one set of samples each; leave it out to use "
            "each model's own temperature."
        ),
    )
    prompt: str = Field(
        default="answer",
        min_length=1,
        description=(
            "Prompt that generating models answer: a built-in name (`answer`, `en/answer`) or a YAML prompt file, "
            "relative to the pipeline file."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Sampling parameters of the generating calls (`max_tokens`, ...), over the models' own; a "
            "`temperatures` entry overrides `temperature`."
        ),
    )
    judge_prompt: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Judge prompt (built-in name or YAML file); defaults to `judge_pointwise` or `judge_pairwise` by "
            "scorer (`en/...` and `zh/...` variants exist). The reward scorer uses none."
        ),
    )
    judge_params: dict[str, Any] = Field(
        default_factory=dict, description=("Sampling parameters of the judging (or reward) calls.")
    )
    aspects: Aspects = Field(
        default_factory=lambda: list(DEFAULT_ASPECTS),
        description=(
            "The pointwise rubric: names of built-in aspects (`helpfulness`, `correctness`, `harmlessness`, "
            "`instruction_following`) or a mapping `{name: description}` of your own."
        ),
    )
    scale: tuple[StrictInt, StrictInt] = Field(
        default=(1, 10), description=("`[low, high]`: the integer range of each pointwise aspect score (low < high).")
    )
    rationale_chars: StrictInt = Field(
        default=200,
        ge=1,
        description=(
            "Longest rationale a judge may write per aspect (pointwise) or per comparison (pairwise), in "
            "characters: bounds a small judge's tokens."
        ),
    )
    rule: PairRule = Field(
        default="best_vs_worst",
        description=(
            "Which pairs are made: `best_vs_worst` (the top score against the lowest), `best_vs_random` (the top "
            "against one lower candidate drawn with the record's seed) or `all_pairs` (every pair that passes)."
        ),
    )
    margin: StrictFloat = Field(
        default=0.0,
        ge=0,
        description=("Smallest score gap of a kept pair, in score points; closer pairs are dropped (`below_margin`)."),
    )
    length_penalty: StrictFloat = Field(
        default=0.0,
        ge=0,
        description=(
            "Score points a chosen answer must win by per doubling of its length over the rejected one (on top "
            "of the margin), so that length alone cannot decide a pair; 0 turns it off."
        ),
    )
    output: Literal["pairs", "scores"] = Field(
        default="pairs",
        description=(
            "`pairs`: one record per chosen/rejected pair (TRL's format); `scores`: one record per input with "
            "every candidate's score (the seed's shape)."
        ),
    )
    trl_format: Literal["conversational", "standard", "auto"] = Field(
        default="conversational",
        description=(
            "`conversational`: prompt, chosen and rejected are message lists; `standard`: plain strings (fails a "
            "record with history or a system prompt); `auto`: strings unless the record has history or system."
        ),
    )
    scores_field: str = Field(
        default="candidate_scores",
        min_length=1,
        description=("Field of the per-candidate scores when `output: scores`."),
    )
    keep_fields: list[str] | None = Field(
        default=None, description=("Input fields copied to each output record (and `_meta`); null copies them all.")
    )
    min_candidates: StrictInt = Field(
        default=2,
        ge=2,
        description=(
            "Usable (and then scored) candidates a record needs for pairs; with fewer it fails. `output: scores` "
            "needs one."
        ),
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description=("Extra values the prompts read as `options.NAME`.")
    )
    text_checks: TextChecks = text_checks_field(
        "each generated candidate (not those given in the record); one that fails is skipped, never scored"
    )
    keep_reasoning: bool = keep_reasoning_field(
        "each generated candidate's `reasoning` and the pair's `chosen_reasoning` / `rejected_reasoning`"
    )
    judge_sees_reasoning: bool = judge_sees_reasoning_field(
        "the judges (and a reward model) each candidate (a record's candidate's `reasoning` too; a trajectory's "
        "turns with their `reasoning_content`)"
    )
    require_verified: RequireVerified | None = Field(
        default=None,
        description=(
            "Pairs only where the chosen answer passes a check and the rejected one fails it: a `verify` check "
            "(`{checker: math, reference_field: answer}`, run on every candidate) or `{verdicts_field: verify}` (an "
            "earlier `verify` step's per-candidate verdicts). The rule picks the chosen among passing candidates and "
            "the rejected among failing ones by score; the score checks still apply. Records with no passing or no "
            "failing candidate make no pair (`dropped:no_passing_candidate`, `dropped:no_failing_candidate`)."
        ),
    )

    @field_validator("judges", mode="before")
    @classmethod
    def _one_judge_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("aspects")
    @classmethod
    def _known_aspects(cls, aspects: list[str] | dict[str, str]) -> list[str] | dict[str, str]:
        if not aspects:
            raise ValueError("must not be empty")
        if isinstance(aspects, list):
            unknown = [name for name in aspects if name not in DEFAULT_ASPECTS]
            if unknown:
                raise ValueError(
                    f"{unknown!r} have no built-in description; give aspects as a mapping "
                    f"{{name: description}} (built in: {', '.join(DEFAULT_ASPECTS)})"
                )
        else:
            for name, description in aspects.items():
                if not name.isidentifier() or not description:
                    raise ValueError(f"aspect {name!r} needs an identifier name and a description")
        return aspects

    @field_validator("scale")
    @classmethod
    def _ordered_scale(cls, scale: tuple[int, int]) -> tuple[int, int]:
        if scale[0] >= scale[1]:
            raise ValueError(f"must be [low, high] with low < high (got {list(scale)})")
        return scale

    @model_validator(mode="after")
    def _consistent(self) -> "PreferencePairsConfig":
        if self.scorer == "reward" and len(self.judges) != 1:
            raise SettingError(
                "judges",
                "scorer 'reward' takes one reward model (reward scales of different "
                f"models cannot be averaged), got {self.judges}",
            )
        if self.require_verified is not None:
            raise_first_problem(self.require_verified, references=True, prefix="require_verified.")
        if not self.models and not self.candidates_field:
            raise SettingError(
                "candidates_field",
                "no candidates: set candidates_field (read them from the record) and/or models (generate them)",
            )
        return self

    def judge_prompt_ref(self) -> str | None:
        """The judge prompt to render: the one given, else the scorer's default (none for a reward model)."""
        return self.judge_prompt or DEFAULT_JUDGE_PROMPTS.get(self.scorer)

    def model_names(self) -> list[str]:
        return list(dict.fromkeys([*self.models, *self.judges]))
