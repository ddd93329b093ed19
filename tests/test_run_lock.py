"""One run per output folder: a second run fails at once naming the holder's pid; kill -9 leaves no stale lock.

Real second processes throughout: an in-process second lock would share the first one's process and prove
nothing about what another terminal or a cron job sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.engine.lock import LOCK_NAME, FolderBusy, FolderLock
from joydataforge.errors import ExitCode
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from tests.mock_openai.server import spawn_mock_server
from tests.scripted_backend import ScriptedBackend
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
REGISTRY = ModelRegistry.from_dict(
    {"models": {"m": {"backend": "openai", "base_url": "http://127.0.0.1:1/v1", "max_concurrency": 4}}}, "test"
)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock of tmp_path/out (it prints 'held' once it has it), killed at the end."""
    code = (
        "import sys, time; from pathlib import Path; from joydataforge.engine.lock import FolderLock; "
        "FolderLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(300)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True, env=child_env()
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def write_inputs(tmp_path: Path, n: int) -> None:
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "input": f"question {i}"}) + "\n" for i in range(n)), "utf-8"
    )


def pipeline_file(tmp_path: Path, base_url: str, concurrency: int = 2) -> Path:
    (tmp_path / "models.yaml").write_text(
        f"models:\n  mock:\n    backend: openai\n    model: mock\n    base_url: {base_url}\n    max_concurrency: 4\n",
        "utf-8",
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "input: {path: in.jsonl}\nmodels: models.yaml\n"
        "steps:\n  - generate: {model: mock, prompt: en/answer}\n"
        f"output: {{dir: out}}\nrun: {{concurrency: {concurrency}, cache: null}}\n",
        "utf-8",
    )
    return path


def joyforge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "joydataforge", *args], capture_output=True, text=True, timeout=120, env=child_env()
    )


def test_second_run_fails_at_once_naming_folder_and_pid_and_touches_nothing(tmp_path, holder):
    write_inputs(tmp_path, 3)
    done = joyforge("run", str(pipeline_file(tmp_path, "http://127.0.0.1:1/v1")), "--no-progress")
    assert done.returncode == ExitCode.CONFIG
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(tmp_path / "out") in lines[0] and f"pid {holder.pid}" in lines[0] and "in use" in lines[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK_NAME]  # no run.json, no data


def test_kill_9_leaves_no_stale_lock(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "out" / LOCK_NAME).read_text().strip() == str(holder.pid)  # the pid file stays behind...
    with FolderLock(tmp_path / "out") as lock:  # ...but the kernel dropped the lock with the process
        assert lock.held
        assert (tmp_path / "out" / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert (tmp_path / "out" / LOCK_NAME).read_text() == ""  # released: the pid is cleared


def test_in_process_run_refused_while_another_process_holds_the_folder(tmp_path, holder):
    write_inputs(tmp_path, 2)
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "in.jsonl")},
            "steps": [{"generate": {"model": "m"}}],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False},
        }
    )
    backend = ScriptedBackend()
    executor = LocalExecutor(pipeline, registry=REGISTRY, gateway=Gateway(REGISTRY, backends={"m": backend}))
    with pytest.raises(FolderBusy, match=f"pid {holder.pid}"):
        executor.run_sync()
    assert backend.calls == [] and not (tmp_path / "out" / "ledger.jsonl").exists()
    holder.kill()
    holder.wait()
    assert executor.run_sync().records_out == 2  # the same executor runs once the folder is free


def test_two_real_runs_on_one_folder_write_every_record_once(tmp_path):
    """The issue's case: a second terminal starts the same run while the first is under way."""
    n = 200
    server = spawn_mock_server(latency=0.05, hold_after=20)  # the first run cannot end before the kill
    try:
        write_inputs(tmp_path, n)
        command = [
            sys.executable,
            "-m",
            "joydataforge",
            "run",
            str(pipeline_file(tmp_path, server.url)),
            "--no-progress",
        ]
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env())
        lock_file = tmp_path / "out" / LOCK_NAME
        wait_for(lambda: lock_file.exists() and lock_file.read_text().strip() == str(first.pid), "the first run's lock")
        second = subprocess.run(command, capture_output=True, text=True, timeout=120, env=child_env())
        assert second.returncode == ExitCode.CONFIG and f"pid {first.pid}" in second.stderr
        assert first.poll() is None, "the first run must still be under way for this test to mean anything"
        os.kill(first.pid, signal.SIGKILL)  # and a hard kill of the holder frees the folder for a resume
        first.wait()
        server.configure(hold_after=-1)
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=120, env=child_env())
        assert resumed.returncode == ExitCode.OK, resumed.stderr
        ids = [json.loads(line)["id"] for line in (tmp_path / "out" / "data.jsonl").read_text("utf-8").splitlines()]
        assert ids == [f"r{i}" for i in range(n)]
    finally:
        server.close()


def test_ray_executor_takes_the_lock_before_starting_ray(tmp_path, holder):
    ray = pytest.importorskip("ray")
    from joydataforge.engine.ray_executor import RayExecutor

    if ray.is_initialized():
        pytest.skip("an outer Ray instance is running; this test checks that none is started")
    write_inputs(tmp_path, 2)
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "in.jsonl")},
            "steps": [{"generate": {"model": "m"}}],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False, "executor": "ray"},
        }
    )
    with pytest.raises(FolderBusy, match=f"pid {holder.pid}"):
        RayExecutor(pipeline, registry=REGISTRY).run_sync()
    assert not ray.is_initialized()
