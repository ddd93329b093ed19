"""Settings of ``verify``: which checker decides, where the answer and its reference are, what a failure does.

The checker's own settings (:class:`CheckSettings`) are shared: the ``verify`` step has them at its top level,
``dpo`` (``require_verified``) and ``evol_instruct`` (``verify``) nest them, so a math check reads the same in
every place it is written.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from ...config.base import StepConfig
from ...config.messages import SettingError
from ...sandbox.config import SandboxSettings

Checker = Literal["math", "code", "json", "text"]

# Which checker each checker-specific setting belongs to: a setting written for another checker is a mistake
# (``pattern`` under ``checker: math`` would otherwise be silently ignored).
_ONLY_FOR: dict[str, tuple[str, ...]] = {
    "precision": ("math",),
    "timeout_s": ("math",),
    "tests_field": ("code",),
    "entry_point_field": ("code",),
    "sandbox": ("code",),
    "extract": ("code", "json"),
    "schema_": ("json",),
    "schema_field": ("json",),
    "match": ("text",),
    "pattern": ("text",),
    "normalize": ("text",),
}


class CheckSettings(BaseModel):
    """How one answer is checked: the checker and its settings (the reference and tests are read from the record)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    checker: Checker = Field(
        description=(
            "`math`: the answer's final value equals the reference (math-verify: fractions, decimals, percentages, "
            "LaTeX, sets, intervals); `code`: the answer's Python program passes the record's tests in the sandbox; "
            "`json`: the answer parses as JSON and validates against a schema; `text`: exact, contained or regex "
            "match against a reference or a pattern."
        )
    )
    reference_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Record field holding the reference: the expected answer (`math`; `text`: a string, or a list of "
            "acceptable strings). Required for `math`, and for `text` without `pattern`."
        ),
    )
    precision: StrictInt = Field(
        default=6,
        ge=0,
        le=15,
        description=("`math`: decimal places a float is rounded to before comparing (0.333333 = 1/3 at 6)."),
    )
    timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description=(
            "`math`: seconds one parse or comparison may take (whole seconds); past it the verdict is `error`."
        ),
    )
    tests_field: str = Field(
        default="tests",
        min_length=1,
        description=(
            "`code`: record field holding the tests: Python source (asserts, `def test_*()` functions or "
            "HumanEval's `def check(candidate)`), a list of assert snippets, or a list of `{input, output}` "
            "stdin/stdout cases."
        ),
    )
    entry_point_field: str | None = Field(
        default="entry_point",
        min_length=1,
        description=(
            "`code`: record field naming the function that HumanEval-style tests' `check(candidate)` is called with."
        ),
    )
    sandbox: SandboxSettings = Field(
        default_factory=SandboxSettings,
        description=(
            "`code`: limits of each program run (`timeout_s`, `memory_mb`, `max_processes`, `network`, "
            "`site_packages`...; docs/sandbox.md). A run past a limit fails the answer."
        ),
    )
    extract: bool = Field(
        default=True,
        description=(
            "`code`, `json`: find the program or the JSON inside a chatty reply (the last fenced block, else the "
            "first JSON value); false: the whole answer must be the program or the JSON."
        ),
    )
    schema_: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description=("`json`: the JSON Schema every answer must validate against."),
    )
    schema_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "`json`: record field holding each record's own JSON Schema (instead of `schema`). Neither: the answer "
            "only has to parse."
        ),
    )
    match: Literal["exact", "contains", "regex"] = Field(
        default="exact",
        description=(
            "`text`: `exact` (the whole answer equals a reference), `contains` (a reference occurs in the answer) "
            "or `regex` (the pattern, or the reference read as a regular expression, is found in the answer)."
        ),
    )
    pattern: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "`text`: the string (or regular expression, with `match: regex`) every answer is checked against."
        ),
    )
    normalize: bool = Field(
        default=True,
        description=(
            "`text`: compare after Unicode NFKC, case folding and collapsing whitespace (a regex ignores case); "
            "false compares the text as it is."
        ),
    )

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is None:
            return schema
        from jsonschema import SchemaError
        from jsonschema.validators import validator_for

        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"is not a valid JSON Schema: {exc.message}") from None
        return schema

    def problems(self, *, references: bool) -> list[tuple[str, str]]:
        """``(setting, what is wrong)`` for every setting that does not fit the checker.

        ``references``: whether the checked records carry references and tests (a ``verify`` step over input
        records: yes; evolved instructions: no, so a check there must need none). The owner of these settings
        raises the first problem under its own name for them (``require_verified.pattern``).
        """
        found: list[tuple[str, str]] = []
        for name in sorted(self.model_fields_set):
            owners = _ONLY_FOR.get(name)
            if owners and self.checker not in owners:
                setting = type(self).model_fields[name].alias or name
                found.append((setting, f"applies to checker {' or '.join(owners)} only (checker is {self.checker})"))
        if self.checker == "text":
            if self.pattern is not None and self.reference_field is not None:
                found.append(("pattern", "give pattern or reference_field, not both"))
            if self.pattern is None and (self.reference_field is None or not references):
                found.append(
                    ("pattern", "checker text needs a pattern" + (" or a reference_field" if references else ""))
                )
            if self.match == "regex" and self.pattern is not None:
                import re

                try:
                    re.compile(self.pattern)
                except re.error as exc:
                    found.append(("pattern", f"is not a valid regular expression: {exc}"))
        if self.checker == "json" and self.schema_ is not None and self.schema_field is not None:
            found.append(("schema_field", "give schema or schema_field, not both"))
        if references:
            if self.checker == "math" and self.reference_field is None:
                found.append(("reference_field", "checker math needs the field of the reference answer"))
        else:
            for name in ("reference_field", "schema_field"):
                if getattr(self, name) is not None:
                    found.append((name, "has no record to read here: give the check's values in its settings"))
            if self.checker == "code" and "tests_field" in self.model_fields_set:
                found.append(("tests_field", "has no record to read here (a program is checked by running it)"))
        return found


