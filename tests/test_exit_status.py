"""``joyforge run`` exit statuses and one-line errors (issue 13): the run's verdict is in its exit status.

0 all done, 1 a bug (traceback only with --debug), 2 configuration / input / files, 3 some failed, 4 none
succeeded, 5 stopped early and resumable (endpoint down, --max-failures, Ctrl-C, disk full). Most tests
call the real entry point in-process (so a write can be made to fail); Ctrl-C and the closed port use a
child process, as a user would meet them.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.errors import EndpointDown, ExitCode, RunStopped
from joydataforge.io.writers import JsonlAppender, dumps_line
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from tests.mock_openai.server import spawn_mock_server
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import joyforge

REPO = Path(__file__).resolve().parent.parent
FAIL = "[[mock:status=400]]"  # the mock answers 400: a record that fails (max_retries: 0 keeps it quick)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []


def project(tmp_path: Path, inputs: list[str], base_url: str, run: str = "") -> Path:
    """A pipeline file, its models.yaml and its input under tmp_path; returns the pipeline file."""
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "input": text}) + "\n" for i, text in enumerate(inputs)), "utf-8"
    )
    (tmp_path / "models.yaml").write_text(
        f"models:\n  mock:\n    backend: openai\n    model: mock\n    base_url: {base_url}\n"
        "    max_concurrency: 4\n    max_retries: 0\n",
        "utf-8",
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "input: {path: in.jsonl}\nmodels: models.yaml\n"
        "steps:\n  - generate: {model: mock, prompt: en/answer}\n"
        f"output: {{dir: out}}\nrun: {{concurrency: 2, cache: null{run}}}\n",
        "utf-8",
    )
    return path


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO), env.get("PYTHONPATH")]))
    return env


def test_all_done_is_0(tmp_path, mock_server, monkeypatch, capsys):
    pipeline = project(tmp_path, ["a", "b"], mock_server.url)
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == ExitCode.OK and any("run summary" in line for line in err)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["exit_status"] == 0


def test_some_failed_is_3_and_stays_3_on_a_plain_rerun(tmp_path, mock_server, monkeypatch, capsys):
    pipeline = project(tmp_path, ["a", f"b {FAIL}", "c"], mock_server.url)
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == ExitCode.SOME_FAILED
    assert err[-1] == f"1 of 3 records failed: see {tmp_path / 'out' / 'failures.jsonl'} (--retry-failed redoes them)"
    # a resume that has nothing left to do still reports the folder's failures
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == ExitCode.SOME_FAILED and "1 of 3 records failed" in err[-1]


def test_none_succeeded_is_4(tmp_path, mock_server, monkeypatch, capsys):
    pipeline = project(tmp_path, [f"a {FAIL}", f"b {FAIL}"], mock_server.url)
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == ExitCode.ALL_FAILED and err[-1].startswith("no record succeeded: all 2 failed, see ")


def test_empty_input_warns_in_one_line(tmp_path, mock_server, monkeypatch, capsys):
    pipeline = project(tmp_path, [], mock_server.url)
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == ExitCode.OK and err[-1] == f"warning: no input records in {tmp_path / 'in.jsonl'}"
    assert any("run summary" in line for line in err)  # the summary is still printed


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("bad_setting", "run.concurrency"),
        ("missing_input", "in.jsonl: no such file or folder"),
        ("missing_pipeline", "pipeline file not found"),
    ],
)
def test_configuration_and_input_errors_are_2_in_one_line(tmp_path, mock_server, monkeypatch, capsys, setup, expected):
    pipeline = project(tmp_path, ["a"], mock_server.url)
    if setup == "bad_setting":
        pipeline.write_text(pipeline.read_text().replace("concurrency: 2", "concurrency: 0"))
    elif setup == "missing_input":
        (tmp_path / "in.jsonl").unlink()
    else:
        pipeline = tmp_path / "nope.yaml"
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == ExitCode.CONFIG and len(err) == 1 and err[0].startswith("error: ") and expected in err[0]


def test_output_folder_under_a_file_is_2_in_one_line(tmp_path, mock_server, monkeypatch, capsys):
    pipeline = project(tmp_path, ["a"], mock_server.url)
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "out"
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "-o", str(out), "--no-progress")
    assert code == ExitCode.CONFIG and len(err) == 1
    assert err[0] == f"error: {out}: a part of this path is a file, not a folder"


def test_unwritable_output_folder_is_2_in_one_line(tmp_path, mock_server, monkeypatch, capsys):
    """Permissions cannot be taken from root (tests may run as root): the OS refusal is simulated."""
    pipeline = project(tmp_path, ["a"], mock_server.url)
    out = tmp_path / "locked" / "out"
    real_mkdir = Path.mkdir

    def refuse(self: Path, *args, **kwargs) -> None:
        if self == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "-o", str(out), "--no-progress")
    assert code == ExitCode.CONFIG and len(err) == 1
    assert err[0].startswith(f"error: permission denied: {out}: fix its permissions")


def test_disk_full_mid_run_is_5_and_resumes_exactly_once(tmp_path, mock_server, monkeypatch, capsys):
    n = 40
    pipeline = project(tmp_path, [f"q{i}" for i in range(n)], mock_server.url)
    real_write = JsonlAppender.write
    data_batches = {"n": 0}

    def fill_up(self: JsonlAppender, records: list[dict]) -> None:
        if self.path.name == "data.jsonl" and records:
            data_batches["n"] += 1
            if data_batches["n"] == 3:  # half a batch reaches the disk, then it is full
                blob = b"".join(dumps_line(r) for r in records)
                with open(self.path, "ab") as handle:
                    handle.write(blob[: len(blob) // 2 + 1])
                raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, records)

    monkeypatch.setattr(JsonlAppender, "write", fill_up)
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == ExitCode.STOPPED
    data = tmp_path / "out" / "data.jsonl"
    assert err[-1].startswith(f"stopped: no space left on the device of {data}: free some space; ")
    assert err[-1].endswith("records done, re-run the same command to resume")
    monkeypatch.setattr(JsonlAppender, "write", real_write)
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == ExitCode.OK, err
    assert [r["id"] for r in lines(data)] == [f"r{i}" for i in range(n)]


def test_a_bug_is_1_in_one_line_and_the_traceback_only_with_debug(tmp_path, mock_server, monkeypatch, capsys):
    pipeline = project(tmp_path, ["a"], mock_server.url)

    async def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(LocalExecutor, "_intake", broken)
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress")
    assert code == ExitCode.INTERNAL and len(err) == 1
    assert err[0] == (
        "error: unexpected RuntimeError: boom second line (a bug in joyforge); run with --debug for the traceback"
    )
    code, err = joyforge(monkeypatch, capsys, "--debug", "run", str(pipeline), "--no-progress")
    assert code == ExitCode.INTERNAL and err[0] == "Traceback (most recent call last):"
    assert err[-1] == "error: unexpected RuntimeError: boom second line (a bug in joyforge)"


@pytest.mark.parametrize("where", ["cli", "file"])
def test_max_failures_stops_early_resumably(tmp_path, mock_server, monkeypatch, capsys, where):
    n = 60
    inputs = [f"q{i}" + (f" {FAIL}" if i % 2 else "") for i in range(n)]
    pipeline = project(tmp_path, inputs, mock_server.url, run=", max_failures: 3" if where == "file" else "")
    argv = ["run", str(pipeline), "--no-progress", "--concurrency", "1"]
    code, err = joyforge(monkeypatch, capsys, *argv, *(["--max-failures", "3"] if where == "cli" else []))
    assert code == ExitCode.STOPPED
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert err[-1].startswith("stopped: 4 records failed, more than --max-failures 3; ")
    # records already in flight when the 4th failure was committed finish too, and are kept
    assert summary["failed"] >= 4 and summary["exit_status"] == ExitCode.STOPPED
    assert len(lines(tmp_path / "out" / "ledger.jsonl")) < n
    code, err = joyforge(monkeypatch, capsys, "run", str(pipeline), "--no-progress", "--concurrency", "1")
    resumed = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert resumed["skipped"] == summary["inputs_done"] + summary["failed"]


def test_max_failures_rate_waits_for_enough_finished_records(tmp_path, mock_server, monkeypatch, capsys):
    pipeline = project(tmp_path, [f"q{i} {FAIL}" for i in range(100)], mock_server.url)
    code, err = joyforge(
        monkeypatch, capsys, "run", str(pipeline), "--no-progress", "--concurrency", "1", "--max-failures", "10%"
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # the first 20 are needed for a rate; records in flight when it was reached finish too
    assert code == ExitCode.STOPPED and 20 <= summary["failed"] < 100
    assert "20 of the 20 records finished failed, more than --max-failures 10%" in err[-1]


class DownAfter(ScriptedBackend):
    """Answers the first ``ok`` calls, then behaves as a model whose circuit breaker opened."""

    def __init__(self, ok: int):
        super().__init__(delay=0.001)
        self.ok = ok

    async def chat(self, messages, params, *, json_schema=None, seed=None):
        if len(self.calls) >= self.ok:
            self.calls.append({"messages": messages, "down": True})
            await asyncio.sleep(0)
            raise EndpointDown(
                "model 'm' declared down: 5 requests in a row to http://10.0.0.1:9/v1 failed "
                "(last: connection refused)",
                model="m",
            )
        return await super().chat(messages, params, json_schema=json_schema, seed=seed)


def test_endpoint_down_stops_cleanly_and_leaves_unfinished_records_for_resume(tmp_path):
    n = 50
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "input": f"q{i}"}) + "\n" for i in range(n)), "utf-8"
    )
    registry = ModelRegistry.from_dict(
        {"models": {"m": {"backend": "openai", "base_url": "http://10.0.0.1:9/v1", "max_concurrency": 4}}}, "test"
    )
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "in.jsonl")},
            "steps": [{"generate": {"model": "m"}}],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False, "concurrency": 4},
        }
    )
    down = DownAfter(ok=10)
    seen = []
    executor = LocalExecutor(
        pipeline, registry=registry, gateway=Gateway(registry, backends={"m": down}), on_summary=seen.append
    )
    with pytest.raises(RunStopped) as stopped:
        executor.run_sync()
    assert stopped.value.reason.startswith("model 'm' declared down: 5 requests in a row to http://10.0.0.1:9/v1")
    out = tmp_path / "out"
    ledger = lines(out / "ledger.jsonl")
    assert {e["status"] for e in ledger} == {"ok"} and len(ledger) == 10  # every answered record is kept
    assert not lines(out / "failures.jsonl")  # the down ones are not failures: they are not finished
    assert len(down.calls) < n  # feeding stopped: not every record was tried
    summary = json.loads((out / "summary.json").read_text())
    assert seen and summary["stopped"] == stopped.value.reason and summary["exit_status"] == ExitCode.STOPPED
    assert summary["inputs_done"] == 10 and summary["failed"] == 0
    healthy = ScriptedBackend()
    again = LocalExecutor(pipeline, registry=registry, gateway=Gateway(registry, backends={"m": healthy})).run_sync()
    assert again.skipped == 10 and len(healthy.calls) == n - 10 and again.exit_code() == ExitCode.OK
    assert [r["id"] for r in lines(out / "data.jsonl")] == [f"r{i}" for i in range(n)]  # input order restored


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port_project(tmp_path: Path, n: int) -> tuple[Path, str]:
    """A pipeline whose model is at a port nothing listens on, with default retries and breaker (a new user's)."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    pipeline = project(tmp_path, [f"q{i}" for i in range(n)], url)
    (tmp_path / "models.yaml").write_text(
        f"models:\n  mock:\n    backend: openai\n    model: mock\n    base_url: {url}\n", "utf-8"
    )
    return pipeline, url


def test_closed_port_stops_with_one_line_naming_the_endpoint(tmp_path):
    pipeline, url = closed_port_project(tmp_path, 2000)
    done = subprocess.run(
        [sys.executable, "-m", "joydataforge", "run", str(pipeline), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
    )
    assert done.returncode == ExitCode.STOPPED, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("stopped: model 'mock' declared down") and url in last
    assert last.endswith("0 records done, re-run the same command to resume")
    assert not lines(tmp_path / "out" / "ledger.jsonl") and not lines(tmp_path / "out" / "failures.jsonl")


def test_ctrl_c_prints_the_resume_hint_and_the_summary_then_resumes(tmp_path):
    n = 120
    server = spawn_mock_server(latency=0.05, hold_after=30)  # the run cannot end before the Ctrl-C
    try:
        pipeline = project(tmp_path, [f"q{i}" for i in range(n)], server.url)
        command = [sys.executable, "-m", "joydataforge", "run", str(pipeline), "--no-progress"]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())
        data = tmp_path / "out" / "data.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (data.exists() and len(data.read_bytes().splitlines()) >= 10):
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == ExitCode.STOPPED, err
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["stopped"] == "interrupted" and 0 < summary["inputs_done"] < n
        assert err.strip().splitlines()[-1] == (
            f"interrupted: {summary['inputs_done']} records done, re-run the same command to resume"
        )
        assert "run summary" in err
        server.configure(hold_after=-1)
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=child_env())
        assert done.returncode == ExitCode.OK, done.stderr
        assert [r["id"] for r in lines(data)] == [f"r{i}" for i in range(n)]
    finally:
        server.close()


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_ray_executor_stops_cleanly_on_a_closed_port(tmp_path):
    """The workers' outcomes travel back to the driver's committer: a model down stops a Ray run the same way."""
    ray = pytest.importorskip("ray")
    from joydataforge.engine.ray_executor import RayExecutor

    pipeline_path, url = closed_port_project(tmp_path, 40)
    pipeline = Pipeline.from_yaml(pipeline_path, overrides={"run.executor": "ray", "run.progress": False})
    started_here = not ray.is_initialized()
    try:
        with pytest.raises(RunStopped, match=f"model 'mock' declared down: .*{url}"):
            RayExecutor(pipeline, workers=1).run_sync()
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["exit_status"] == ExitCode.STOPPED and summary["inputs_done"] == 0
    assert not lines(tmp_path / "out" / "ledger.jsonl") and not lines(tmp_path / "out" / "failures.jsonl")
