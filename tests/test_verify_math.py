"""The math checker on a small set written for these tests: equal values in different forms pass, others fail.

Each case is (reply, reference, passes). The replies are shaped like model output: prose, ``\\boxed{}``, "答案：",
reasoning in ``<think>`` tags; the references like dataset answers (plain numbers, LaTeX, GSM8K's numbers).
"""

from __future__ import annotations

import asyncio

import pytest

from joydataforge.errors import InputError
from joydataforge.methods.verify.config import CheckSettings
from joydataforge.methods.verify.extract import final_math_answer, last_boxed, strip_thinking
from joydataforge.methods.verify.math_check import MathChecker

EQUAL = [
    # fractions, decimals and their LaTeX forms
    ("The answer is \\boxed{\\frac{1}{2}}", "0.5"),
    ("So x = 0.5", "\\frac{1}{2}"),
    ("$\\dfrac{2}{4}$", "1/2"),
    ("We get 3/4 of the cake.", "0.75"),
    ("\\(\\frac{\\sqrt{2}}{2}\\)", "\\sqrt{2}/2"),
    ("about 0.3333333", "1/3"),
    # percentages
    ("So 50% of them.", "1/2"),
    ("$25\\%$", "0.25"),
    ("50%", "50"),  # math-verify also takes a percentage as its number: datasets often drop the sign
    # units
    ("The rope is 5 cm long.", "5"),
    ("$12\\,\\text{km/h}$", "12"),
    # integers with separators and signs, GSM8K-style references
    ("Total: 1,000 apples. The answer is 1000", "1,000"),
    ("答案：-7", "-7"),
    ("最终答案是 18。", "18"),
    ("#### 72", "72"),
    # expressions, equations, sets and intervals
    ("$x^2+2x+1$", "(x+1)^2"),
    ("$x = 2$", "2"),
    ("$\\{1, 2, 3\\}$", "\\{3, 2, 1\\}"),
    ("The solution set is $(0, 1]$", "(0,1]"),
    ("$\\pi/2$", "\\frac{\\pi}{2}"),
    # the reasoning is not the answer
    ("<think>maybe 5? no</think> The answer is 6", "6"),
    # the last \boxed wins over earlier ones
    ("First \\boxed{3}, corrected: \\boxed{4}", "4"),
]

DIFFERENT = [
    ("I think it is 7 apples", "8"),
    ("\\boxed{\\frac{1}{3}}", "0.34"),
    ("The solution set is $(0, 1]$", "[0,1]"),
    ("$\\{1, 2\\}$", "\\{1, 2, 3\\}"),
    ("<think>the answer is 6</think> The answer is 5", "6"),
    ("答案：3", "4"),
    ("50%", "0.6"),
]


def check(reply: str, reference: str, **settings) -> dict:
    checker = MathChecker(CheckSettings(checker="math", reference_field="answer", **settings))
    return asyncio.run(checker.check(reply, {"answer": reference})).as_dict()


@pytest.mark.parametrize("reply,reference", EQUAL)
def test_equal_values_in_other_forms_pass(reply, reference):
    verdict = check(reply, reference)
    assert verdict["status"] == "passed", verdict
    assert verdict["details"]["reference"]


@pytest.mark.parametrize("reply,reference", DIFFERENT)
def test_different_values_fail(reply, reference):
    verdict = check(reply, reference)
    assert verdict["status"] == "failed", verdict
    assert verdict["passed"] is False


def test_a_reply_without_a_number_fails_and_says_why():
    verdict = check("I do not know.", "3")
    assert verdict["status"] == "failed"
    assert verdict["reason"] == "no final answer found in the reply"


def test_an_unreadable_reference_is_an_error_not_a_failure():
    verdict = check("42", "no math here")
    assert verdict["status"] == "error"
    assert "reference" in verdict["reason"]


def test_a_missing_reference_is_bad_input():
    checker = MathChecker(CheckSettings(checker="math", reference_field="answer"))
    with pytest.raises(InputError) as caught:
        asyncio.run(checker.check("42", {"question": "?"}))
    assert caught.value.field == "answer"


def test_precision_decides_how_close_a_float_must_be():
    assert check("0.3334", "1/3", precision=3)["status"] == "passed"
    assert check("0.3334", "1/3", precision=6)["status"] == "failed"


def test_a_hostile_expression_is_stopped_by_the_time_limit_and_others_go_on():
    checker = MathChecker(CheckSettings(checker="math", reference_field="answer", timeout_s=1))
    # the quick one shares the workers but not the 1 s limit, which a busy machine's first parse could exceed
    patient = MathChecker(CheckSettings(checker="math", reference_field="answer", timeout_s=30))

    async def both():
        return await asyncio.gather(
            checker.check("$9^{9^{9^{9}}}$", {"answer": "10^{10^{10}}"}),
            patient.check("1/2", {"answer": "0.5"}),
        )

    slow, quick = asyncio.run(both())
    assert slow.status == "error" and "1 s" in slow.reason
    assert quick.status == "passed"


def test_without_a_reference_an_answer_passes_when_it_has_a_final_value():
    checker = MathChecker(CheckSettings(checker="math"))
    assert asyncio.run(checker.check("so the result: 12 cm", {})).status == "passed"
    assert asyncio.run(checker.check("nothing to see", {})).status == "failed"


def test_an_explicit_reference_replaces_the_records():
    checker = MathChecker(CheckSettings(checker="math", reference_field="answer"))
    assert asyncio.run(checker.check("0.5", {"answer": "3"}, reference="\\frac{1}{2}")).status == "passed"


def test_extraction_pieces():
    assert strip_thinking("<think>a</think>b") == "b"
    assert strip_thinking("reasoning without an opening tag</think>answer") == "answer"
    assert last_boxed("\\boxed{\\frac{1}{2}} and \\boxed{x^{2}}") == "x^{2}"
    assert final_math_answer("答案：\\frac{1}{2}") == ("$\\frac{1}{2}$", "marker")
    assert final_math_answer("The answer is 12.") == ("12", "marker")
    assert final_math_answer("12 apples") == ("12 apples", "text")
