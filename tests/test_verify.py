"""The ``verify`` step: code in the sandbox, JSON by schema, text by match; verdicts, counts and ``on_fail``."""

from __future__ import annotations

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.errors import ConfigError
from joydataforge.methods.verify.code_check import same_output, stdio_cases
from joydataforge.methods.verify.extract import extract_code
from joydataforge.methods.verify.step import Verify
from tests.support.harness import run_records, run_step

ADD = "```python\ndef add(a, b):\n    return a + b\n```"
WRONG_ADD = "Here you go:\n```python\ndef add(a, b):\n    return a - b\n```"


def verdict(step: Verify, record: dict) -> dict:
    return run_step(step, record, {})["verify"]


# --- code ------------------------------------------------------------------------------------------------


def test_code_passes_assert_tests_and_fails_wrong_code():
    good = verdict(Verify("code"), {"target": ADD, "tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"})
    assert good["passed"] and good["details"]["found_in"] == "fenced block"
    bad = verdict(Verify("code"), {"target": WRONG_ADD, "tests": "assert add(1, 2) == 3\n"})
    assert bad["status"] == "failed" and "AssertionError" in bad["reason"]


def test_code_snippets_are_counted_one_by_one():
    tests = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(2, 2) == 4"]
    result = verdict(Verify("code"), {"target": WRONG_ADD, "tests": tests})
    assert result["status"] == "failed"
    assert result["details"]["tests"] == 3 and result["details"]["tests_passed"] == 1  # 0 - 0 == 0 holds
    assert [f["test"] for f in result["details"]["failures"]] == [0, 2]
    assert "assert add(1, 2) == 3" in result["reason"]


def test_code_stdin_stdout_cases_compare_tokens():
    program = "import sys\nprint(sum(map(int, sys.stdin.read().split())))"
    cases = [{"input": "1 2", "output": "3"}, {"input": "5\n5\n", "output": "10\n"}]
    assert verdict(Verify("code"), {"target": program, "tests": cases})["details"]["cases_passed"] == 2
    apps = {"inputs": ["1 2", "2 2"], "outputs": ["3", "5"]}
    result = verdict(Verify("code"), {"target": program, "tests": apps})
    assert result["status"] == "failed" and result["details"]["cases_passed"] == 1
    assert result["details"]["first_failure"]["got"].strip() == "4"


def test_humaneval_check_is_called_with_the_entry_point():
    record = {
        "target": "def double(x):\n    return 2 * x\n",
        "entry_point": "double",
        "tests": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(0) == 0\n",
    }
    assert verdict(Verify("code"), record)["passed"]
    wrong = {**record, "target": "def double(x):\n    return x + 2\n"}
    assert verdict(Verify("code"), wrong)["status"] == "failed"
    no_entry = {k: v for k, v in record.items() if k != "entry_point"}
    assert verdict(Verify("code"), no_entry)["status"] == "error"  # the record's fault, not the answer's


def test_test_functions_are_called():
    tests = "def test_small():\n    assert add(1, 1) == 2\n\ndef test_negative():\n    assert add(-1, -1) == -2\n"
    assert verdict(Verify("code"), {"target": ADD, "tests": tests})["passed"]
    assert not verdict(Verify("code"), {"target": WRONG_ADD, "tests": tests})["passed"]


def test_a_program_that_exits_before_the_tests_does_not_pass():
    code = "def add(a, b):\n    return 0\nimport sys\nsys.exit(0)\n"
    result = verdict(Verify("code"), {"target": code, "tests": "assert add(1, 2) == 3"})
    assert result["status"] == "failed" and "exits early" in result["reason"]
    snippets = verdict(Verify("code"), {"target": code, "tests": ["assert add(1, 2) == 3"]})
    assert snippets["status"] == "failed"


def test_an_endless_loop_fails_on_the_sandbox_time_limit():
    step = Verify("code", sandbox={"timeout_s": 1})
    result = verdict(step, {"target": "while True:\n    pass\n", "tests": "assert True"})
    assert result["status"] == "failed" and result["details"]["sandbox"] == "timeout"


def test_a_network_connection_fails_the_answer():
    code = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n"
    result = verdict(Verify("code"), {"target": code, "tests": "assert True"})
    assert result["status"] == "failed" and result["details"]["sandbox"] == "forbidden"


def test_code_that_does_not_parse_fails_without_a_run():
    result = verdict(Verify("code"), {"target": "def add(a, b) return a", "tests": "assert True"})
    assert result["status"] == "failed" and "does not parse" in result["reason"]


def test_code_extraction_and_output_comparison():
    reply = "Text\n```\nuntagged\n```\n```python\nprint(1)\n```\n```\nlast untagged\n```"
    assert extract_code(reply) == ("print(1)\n", "fenced block")
    assert extract_code("<think>```python\nx\n```</think>just code") == ("just code", "whole reply")
    assert same_output("1 2\n3\n", "1 2 3") and not same_output("1 2", "12")
    assert stdio_cases("assert f()") is None
    with pytest.raises(ValueError):
        stdio_cases([{"input": "1"}])


# --- json and text ---------------------------------------------------------------------------------------

SCHEMA = {"type": "object", "required": ["name", "age"], "properties": {"age": {"type": "integer", "minimum": 0}}}


