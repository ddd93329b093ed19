"""examples/verify_math.yaml and examples/verify_code.yaml on the embedded model (slow).

The 135M model gets most answers wrong; what is checked is that every record gets a verdict the record itself
supports: a math verdict agrees with math-verify asked directly about the answer it reports, and a code verdict
agrees with running the same program and tests in a plain Python process outside the sandbox.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from joydataforge.methods.verify.extract import as_latex, extract_code
from tests.support.harness import assert_run_finished

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(tmp_path: Path, stem: str, limit: int) -> tuple[list[dict], list[dict], dict]:
    from click.testing import CliRunner

    from joydataforge.cli import cli

    work = tmp_path / "example"
    work.mkdir()
    for name in (f"{stem}.yaml", f"{stem}.jsonl"):
        shutil.copy(EXAMPLES / name, work / name)  # a copy: its call cache starts empty, real model calls
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["run", str(work / f"{stem}.yaml"), "-o", str(out), "--limit", str(limit), "--no-progress"]
    )
    assert_run_finished(result, out)

    def lines(name: str) -> list[dict]:
        path = out / name
        return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []

    return lines("data.jsonl"), lines("failures.jsonl"), json.loads((out / "summary.json").read_text("utf-8"))


def counted(records: list[dict], stats: dict) -> None:
    """Every record has a verdict and the step's counts add up to them."""
    statuses = [r["verify"]["status"] for r in records]
    assert set(statuses) <= {"passed", "failed", "error"}
    for status in ("passed", "failed", "error"):
        assert stats.get(status, 0) == statuses.count(status)
    for record in records:
        assert record["verify"]["passed"] is (record["verify"]["status"] == "passed")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_verify_math_example(tmp_path):
    from math_verify import parse, verify

    limit = 5
    records, failures, summary = run_example(tmp_path, "verify_math", limit)
    assert len(records) + len(failures) == limit and not failures
    counted(records, summary["steps"]["verify"])
    for record in records:
        verdict = record["verify"]
        assert verdict["checker"] == "math"
        if "answer" not in verdict["details"]:
            assert verdict["reason"] == "no final answer found in the reply"
            continue
        # math-verify asked directly about the answer the verdict says it read agrees with the verdict
        reference = parse(as_latex(record["answer"])) or parse(f"${record['answer']}$")
        assert verify(reference, parse(as_latex(verdict["details"]["answer"]))) is verdict["passed"], record


def outside_the_sandbox(code: str, tests, cwd: Path) -> bool:
    """The same program and snippet tests in a plain interpreter: the oracle for the sandbox's verdict."""
    script = code + "\n" + ("\n".join(tests) if isinstance(tests, list) else tests) + "\nprint('__done__')\n"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=cwd)
    return run.returncode == 0 and "__done__" in run.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_verify_code_example(tmp_path):
    limit = 3  # snippet tests and plain assert source: both have an outside oracle
    records, failures, summary = run_example(tmp_path, "verify_code", limit)
    assert len(records) + len(failures) == limit and not failures
    counted(records, summary["steps"]["verify"])
    for record in records:
        verdict = record["verify"]
        assert verdict["checker"] == "code" and verdict["status"] in ("passed", "failed")
        code, _ = extract_code(record["target"])
        assert outside_the_sandbox(code, record["tests"], tmp_path) is verdict["passed"], record
