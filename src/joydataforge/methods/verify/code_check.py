"""The ``code`` checker: run the answer's Python program with the record's tests in the sandbox.

Three shapes of tests, the ones datasets carry:

- Python source: asserts, ``def test_*()`` functions (each called), or HumanEval's ``def check(candidate)``
  (called with the record's entry point). Program and tests run as one script.
- A list of snippets (MBPP's ``test_list``: ``["assert f(1) == 2", ...]``): each run after the program, counted.
- stdin/stdout cases (``[{input, output}]``, or APPS' ``{inputs: [...], outputs: [...]}``): the program runs once per
  case with the input on stdin; its output must match, compared token by token (spacing and line ends aside).

A run passes only when the sandbox says ``ok`` *and* the script reached its end: a program that calls ``exit()``
before the tests ran must not pass, so the script prints a random marker after the last test and the verdict
looks for it. Limits (time, memory, processes, network, files) are the sandbox's (``sandbox`` settings); a run
past one fails the answer with the sandbox's reason.
"""

from __future__ import annotations

import ast
import json
import secrets
from typing import Any

from ...engine.step import Record
from ...errors import InputError
from ...sandbox import SandboxResult, run_python
from .config import CheckSettings
from .extract import extract_code
from .verdict import Verdict, error, failed, passed

CHECKER = "code"
SHOWN_CHARS = 400
"""Characters of stderr or of a mismatched output kept in a verdict's details."""


def _tail(text: str) -> str:
    return text[-SHOWN_CHARS:]


def stdio_cases(tests: Any) -> list[tuple[str, str]] | None:
    """Tests as ``(stdin, expected stdout)`` cases, or ``None`` when they are not stdin/stdout cases."""
    if isinstance(tests, str) and tests.lstrip().startswith("{"):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError:
            return None
    if isinstance(tests, dict) and isinstance(tests.get("inputs"), list) and isinstance(tests.get("outputs"), list):
        if len(tests["inputs"]) != len(tests["outputs"]):
            raise ValueError(f"{len(tests['inputs'])} inputs but {len(tests['outputs'])} outputs")
        return [(_text(i), _text(o)) for i, o in zip(tests["inputs"], tests["outputs"])]
    if isinstance(tests, list) and tests and all(isinstance(t, dict) for t in tests):
        cases = []
        for k, case in enumerate(tests):
            stdin = case.get("input", case.get("stdin"))
            stdout = case.get("output", case.get("stdout", case.get("expected_output")))
            if stdin is None or stdout is None:
                raise ValueError(f"case {k} needs `input` and `output` (got keys {sorted(case)})")
            cases.append((_text(stdin), _text(stdout)))
        return cases
    return None


def _text(value: Any) -> str:
    if isinstance(value, list):  # some datasets keep a case's lines as a list
        return "\n".join(str(v) for v in value)
    return str(value)


def same_output(expected: str, actual: str) -> bool:
    """Token by token: judges accept any spacing and line ends around the same tokens."""
    return expected.split() == actual.split()


