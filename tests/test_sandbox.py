"""The sandbox contains what model-written code does by mistake, with a clear verdict, and nothing is harmed.

Every containment test has a positive control (the same action allowed, or done outside the sandbox) so that a
sandbox that contained nothing, or a test that could not see harm, fails.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from joydataforge.sandbox import SandboxLimits, SandboxSettings, call_function, run_python
from tests.support.waiting import wait_for

FAST = SandboxLimits(timeout_s=30.0, memory_mb=256)  # a run ends with its code: only a hang would use it all


def run(code: str, **limits):
    return asyncio.run(run_python(code, limits=SandboxLimits(**{**FAST.__dict__, **limits})))


def processes_in_group(pgid: int, settle_s: float = 5.0) -> list[int]:
    """Live processes whose process group or session is ``pgid``: what the sandbox left running (a process
    that left the group for a group of its own is still in the session).

    A SIGKILLed process takes a moment to disappear from /proc: look again until none is left or ``settle_s``
    has passed (the answer, not the time, is asserted).
    """
    deadline = time.monotonic() + settle_s
    while True:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if pgid in (int(fields[2]), int(fields[3])) and fields[0] not in ("Z", "X"):
                    found.append(int(entry))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_plain_code_runs_and_prints():
    result = run("import sys\nprint('hello', sys.argv[0].endswith('main.py'))")
    assert (result.verdict, result.exit_code, result.stdout, result.reason) == ("ok", 0, "hello True\n", "")


def test_infinite_loop_is_stopped_and_its_process_is_gone():
    result = run("import os\nprint(os.getpid(), flush=True)\nwhile True:\n    pass\n", timeout_s=3.0)
    assert result.verdict == "timeout" and result.exit_code is None
    assert "longer than 3 s" in result.reason
    pid = int(result.stdout.split()[0])
    assert processes_in_group(pid) == []


def test_a_child_process_is_killed_with_the_group():
    """Where processes are allowed, a timeout still kills what the code started (the whole process group)."""
    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "print(os.getpid(), child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    result = run(code, timeout_s=4.0, max_processes=2)  # time to start python, then the child
    assert result.verdict == "timeout", result
    pid, child = map(int, result.stdout.split())
    assert processes_in_group(pid) == []
    assert child not in processes_in_group(pid)


def test_memory_bomb_is_stopped():
    result = run("chunks = []\nwhile True:\n    chunks.append(' ' * 10**6)\n", memory_mb=128)
    assert result.verdict == "memory", result
    assert "memory" in result.reason


def test_the_same_allocation_fits_under_a_larger_limit():
    code = "chunks = [' ' * 10**6 for _ in range(200)]\nprint(len(chunks))"
    assert run(code, memory_mb=128).verdict == "memory"
    assert run(code, memory_mb=512).stdout == "200\n"


def test_write_outside_its_folder_is_refused_and_nothing_is_written(tmp_path):
    target = tmp_path / "outside.txt"
    result = run(f"open({str(target)!r}, 'w').write('harm')")
    assert result.verdict == "forbidden"
    assert str(target) in result.reason
    assert not target.exists()


def test_a_caught_refusal_still_ends_forbidden(tmp_path):
    target = tmp_path / "outside.txt"
    code = f"try:\n    open({str(target)!r}, 'a')\nexcept PermissionError as e:\n    print('caught')\n"
    result = run(code)
    assert result.stdout == "caught\n"
    assert result.verdict == "forbidden" and not target.exists()


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos.symlink({outside!r}, 'door')\nopen('door/harm.txt', 'w').write('x')",
        "import os\nos.rename('mine.txt', {outside!r} + '/harm.txt')",
        "import shutil\nshutil.copy('mine.txt', {outside!r} + '/harm.txt')",
        "import os\nos.mkdir({outside!r} + '/harm.txt')",
        "import pathlib\npathlib.Path({outside!r}, 'harm.txt').write_text('x')",
    ],
    ids=["symlink", "rename", "copy", "mkdir", "pathlib"],
)
def test_other_ways_out_are_refused(tmp_path, code):
    setup = "open('mine.txt', 'w').write('x')\n"
    result = run(setup + code.format(outside=str(tmp_path)))
    assert result.verdict == "forbidden", result
    assert not (tmp_path / "harm.txt").exists()


def test_its_own_folder_is_writable_and_removed_afterwards():
    code = (
        "import os, tempfile\n"
        "open('note.txt', 'w').write('kept')\n"
        "os.makedirs('a/b')\n"
        "with tempfile.NamedTemporaryFile(dir=None) as f:\n    f.write(b'x')\n"
        "print(os.getcwd(), open('note.txt').read())\n"
    )
    result = run(code)
    assert result.verdict == "ok", result
    folder, text = result.stdout.split()
    assert text == "kept"
    assert not Path(folder).exists()


def test_a_read_only_folder_refuses_writes_too():
    result = run("open('note.txt', 'w')", writable_dir=False)
    assert result.verdict == "forbidden"


class Listener:
    """A TCP server on localhost that counts the connections it accepts."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                continue
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.server.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def test_network_connection_is_refused(listener):
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {listener.port}), timeout=2)\nprint('connected')"
    result = run(code)
    assert result.verdict == "forbidden", result
    assert "network" in result.reason
    assert listener.accepted == 0


def test_network_connection_when_allowed_reaches_the_listener(listener):
    """The positive control: the listener does count a sandboxed connection when the network is allowed."""
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {listener.port}), timeout=2).close()\nprint('ok')"
    result = run(code, network=True)
    assert (result.verdict, result.stdout) == ("ok", "ok\n"), result
    wait_for(lambda: listener.accepted, "the listener's count")  # its thread counts it when it next wakes
    assert listener.accepted == 1