def raise_first_problem(settings: CheckSettings, *, references: bool, prefix: str = "") -> None:
    """Raise the first of ``settings.problems()`` as a :class:`SettingError` against ``prefix + setting``."""
    problems = settings.problems(references=references)
    if problems:
        field, message = problems[0]
        raise SettingError(f"{prefix}{field}", message)


class VerifyConfig(StepConfig, CheckSettings):
    """Check each record's answer by execution or equivalence, not by opinion, and write the verdict on it.

    The answer (``answer_field``, a model's reply) is checked by ``checker``: ``math`` extracts the final answer
    (``\\boxed{}``, "答案：", "the answer is", the last number) and compares it with the reference by value with
    math-verify; ``code`` runs the program with the record's tests in the sandbox (time, memory, file-system and
    network limits); ``json`` parses and validates against a schema; ``text`` matches exactly, by containment or
    by a regular expression. The record gets ``verify`` (``output_field``): ``{passed, status, checker, reason,
    details}`` where ``status`` is ``passed``, ``failed`` (the answer is wrong) or ``error`` (the check could not
    decide: an unreadable reference, a broken sandbox); an error is not a pass.

    With ``each: true`` the answer field holds a list (``response_candidates``): every item is checked, the
    verdict holds one verdict per item in ``items`` and passes when ``pass_when`` says (any or all). ``dpo``'s
    ``require_verified`` reads those per-candidate verdicts. ``on_fail`` decides what a failed record does:
    kept with its verdict (``vote``, ``cascade`` and ``dpo`` read it), dropped (a filter) or failed. The stats
    count ``passed``, ``failed`` and ``error``.
    """

    kind: ClassVar[str] = "verify"
    positional: ClassVar[tuple[str, ...]] = ("checker",)
    summary: ClassVar[str] = (
        "check each answer by execution or equivalence (math, code in a sandbox, JSON schema, text) and "
        "write the verdict; keep, drop or fail what fails"
    )
    example: ClassVar[dict[str, Any]] = {
        "checker": "math",
        "answer_field": "target",
        "reference_field": "answer",
        "on_fail": "keep",
    }

    answer_field: str = Field(
        default="target",
        min_length=1,
        description=(
            "Record field holding the answer to check (a model's reply: text, or a parsed JSON value for `json`)."
        ),
    )
    output_field: str = Field(
        default="verify",
        min_length=1,
        description=("Field that receives the verdict `{passed, status, checker, reason, details}`."),
    )
    each: bool = Field(
        default=False,
        description=(
            "The answer field holds a list of answers (strings, or objects with `text`): check each; the verdict "
            "gets `items`, one verdict per answer, in order."
        ),
    )
    pass_when: Literal["any", "all"] = Field(
        default="any",
        description=("With `each`: the record passes when `any` answer passes, or only when `all` do."),
    )
    on_fail: Literal["keep", "drop", "fail"] = Field(
        default="keep",
        description=(
            "A record that does not pass (failed or error): `keep` it with its verdict, `drop` it (a filter, "
            "counted as `dropped`), or `fail` it (failures.jsonl, with the verdict)."
        ),
    )

    @model_validator(mode="after")
    def _fits_checker(self) -> "VerifyConfig":
        if "pass_when" in self.model_fields_set and not self.each:
            raise SettingError("pass_when", "applies with each: true only")
        raise_first_problem(self, references=True)
        return self