def _top_level_functions(source: str) -> list[tuple[str, int]]:
    """``(name, number of positional parameters)`` of every function the tests define at top level."""
    return [
        (node.name, len(node.args.args))
        for node in ast.parse(source).body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def script_with_tests(code: str, tests: str, entry_point: str | None, marker: str) -> str:
    """The program, then the tests, then calls of their test functions (and ``check``), then the marker."""
    calls = []
    for name, params in _top_level_functions(tests):
        if name.startswith("test") and params == 0:
            calls.append(f"{name}()")
        elif name == "check" and params == 1:
            if not entry_point:
                raise ValueError("the tests define check(candidate) but the record names no entry point")
            calls.append(f"check({entry_point})")
    return "\n\n".join([code, "# --- tests ---", tests, "# --- test calls ---", *calls, f"print({marker!r})"]) + "\n"


def script_with_snippets(code: str, snippets: list[str], marker: str) -> str:
    """The program, then each snippet in its own ``try``: how many passed, and the first failures, as JSON."""
    return (
        f"{code}\n\n# --- tests ---\n"
        f"__jf_tests = {snippets!r}\n"
        "__jf_failures = []\n"
        "for __jf_k, __jf_source in enumerate(__jf_tests):\n"
        "    try:\n"
        "        exec(compile(__jf_source, f'<test {__jf_k}>', 'exec'), globals())\n"
        "    except BaseException as __jf_exc:\n"
        "        __jf_failures.append([__jf_k, (type(__jf_exc).__name__ + ': ' + str(__jf_exc))[:200]])\n"
        "import json as __jf_json\n"
        f"print({marker!r} + __jf_json.dumps(__jf_failures))\n"
    )


class CodeChecker:
    """Runs a reply's program against the record's tests, each run in a fresh sandboxed interpreter."""

    def __init__(self, settings: CheckSettings):
        self.tests_field = settings.tests_field
        self.entry_point_field = settings.entry_point_field
        self.extract = settings.extract
        self.limits = settings.sandbox.limits()

    def tests_of(self, record: Record) -> Any:
        tests = record.get(self.tests_field)
        if tests is None or (isinstance(tests, (str, list, dict)) and not tests):
            raise InputError("missing or empty (the code checker runs the answer against it)", field=self.tests_field)
        return tests

    async def check(self, answer: Any, record: Record, reference: Any = None) -> Verdict:
        """``reference``: tests to use instead of the record's (not used by the built-in owners)."""
        tests = reference if reference is not None else self.tests_of(record)
        if not isinstance(answer, str) or not answer.strip():
            return failed(CHECKER, "the answer holds no program")
        code, found_in = extract_code(answer) if self.extract else (answer, "whole answer")
        try:
            ast.parse(code)
        except SyntaxError as exc:
            return failed(CHECKER, f"the program does not parse: {exc.msg} (line {exc.lineno})", found_in=found_in)
        try:
            cases = stdio_cases(tests)
        except ValueError as exc:
            return error(CHECKER, f"the record's tests are unusable: {exc}")
        try:
            if cases is not None:
                return await self._stdio(code, cases, found_in)
            return await self._scripted(code, tests, record, found_in)
        except OSError as exc:  # the sandbox could not start a process: not the answer's fault
            return error(CHECKER, f"the sandbox failed: {exc}")

    async def _stdio(self, code: str, cases: list[tuple[str, str]], found_in: str) -> Verdict:
        results = []
        for k, (stdin, expected) in enumerate(cases):
            run = await run_python(code, stdin=stdin, limits=self.limits)
            if run.verdict != "ok":
                results.append({"case": k, "verdict": run.verdict, "reason": run.reason, "stderr": _tail(run.stderr)})
            elif not same_output(expected, run.stdout):
                results.append(
                    {"case": k, "verdict": "wrong_output", "expected": _tail(expected), "got": _tail(run.stdout)}
                )
        details = {"found_in": found_in, "cases": len(cases), "cases_passed": len(cases) - len(results)}
        if not results:
            return passed(CHECKER, f"all {len(cases)} stdin/stdout case(s) passed", **details)
        first = results[0]
        why = "wrong output" if first["verdict"] == "wrong_output" else f"{first['verdict']}: {first['reason']}"
        return failed(
            CHECKER,
            f"{len(results)} of {len(cases)} case(s) failed; case {first['case']}: {why}",
            **details,
            first_failure=first,
        )

    async def _scripted(self, code: str, tests: Any, record: Record, found_in: str) -> Verdict:
        marker = f"__joyforge_tests_done_{secrets.token_hex(8)}__"
        snippets = [tests] if isinstance(tests, str) else tests
        if not isinstance(snippets, list) or not all(isinstance(s, str) for s in snippets):
            return error(CHECKER, "the record's tests are neither Python source, snippets nor stdin/stdout cases")
        if isinstance(tests, str):
            entry = record.get(self.entry_point_field) if self.entry_point_field else None
            try:
                script = script_with_tests(code, tests, entry if isinstance(entry, str) else None, marker)
            except SyntaxError as exc:
                return error(CHECKER, f"the record's tests do not parse: {exc.msg} (line {exc.lineno})")
            except ValueError as exc:
                return error(CHECKER, str(exc))
        else:
            script = script_with_snippets(code, snippets, marker)
        run = await run_python(script, limits=self.limits)
        return self._judge(run, marker, None if isinstance(tests, str) else snippets, found_in)

    def _judge(self, run: SandboxResult, marker: str, snippets: list[str] | None, found_in: str) -> Verdict:
        details: dict[str, Any] = {"found_in": found_in, "sandbox": run.verdict}
        if run.verdict != "ok":
            details["stderr"] = _tail(run.stderr)
            return failed(CHECKER, f"{run.verdict}: {run.reason or 'the tests failed'}", **details)
        lines = [line for line in run.stdout.splitlines() if line.startswith(marker)]
        if not lines:
            return failed(CHECKER, "the program ended before the tests ran (it exits early)", **details)
        if snippets is None:
            return passed(CHECKER, "the tests passed", **details)
        failures = json.loads(lines[-1][len(marker) :])
        count = len(snippets)
        details.update(tests=count, tests_passed=count - len(failures))
        if not failures:
            return passed(CHECKER, f"all {count} test(s) passed", **details)
        details["failures"] = [{"test": k, "source": snippets[k][:200], "error": why} for k, why in failures[:5]]
        k, why = failures[0]
        return failed(
            CHECKER, f"{len(failures)} of {count} test(s) failed; test {k} ({snippets[k][:80]!r}): {why}", **details
        )
