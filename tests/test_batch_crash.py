"""A batched run killed (SIGKILL) at each step of submitting and of collecting a batch: the next runs never create a
batch twice, never lose a result, and finish the pipeline with no live call.

A real ``joyforge run --batch`` child process kills itself at a named point (``JOYFORGE_TEST_CRASH_AT``, see
:func:`joydataforge.engine.run_state.crash_point`; the points are in :mod:`joydataforge.engine.batches`):
``batch-intent`` (the batch recorded in batches.json, nothing sent), ``batch-uploaded`` (its file uploaded and
recorded), ``batch-created`` (created at the provider, its id not recorded: the next run must find it by its
metadata) and ``batch-results-cached`` (a finished batch's results committed to the call cache, the batch not
yet marked collected). The provider is the in-process mock server, which outlives the killed process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from joydataforge.engine.run_state import CRASH_ENV
from joydataforge.errors import ExitCode

REPO = Path(__file__).resolve().parent.parent
N = 5
STEPS = {
    1: "  - generate: {model: m, prompt: en/answer}\n",
    2: "  - generate: {model: m, prompt: en/answer}\n"
    "  - label: {model: m, prompt: en/label, options: {labels: [good, bad]}}\n",
}


def joyforge(work: Path, crash: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO), env.get("PYTHONPATH")]))
    if crash:
        env[CRASH_ENV] = crash
    return subprocess.run(
        [sys.executable, "-m", "joydataforge", "run", "pipeline.yaml", "--batch", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=work,
    )


def project(work: Path, base_url: str, stages: int) -> None:
    (work / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "input": f"question {i}"}) + "\n" for i in range(N))
    )
    (work / "models.yaml").write_text(
        f"models:\n  m:\n    backend: openai\n    model: mock-model\n    base_url: {base_url}\n    max_retries: 0\n"
    )
    (work / "pipeline.yaml").write_text(
        f"input: {{path: in.jsonl}}\nmodels: models.yaml\nsteps:\n{STEPS[stages]}"
        "output: {dir: out}\nrun: {cache: cache.sqlite, progress: false}\n"
    )


def finish(work: Path, most: int = 6) -> list[int]:
    """Run until the pipeline is done; the exit statuses on the way."""
    codes = []
    for _ in range(most):
        done = joyforge(work)
        codes.append(done.returncode)
        assert done.returncode in (ExitCode.OK, ExitCode.STOPPED), done.stderr
        if done.returncode == ExitCode.OK:
            return codes
    raise AssertionError(f"not done after {most} runs: {codes}")


def check_complete(work: Path, mock_server, stages: int) -> dict:
    records = [json.loads(x) for x in (work / "out" / "data.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [f"r{i}" for i in range(N)]  # each once, none lost
    assert all(r["target"] == f"echo: question {r['id'][1:]}" for r in records)
    stats = mock_server.stats()
    assert stats["total"] == 0  # no live call
    assert stats["batch_api"]["POST /v1/batches"] == stages  # no batch created twice
    assert stats["batch_requests"] == stages * N
    book = json.loads((work / "out" / "batches.json").read_text())
    assert [b["state"] for b in book["batches"]] == ["collected"] * stages
    return stats


@pytest.mark.parametrize("point", ["batch-intent", "batch-uploaded", "batch-created"])
def test_killed_while_submitting(mock_server, tmp_path, point):
    project(tmp_path, mock_server.url, 1)
    killed = joyforge(tmp_path, crash=point)
    assert killed.returncode == -9, killed.stderr
    book = json.loads((tmp_path / "out" / "batches.json").read_text())  # the intent was recorded before sending
    assert [b["state"] for b in book["batches"]] == ["intent" if point == "batch-intent" else "uploaded"]
    again = joyforge(tmp_path)  # sends it, or finds the batch the killed run created
    assert again.returncode == ExitCode.STOPPED and "submitted (5 requests)" in again.stderr, again.stderr
    assert finish(tmp_path) == [ExitCode.OK]
    stats = check_complete(tmp_path, mock_server, 1)
    assert stats["batch_api"]["POST /v1/files"] == 1  # the upload recorded before the kill is not made again
    if point == "batch-created":
        assert stats["batch_api"]["GET /v1/batches"] >= 1  # looked up by its metadata


@pytest.mark.parametrize("stage", [1, 2])
def test_killed_while_collecting(mock_server, tmp_path, stage):
    """Killed after a batch's results are committed to the cache, before the batch is marked collected: the
    next run collects it again (the output downloaded twice), and nothing is lost or sent twice."""
    project(tmp_path, mock_server.url, 2)
    codes = [joyforge(tmp_path).returncode for _ in range(stage)]  # submits stage 1 (and collects it, sends 2)
    assert codes == [ExitCode.STOPPED] * stage
    killed = joyforge(tmp_path, crash="batch-results-cached")
    assert killed.returncode == -9, killed.stderr
    book = json.loads((tmp_path / "out" / "batches.json").read_text())
    assert book["batches"][stage - 1]["state"] == "submitted"
    finish(tmp_path)
    stats = check_complete(tmp_path, mock_server, 2)
    assert stats["batch_api"]["GET /v1/files/{id}/content"] == 3  # two outputs, one downloaded twice
