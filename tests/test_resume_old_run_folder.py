"""An output folder half written by the pre-refactor code (git 19ad789) still resumes with this code.

Why: users have run folders on disk. Re-running the same command over one must carry on where it
stopped: same pipeline fingerprint (run.json), same ledger and data formats, nothing done twice. The
folder in tests/fixtures/run_folder_v0_1/run/ holds 3 of the 6 records of pipeline.yaml, written by the
old code (make_run_folder.py). Only the command line and the tests' mock server are used, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mock_openai import MockServer, start_mock_server

FIXTURE = Path(__file__).parent / "fixtures" / "run_folder_v0_1"
PLACEHOLDER = "http://mock-openai.invalid/v1"


@pytest.fixture
def server() -> Iterator[MockServer]:
    """A fresh mock for the test, so its request counts are this run's alone."""
    mock = start_mock_server()
    try:
        yield mock
    finally:
        mock.close()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def test_half_done_folder_from_the_old_code_resumes(tmp_path: Path, server: MockServer) -> None:
    work = tmp_path / "work"
    shutil.copytree(FIXTURE, work, ignore=shutil.ignore_patterns("make_run_folder.py", "__pycache__"))
    models = work / "models.yaml"
    models.write_text(models.read_text("utf-8").replace(PLACEHOLDER, server.url), "utf-8")
    run = work / "run"
    old_data = (run / "data.jsonl").read_text("utf-8")
    old_ids = [r["id"] for r in _lines(run / "data.jsonl")]
    inputs = _lines(work / "input.jsonl")
    assert len(old_ids) == 3 and len(inputs) == 6

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "joydataforge",
            "run",
            str(work / "pipeline.yaml"),
            "-o",
            str(run),
            "--models",
            str(models),
            "--no-progress",
        ],
        cwd=work,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert "different pipeline" not in output, output
    assert done.returncode == 0, output

    # The 3 finished records were not redone: 2 calls (generate, label) for each of the 3 others only,
    # and no request carried a finished record's query.
    stats = server.stats()
    assert stats["total"] == 6, stats["by_endpoint"]
    sent = json.dumps([r["body"] for r in stats["last_requests"]], ensure_ascii=False)
    for record in inputs:
        assert (record["input"] in sent) == (record["id"] not in old_ids), record["id"]

    # The old lines are kept as they were; every input record is in data.jsonl exactly once, in the same shape.
    data_text = (run / "data.jsonl").read_text("utf-8")
    assert data_text.startswith(old_data)
    data = _lines(run / "data.jsonl")
    assert sorted(r["id"] for r in data) == sorted(r["id"] for r in inputs)
    assert len({json.dumps(sorted(r)) for r in data}) == 1, [sorted(r) for r in data]
    assert all(r["target"] == "echo: " + r["input"] for r in data)
    ledger = _lines(run / "ledger.jsonl")
    assert sorted(e["id"] for e in ledger) == sorted(r["id"] for r in inputs)
    assert {e["status"] for e in ledger} == {"ok"}
    failures = run / "failures.jsonl"
    assert not failures.exists() or not failures.read_text("utf-8").strip()