class VerifierVoter(BaseModel):
    """A verify step's verdict counted as one more voter of a ``vote`` (its ``verifiers`` setting)."""

    model_config = ConfigDict(extra="forbid")

    verdict_field: str = Field(
        default="verify", min_length=1, description="Field holding the verdict (the verify step's `output_field`)."
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        description="The voter's name in `votes` and the aggregate's `failed_voters`; defaults to `verdict_field`.",
    )
    pass_label: str = Field(min_length=1, description="The label a passed check votes for (`correct`).")
    fail_label: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "The label a failed check votes for (`incorrect`); null: a failed check does not vote. A check that "
            "could not decide (status `error`) never votes; both count as a failed voter."
        ),
    )
    weight: float = Field(default=1.0, gt=0, strict=True, description="Weight of this voter's vote.")

    def voter_name(self) -> str:
        return self.name or self.verdict_field


class RequireVerified(CheckSettings):
    """``dpo``'s ``require_verified``: how candidates get verdicts, so chosen answers pass and rejected ones fail.

    Either the check settings (``checker`` and its own), run by ``dpo`` on every usable candidate, read from
    the record or generated; or ``verdicts_field``: the verdict of an earlier ``verify`` step with ``each:
    true`` over the record's candidates (its ``items``, one per candidate, in order; generated candidates then
    have none and take no part).
    """

    checker: Checker | None = Field(  # type: ignore[assignment]
        default=None,
        description=(
            "The check run on every candidate (`math`, `code`, `json`, `text`, with their settings as in `verify`)."
        ),
    )
    verdicts_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Instead of a check: the field of a `verify` step's verdict (with `each: true`) over the record's "
            "candidates."
        ),
    )

    def problems(self, *, references: bool) -> list[tuple[str, str]]:
        if self.verdicts_field is not None:
            others = sorted(self.model_fields_set - {"verdicts_field"})
            if others:
                name = type(self).model_fields[others[0]].alias or others[0]
                return [(name, "give verdicts_field or the check's settings, not both")]
            return []
        if self.checker is None:
            return [("checker", "needs a checker (check each candidate) or verdicts_field (an earlier verify step's)")]
        return super().problems(references=references)


class EvolVerify(CheckSettings):
    """``evol_instruct``'s ``verify``: a check each answered child must pass, else it is eliminated (``unverifiable``).

    An evolved instruction has no reference, so the check needs none: ``math`` asks for a final answer that
    parses (with ``samples`` of 2 or more: that the answering model's answers agree), ``code`` for a program that
    runs, ``json`` for JSON that validates against ``schema``, ``text`` for a match of ``pattern``.
    """

    samples: StrictInt = Field(
        default=1,
        ge=1,
        le=8,
        description=(
            "`math`: answers asked of the answering model per child; with 2 or more the child is kept only when every "
            "answer's final value equals the first's (self-consistency: a problem whose answers disagree is ill-posed "
            "or too hard to check)."
        ),
    )

    def problems(self, *, references: bool) -> list[tuple[str, str]]:
        found = super().problems(references=references)
        if self.samples > 1 and self.checker != "math":
            found.insert(0, ("samples", "agreement between answers needs checker math"))
        return found
