"""Settings of ``evol_instruct``: the models of each role, the evolution, the elimination rules, the output."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Discriminator, Field, StrictFloat, StrictInt, Tag, model_validator

from ...config.base import StepConfig
from ...config.messages import SettingError
from ...config.reasoning import keep_reasoning_field
from ...config.text_checks import TextChecks, text_checks_field
from ..verify.config import EvolVerify, raise_first_problem

OperationName = Literal["constraints", "deepen", "concretize", "reasoning", "complicate_input", "redirect", "breadth"]
"""The evolution operations, in the order they run (and are listed in :data:`.operations.OPERATIONS`)."""
OPERATION_NAMES: tuple[str, ...] = get_args(OperationName)

EliminationRule = Literal["equal", "leak", "unanswerable", "duplicate"]
ELIMINATION_RULES: tuple[str, ...] = get_args(EliminationRule)

PromptRole = Literal["depth", "redirect", "breadth", "equal", "judge", "answer"]

Count = Annotated[StrictInt, Field(ge=1)]
DEFAULT_CHILDREN = 3
"""Children per operation and parent when ``children`` does not say (the seed's number)."""


def _number_or_table(value: Any) -> str | None:
    return "dict" if isinstance(value, dict) else "int" if isinstance(value, (int, float)) else None


# ``children`` is one number or a table by operation: the input's type picks the branch, so a mistake in
# the table is said about the table alone (not also as "must be an integer"), and anything else in one line.
Children = Annotated[
    Annotated[Count, Tag("int")] | Annotated[dict[OperationName, Count], Tag("dict")],
    Discriminator(
        _number_or_table,
        custom_error_type="value_error",
        custom_error_context={"error": "must be a number or a mapping {operation: number}"},
    ),
]


class EvolInstructConfig(StepConfig):
    """Evol-Instruct ("Wizard"): each query is the root of a tree, evolved over rounds into harder and rarer ones.

    Each round samples up to ``sample_size`` instructions from the pool (seeded per record) and evolves
    each with every operation in ``operations``: in depth (add a constraint, deepen, concretize, require
    reasoning, add input to work on, or the seed's ``redirect``: change direction or scope, which also
    names the child's new ``task_label``) and in breadth (a rarer sibling of the same domain). Children are
    eliminated as in the WizardLM paper (``eliminate``): judged equal to their parent, leaking the evolving
    prompt's words, unanswerable (the answering model refuses or says nothing), near-duplicate of an
    instruction already in the tree. The rest are judged on the seed's scale (``valid`` -2/-1/1, difficulty
    ``score`` 0-100, an invalid child's score capped at 30), and the best ``top_fraction`` of the valid ones
    are carried into the next round's pool. A judgement that cannot be used is asked again, then recorded as
    an elimination; every eliminated child is kept in the output with its reason.

    ``output: nested`` (the seed's shape) writes the input record plus ``wizard_root`` (the root, with its
    own judgement), ``wizard_round_cnt`` and, in ``output_field``, one entry per round:
    ``l_depth_instructions`` and ``l_breadth_instructions`` (``instruction``, ``task_label``, ``score``,
    ``valid``, ``pre_query``, lineage, ``selected``, ``answer``), ``l_eliminated_instructions`` (with
    ``eliminated`` and ``detail``), ``sampled``, ``selected`` and ``errors``. ``output: flat`` writes one
    record per kept instruction: ``id``, ``input``, ``target`` (the answer, when answered), ``task_label``,
    ``score``, ``valid`` and ``evol`` (root, parent, round, operation), ready for SFT export.
    """

    kind: ClassVar[str] = "evol_instruct"
    positional: ClassVar[tuple[str, ...]] = ("model",)
    summary: ClassVar[str] = (
        "Evol-Instruct: evolve each query over rounds into harder and rarer ones, "
        "weeded by the paper's elimination rules and judged for difficulty"
    )
    example: ClassVar[dict[str, Any]] = {
        "model": "smollm2",
        "judge_model": "smollm2-greedy",
        "answer_model": "smollm2",
        "language": "en",
        "domain": "medicine and health",
        "operations": ["redirect", "breadth"],
        "children": 2,
    }

    model: str = Field(min_length=1, description="Named model that evolves the instructions.")
    judge_model: str | None = Field(
        default=None,
        min_length=1,
        description=("Named model that judges validity and difficulty; defaults to `model`."),
    )
    equal_model: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Named model that checks a child for no information gain over its parent (the `equal` rule); "
            "defaults to the judge model."
        ),
    )
    answer_model: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Named model that answers every surviving child: the `unanswerable` rule, and `answer`/`target` in "
            "the output. Unset: children are not answered and that rule does not apply."
        ),
    )
    language: Literal["en", "zh"] = Field(
        default="en",
        description=(
            "Language of the built-in prompts (`<language>/evol_depth`, `evol_redirect`, `evol_breadth`, "
            "`evol_equal`, `evol_judge`, `answer`)."
        ),
    )
    domain: str = Field(
        default="", description=("The domain named in every prompt (`medicine and health`, `Python programming`).")
    )
    rounds: StrictInt = Field(
        default=2, ge=1, description=("Rounds of evolution; a tree stops early when a round carries no valid child.")
    )
    sample_size: StrictInt = Field(
        default=3, ge=1, description=("Instructions sampled from the pool per round (seeded per record) and evolved.")
    )
    operations: list[OperationName] = Field(
        default_factory=lambda: list(OPERATION_NAMES),
        min_length=1,
        description=(
            "Operations applied to each sampled instruction: `constraints`, `deepen`, `concretize`, `reasoning`, "
            "`complicate_input` and `redirect` (in depth), `breadth`. Default: all; the seed used `redirect` and "
            "`breadth`."
        ),
    )
    children: Children = Field(
        default=DEFAULT_CHILDREN,
        description=(
            "Children each operation asks for per parent: one number, or `{operation: number}` (operations "
            f"left out ask for {DEFAULT_CHILDREN})."
        ),
    )
    top_fraction: StrictFloat = Field(
        default=0.2,
        gt=0,
        le=1,
        description=(
            "Share of a round's valid children carried into the next round, best score first (at least one "
            "when any is valid)."
        ),
    )
    eliminate: list[EliminationRule] = Field(
        default_factory=lambda: list(ELIMINATION_RULES),
        description=(
            "Elimination rules that apply: `equal` (no information gain over the parent, asked of a model), "
            "`leak` (the evolving prompt's words or text), `unanswerable` (the answering model refuses or says "
            "nothing), `duplicate` (near-duplicate of an instruction in the tree). Default: all four."
        ),
    )
    duplicate_threshold: StrictFloat = Field(
        default=0.7,
        gt=0,
        le=1,
        description=("Jaccard similarity of shingles (0-1] at which two instructions of a tree are duplicates."),
    )
    refusal_max_words: StrictInt = Field(
        default=80,
        ge=1,
        description=(
            "A reply shorter than this many words (a CJK character is a word) that apologises or declines is a "
            "refusal; the paper's 80."
        ),
    )
    leak_phrases: list[str] = Field(
        default_factory=list,
        description=(
            "Phrases that mark a leaked prompt, on top of the built-in ones (`#Rewritten Prompt#`, `给定的提示`...)."
        ),
    )
    text_checks: TextChecks = text_checks_field(
        "each evolved instruction (before any model judges it) and each answer; a child that fails one is "
        "eliminated as `text_check`, with the rule in its detail"
    )
    keep_reasoning: bool = keep_reasoning_field(
        "each answer's `answer_reasoning` (candidates) and `target_reasoning` (flat output); `answer_model` only"
    )
    judge_root: bool = Field(
        default=True, description=("Judge the root query too, so round 0 has a score to compare the rounds with.")
    )
    judge_retries: StrictInt = Field(
        default=2,
        ge=0,
        description=("New samples asked when a judgement cannot be used, before it is recorded as failed."),
    )
    use_history: bool = Field(
        default=True, description=("Show the root record's `history` to the evolving model as context.")
    )
    output: Literal["nested", "flat"] = Field(
        default="nested",
        description=(
            "`nested`: the input record with every round's children (the seed's shape); `flat`: one record per "
            "kept instruction, with lineage in `evol`."
        ),
    )
    output_field: str = Field(
        default="wizard_llm_querys", min_length=1, description=("Field of the rounds in `nested` output.")
    )
    prompts: dict[PromptRole, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict,
        description=(
            "Prompts to use instead of the built-in ones, by role: `depth`, `redirect`, `breadth`, `equal`, "
            "`judge`, `answer` (a built-in name or a YAML prompt file)."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description=("Sampling parameters of the evolving calls (`max_tokens`, ...).")
    )
    judge_params: dict[str, Any] = Field(
        default_factory=dict, description=("Sampling parameters of the judging and equal-check calls.")
    )
    answer_params: dict[str, Any] = Field(
        default_factory=dict, description=("Sampling parameters of the answering calls.")
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description=("Extra values custom prompts read as `options.NAME`.")
    )
    verify: EvolVerify | None = Field(
        default=None,
        description=(
            "Eliminate children whose answer fails a check (`unverifiable`), e.g. `{checker: math}`: a final answer "
            "that parses; with `samples: 3`, three answers that agree. The check runs on the answering model's "
            "answer, so it needs `answer_model`; kept children get `verified`."
        ),
    )

    @model_validator(mode="after")
    def _verify_needs_answers(self) -> "EvolInstructConfig":
        if self.verify is not None:
            if self.answer_model is None:
                raise SettingError("verify", "checks each child's answer: set answer_model")
            raise_first_problem(self.verify, references=False, prefix="verify.")
        return self

    def judge_model_name(self) -> str:
        """The judging model: ``judge_model``, else the evolving model."""
        return self.judge_model or self.model

    def equal_model_name(self) -> str:
        """The equal-check model: ``equal_model``, else the judging model."""
        return self.equal_model or self.judge_model_name()

    def children_per_operation(self) -> dict[str, int]:
        """Children to ask for, by operation."""
        if isinstance(self.children, dict):
            return dict.fromkeys(OPERATION_NAMES, DEFAULT_CHILDREN) | dict(self.children)
        return dict.fromkeys(OPERATION_NAMES, self.children)

    def prompt_refs(self) -> dict[str, str]:
        """The prompt of each role: the built-in one of ``language`` unless ``prompts`` names another."""
        language = self.language
        return {
            "depth": f"{language}/evol_depth",
            "redirect": f"{language}/evol_redirect",
            "breadth": f"{language}/evol_breadth",
            "equal": f"{language}/evol_equal",
            "judge": f"{language}/evol_judge",
            "answer": f"{language}/answer",
            **self.prompts,
        }

    def model_names(self) -> list[str]:
        names = [self.model, self.judge_model_name()]
        if "equal" in self.eliminate:
            names.append(self.equal_model_name())
        if self.answer_model:
            names.append(self.answer_model)
        return list(dict.fromkeys(names))