def test_json_parses_extracts_and_validates():
    step = Verify("json", schema=SCHEMA)
    assert verdict(step, {"target": '{"name": "A", "age": 3}'})["passed"]
    fenced = verdict(step, {"target": 'Sure:\n```json\n{"name": "A", "age": 3}\n```'})
    assert fenced["passed"] and fenced["details"]["found_in"] == "fenced block"
    prose = verdict(step, {"target": 'The record is {"name": "A", "age": 3}, as asked.'})
    assert prose["details"]["found_in"] == "embedded value"
    bad = verdict(step, {"target": '{"age": -1}'})
    assert bad["status"] == "failed" and len(bad["details"]["violations"]) == 2
    assert any(v.startswith("$.age:") for v in bad["details"]["violations"])
    assert verdict(step, {"target": "no json"})["reason"].startswith("the answer is not JSON")
    assert verdict(step, {"target": {"name": "parsed already", "age": 1}})["passed"]
    strict = Verify("json", schema=SCHEMA, extract=False)
    assert not verdict(strict, {"target": 'Sure: {"name": "A", "age": 3}'})["passed"]


def test_json_schema_from_the_record():
    step = Verify("json", schema_field="schema")
    assert verdict(step, {"target": "[1, 2]", "schema": {"type": "array", "maxItems": 2}})["passed"]
    assert not verdict(step, {"target": "[1, 2, 3]", "schema": {"type": "array", "maxItems": 2}})["passed"]
    broken = verdict(step, {"target": "[1]", "schema": {"type": "no-such-type"}})
    assert broken["status"] == "error"


def test_text_exact_contains_and_regex():
    exact = Verify("text", reference_field="ref")
    assert verdict(exact, {"target": "  PARIS ", "ref": "paris"})["passed"]
    assert verdict(exact, {"target": "Ｐａｒｉｓ", "ref": ["Lyon", "Paris"]})["passed"]  # full-width letters
    assert not verdict(exact, {"target": "Paris, France", "ref": "Paris"})["passed"]
    assert not verdict(Verify("text", reference_field="ref", normalize=False), {"target": "paris", "ref": "Paris"})[
        "passed"
    ]
    contains = Verify("text", reference_field="ref", match="contains")
    assert verdict(contains, {"target": "It is Paris, France", "ref": "paris"})["passed"]
    regex = Verify("text", match="regex", pattern=r"答案[:：]\s*\d+")
    assert verdict(regex, {"target": "推理……答案：42"})["passed"]
    assert verdict(regex, {"target": "答案是四十二"})["status"] == "failed"


# --- the step -------------------------------------------------------------------------------------------

RECORDS = [
    {"id": "ok", "target": "The answer is \\boxed{\\frac{1}{2}}", "answer": "0.5"},
    {"id": "wrong", "target": "It is 3.", "answer": "4"},
    {"id": "noref", "target": "It is 3."},
]


@pytest.mark.parametrize("on_fail", ["keep", "drop", "fail"])
def test_on_fail_keeps_drops_or_fails(tmp_path, on_fail):
    steps = [{"verify": {"checker": "math", "reference_field": "answer", "on_fail": on_fail}}]
    result = run_records(tmp_path, RECORDS, steps, {})
    by_id = {r["id"]: r for r in result.data}
    failed_ids = {f["id"] for f in result.failures}
    assert by_id["ok"]["verify"]["passed"] is True
    assert "noref" in failed_ids  # a record without its reference is bad input, whatever on_fail says
    stats = result.summary.steps["verify"]
    assert stats["passed"] == 1 and stats["failed"] == 1
    if on_fail == "keep":
        assert by_id["wrong"]["verify"]["status"] == "failed"
        assert by_id["wrong"]["verify"]["details"]["answer"] == "3"
    elif on_fail == "drop":
        assert "wrong" not in by_id and "wrong" not in failed_ids and stats["dropped"] == 1
    else:
        assert "wrong" in failed_ids and "wrong" not in by_id


def test_each_checks_every_candidate_and_passes_by_rule(tmp_path):
    record = {"id": "r", "answer": "6", "response_candidates": ["It is 6", {"text": "It is 7"}, "\\boxed{6}"]}
    steps = [
        {
            "verify": {
                "checker": "math",
                "reference_field": "answer",
                "answer_field": "response_candidates",
                "each": True,
            }
        },
        {
            "verify": {
                "name": "all_pass",
                "checker": "math",
                "reference_field": "answer",
                "answer_field": "response_candidates",
                "each": True,
                "pass_when": "all",
                "output_field": "verify_all",
            }
        },
    ]
    out = run_records(tmp_path, [record], steps, {}).data[0]
    assert [item["passed"] for item in out["verify"]["items"]] == [True, False, True]
    assert out["verify"]["passed"] is True and out["verify"]["details"]["counts"]["passed"] == 2
    assert out["verify_all"]["passed"] is False and out["verify_all"]["status"] == "failed"


def test_settings_mistakes_are_one_line_each():
    def problem(step: dict) -> str:
        with pytest.raises(ConfigError) as caught:
            Pipeline.from_dict({"input": {"path": "x.jsonl"}, "steps": [{"verify": step}]})
        return str(caught.value)

    assert "steps[0] (verify).reference_field: checker math needs" in problem({"checker": "math"})
    assert "(verify).pattern: applies to checker text only" in problem(
        {"checker": "math", "reference_field": "a", "pattern": "x"}
    )
    assert "(verify).sandbox: applies to checker code only" in problem({"checker": "json", "sandbox": {"timeout_s": 1}})
    assert "(verify).pattern: is not a valid regular expression" in problem(
        {"checker": "text", "match": "regex", "pattern": "("}
    )
    assert "(verify).schema: is not a valid JSON Schema" in problem({"checker": "json", "schema": {"type": 3}})
    assert "(verify).checker: must be one of" in problem({"checker": "maths"})
    assert "(verify).pass_when: applies with each: true only" in problem(
        {"checker": "math", "reference_field": "a", "pass_when": "all"}
    )
