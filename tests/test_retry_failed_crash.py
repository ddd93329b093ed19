"""``--retry-failed`` is crash-safe at every instant, and gives the output back in input order.

A real ``joyforge run --retry-failed`` child process SIGKILLs itself at each commit point of the run
(``JOYFORGE_TEST_CRASH_AT``, see :func:`joydataforge.engine.run_state.crash_point`): after the outputs of a
batch, after its failures, after its ledger lines, with a compacted failures.jsonl written but not swapped
in, after the swap, after the order is restored, and right after a resume's own repair. After each kill:
every record is where its ledger line says (none in neither file), and resuming ends with every input
record exactly once, in input order.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from joydataforge.engine.run_state import CRASH_ENV, RunState
from joydataforge.errors import ExitCode

REPO = Path(__file__).resolve().parent.parent
N = 45


def text_of(i: int) -> str:
    kinds = {0: "plain", 1: "flaky", 2: "flaky twice", 3: "twice", 4: "broken"}
    return f"{kinds[i % 5]} {i}"


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in (CRASH_ENV, "JOYFORGE_TEST_FLAKY")}
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO), out.get("PYTHONPATH")]))
    out.update(extra)
    return out


def joyforge(work: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "joydataforge", "run", str(work / "pipeline.yaml"), "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(**extra),
        cwd=work,
    )


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []


def last_status(out: Path) -> dict[str, str]:
    status: dict[str, str] = {}
    for entry in read(out / "ledger.jsonl"):
        status[entry["id"]] = entry["status"]
    return status


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A folder after a first run in which the flaky and the broken records failed (exit status 3)."""
    work = tmp_path_factory.mktemp("first")
    (work / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "input": text_of(i)}) + "\n" for i in range(N)), "utf-8"
    )
    (work / "pipeline.yaml").write_text(
        "input: {path: in.jsonl}\nsteps:\n  - tests.crash_steps.Flaky: {}\n"
        "output: {dir: out}\nrun: {concurrency: 4, cache: null}\n",
        "utf-8",
    )
    done = joyforge(work, JOYFORGE_TEST_FLAKY="fail")
    assert done.returncode == ExitCode.SOME_FAILED, done.stderr
    assert len(read(work / "out" / "failures.jsonl")) == 27  # 18 flaky + 9 broken
    return work


@pytest.fixture
def work(first_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(first_run, tmp_path / "w")
    return tmp_path / "w"


def assert_every_record_where_its_ledger_says(out: Path) -> None:
    """The invariant at every instant: a record whose last status is ok has its lines in data.jsonl, failed
    in failures.jsonl; every input record of the first run has a status. Stale or uncommitted lines may
    sit in the files after a kill; the next run's open removes them (checked by assert_final)."""
    status = last_status(out)
    assert set(status) == {f"r{i}" for i in range(N)}
    in_data = {r["_meta"]["source_id"] for r in read(out / "data.jsonl")}
    in_failures = {r["source_id"] for r in read(out / "failures.jsonl")}
    for source_id, state in status.items():
        assert source_id in (in_data if state == "ok" else in_failures), (source_id, state)


def assert_final(out: Path, *, still_flaky_failed: bool) -> None:
    """Exactly once, nothing lost, in input order, and each record in the file its ledger names."""
    status = last_status(out)
    data, failures = read(out / "data.jsonl"), read(out / "failures.jsonl")
    expected: list[tuple[str, str]] = []
    for i in range(N):
        text = text_of(i)
        if "broken" in text or (still_flaky_failed and "flaky" in text):
            continue
        expected.append((f"r{i}", f"done: {text}"))
        if "twice" in text:
            expected.append((f"r{i}", f"again: {text}"))
    assert [(r["_meta"]["source_id"], r["target"]) for r in data] == expected  # once each, in input order
    failed = sorted(f["source_id"] for f in failures)
    assert failed == sorted({sid for sid, state in status.items() if state == "failed"})  # once each
    assert {sid for sid, _ in expected}.isdisjoint(failed)
    assert len(status) == N


POINTS = [
    "data-written:1",
    "data-written:2",
    "failures-written:1",
    "ledger-written:1",
    "ledger-written:2",
    "replacing:1",
    "compacted-at-end",
    "replacing:2",
    "reordered",
]


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_commit_point_of_retry_failed(work, point):
    killed = joyforge(work, "--retry-failed", **{CRASH_ENV: point})
    assert killed.returncode == -signal.SIGKILL, f"{point} was never reached:\n{killed.stderr}"
    out = work / "out"
    assert_every_record_where_its_ledger_says(out)
    # a plain resume after the kill: nothing lost, nothing twice (records not yet redone stay failed)
    resumed = joyforge(work)
    assert resumed.returncode == ExitCode.SOME_FAILED, resumed.stderr
    assert_every_record_where_its_ledger_says(out)
    # and --retry-failed again finishes the job: only the broken records are left in failures.jsonl
    again = joyforge(work, "--retry-failed")
    assert again.returncode == ExitCode.SOME_FAILED, again.stderr
    assert_final(out, still_flaky_failed=False)
    assert all("broken" in f["record"]["input"] for f in read(out / "failures.jsonl"))


def test_kill_right_after_the_repair_on_open(work):
    """A retry killed after committing redone records leaves stale failure lines: the next open drops them
    (one atomic replace) before appending; a kill right after that drop loses nothing either."""
    assert joyforge(work, "--retry-failed", **{CRASH_ENV: "ledger-written:1"}).returncode == -signal.SIGKILL
    killed = joyforge(work, "--retry-failed", **{CRASH_ENV: "compacted-at-open"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert_every_record_where_its_ledger_says(work / "out")
    assert joyforge(work, "--retry-failed").returncode == ExitCode.SOME_FAILED
    assert_final(work / "out", still_flaky_failed=False)


def test_retry_failed_without_a_kill_restores_input_order(work):
    data_before = read(work / "out" / "data.jsonl")
    assert_final(work / "out", still_flaky_failed=True)
    assert data_before
    done = joyforge(work, "--retry-failed")
    assert done.returncode == ExitCode.SOME_FAILED
    assert_final(work / "out", still_flaky_failed=False)  # redone records are back in their input places
    summary = json.loads((work / "out" / "summary.json").read_text("utf-8"))
    assert summary["failed"] == 9 and summary["totals"] == {"ok": 36, "filtered": 0, "failed": 9}


def test_open_with_retry_failed_deletes_nothing(work):
    """The old protocol rewrote failures.jsonl at open: a kill before the redone records committed lost them."""
    out = work / "out"
    before = {name: (out / name).read_bytes() for name in ("data.jsonl", "failures.jsonl", "ledger.jsonl")}
    state = RunState.open(out, json.loads((out / "run.json").read_text())["fingerprint"], retry_failed=True)
    assert len(state.redo) == 27 and not any(state.is_done(sid) for sid in state.redo)
    assert {name: (out / name).read_bytes() for name in before} == before