def test_raw_socket_and_name_lookup_are_refused():
    assert run("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)").verdict == "forbidden"
    assert run("import socket\nsocket.gethostbyname('example.com')").verdict == "forbidden"


def test_fork_bomb_is_contained():
    code = "import os\nprint(os.getpid(), flush=True)\nwhile True:\n    os.fork()\n"
    result = run(code)
    assert result.verdict == "forbidden", result
    assert "os.fork" in result.reason
    pid = int(result.stdout.split()[0])
    assert processes_in_group(pid) == []


@pytest.mark.parametrize(
    "code",
    [
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.system('true')",
        "import os\nos.execv('/bin/true', ['true'])",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()",
        "import os\nos.kill(1, 0)",
        "import ctypes",
        "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))",
    ],
    ids=["subprocess", "system", "exec", "multiprocessing", "kill", "ctypes", "setrlimit"],
)
def test_process_and_escape_hatches_are_refused(code):
    result = run(code)
    assert result.verdict == "forbidden", result


def test_output_flood_is_stopped():
    result = run("while True:\n    print('x' * 1000)\n", max_output_bytes=10_000)
    assert result.verdict == "output_limit"
    assert len(result.stdout) <= 10_000


def test_exit_status_and_exceptions_are_verdicts():
    assert (run("import sys; sys.exit(0)").verdict, run("import sys; sys.exit(0)").exit_code) == ("ok", 0)
    failed = run("import sys; sys.exit(3)")
    assert (failed.verdict, failed.exit_code) == ("error", 3)
    raised = run("def f():\n    raise ValueError('bad city')\nf()")
    assert (raised.verdict, raised.reason) == ("error", "ValueError: bad city")
    assert "bootstrap" not in raised.stderr and "line 2, in f" in raised.stderr


def test_stdin_is_given_to_the_code():
    result = asyncio.run(run_python("print(input()[::-1])", stdin="hello\n"))
    assert result.stdout == "olleh\n"


def test_environment_holds_no_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    result = run("import os\nprint(sorted(os.environ))")
    assert "OPENAI_API_KEY" not in result.stdout and "sk-secret" not in result.stdout


def test_stdlib_only_unless_site_packages_are_allowed():
    assert run("import pydantic").verdict == "error"
    assert run("import pydantic", site_packages=True, memory_mb=1024).verdict == "ok"


def test_hash_order_is_the_same_run_after_run():
    code = "print(list({'alpha', 'beta', 'gamma', 'delta', 'epsilon'}))"
    assert run(code).stdout == run(code).stdout


def test_call_function_returns_json_values():
    source = "def add(a: int, b: int) -> dict:\n    return {'sum': a + b, 'items': (a, b)}\n"
    result = asyncio.run(call_function(source, "add", {"a": 1, "b": 2}))
    assert (result.verdict, result.value) == ("ok", {"sum": 3, "items": [1, 2]})
    async_source = "import asyncio\nasync def twice(x):\n    await asyncio.sleep(0)\n    return x * 2\n"
    assert asyncio.run(call_function(async_source, "twice", {"x": 21})).value == 42


@pytest.mark.parametrize(
    ("source", "name", "kwargs", "verdict", "reason"),
    [
        ("def f():\n    return object()\n", "f", {}, "error", "not JSON"),
        ("def f():\n    return 1\n", "g", {}, "error", "no function named 'g'"),
        ("def f(x):\n    return x\n", "f", {"y": 1}, "error", "unexpected keyword argument 'y'"),
        ("def f():\n    return float('nan')\n", "f", {}, "error", "not JSON"),
        ("def f():\n    open('/etc/harm', 'w')\n", "f", {}, "forbidden", "/etc/harm"),
        ("def f():\n    while True: pass\n", "f", {}, "timeout", "longer than"),
    ],
)
def test_call_function_failures_are_verdicts(source, name, kwargs, verdict, reason):
    limits = SandboxLimits(timeout_s=1.0 if verdict == "timeout" else 30.0)  # others end as soon as they are done
    result = asyncio.run(call_function(source, name, kwargs, limits=limits))
    assert result.verdict == verdict and reason in result.reason, result
    assert result.value is None


def test_call_function_refuses_arguments_that_are_not_json():
    result = asyncio.run(call_function("def f(x):\n    return x\n", "f", {"x": object()}))
    assert result.verdict == "error" and "not JSON" in result.reason


def test_a_large_return_value_counts_against_the_output_limit():
    result = asyncio.run(
        call_function("def f():\n    return 'x' * 50_000\n", "f", {}, limits=SandboxLimits(max_output_bytes=10_000))
    )
    assert result.verdict == "output_limit"


def test_many_sandboxes_run_at_once_off_the_event_loop():
    async def many():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        clock = asyncio.create_task(ticker())
        results = await asyncio.gather(
            *(call_function("def f(i):\n    return i * i\n", "f", {"i": i}) for i in range(8))
        )
        clock.cancel()
        return [r.value for r in results], ticks

    values, ticks = asyncio.run(many())
    assert values == [i * i for i in range(8)]
    assert ticks > 0  # the loop went on while the subprocesses ran


def test_settings_give_limits_and_refuse_unknown_fields():
    settings = SandboxSettings(timeout_s=2, network=False)
    assert settings.limits() == SandboxLimits(timeout_s=2.0)
    with pytest.raises(ValueError):
        SandboxSettings(timeout=2)
