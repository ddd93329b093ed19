"""Run Python in a fenced subprocess, off the event loop: :func:`run_python` and :func:`call_function`.

Never ``exec`` in our own process: the code runs in a fresh interpreter (``python -s -B``, plus ``-S`` unless
site-packages are allowed) started by :mod:`.bootstrap`, in its own session (so its whole process group can be
killed), in a fresh temporary folder that is its working directory, ``TMPDIR`` and ``HOME``, with an
environment made from scratch (no API keys, no ``PYTHONPATH``). This module watches from outside: a wall-clock
timeout that kills the group, a cap on the bytes it prints, and the verdict read from the result file the
bootstrap writes, or inferred from how the process ended when it could not write one. docs/sandbox.md says
what each wall stops and what it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .limits import SandboxLimits, SandboxResult, Verdict

BOOTSTRAP = Path(__file__).with_name("bootstrap.py")
READ_CHUNK = 65536
KILL_GRACE_S = 2.0
SIGNAL_NAMES = {getattr(signal, n): n for n in ("SIGKILL", "SIGSEGV", "SIGABRT", "SIGBUS", "SIGXCPU", "SIGTERM")}
# Interpreters alive at once, per event loop: a step with many records in flight, each making parallel tool calls,
# must not start hundreds of processes together. Time spent waiting for a slot is not part of a run's timeout.
MAX_PARALLEL = max(4, 2 * (os.cpu_count() or 1))
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _slot() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    if loop not in _slots:
        _slots[loop] = asyncio.Semaphore(MAX_PARALLEL)
    return _slots[loop]


async def run_python(code: str, *, stdin: str | None = None, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``code`` as a script (``__main__``) in the sandbox; its stdout, stderr and verdict come back."""
    return await _run({"mode": "run"}, code, stdin, limits)


async def call_function(
    source: str, name: str, kwargs: dict[str, Any], *, limits: SandboxLimits = SandboxLimits()
) -> SandboxResult:
    """Load ``source`` as a module in the sandbox and call ``name(**kwargs)``; ``value`` is its JSON result.

    ``kwargs`` must be JSON (they cross a process boundary); an async function is run to completion. A value
    that is not JSON is an ``error`` verdict naming the problem.
    """
    try:
        json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return SandboxResult("error", None, "", "", reason=f"the arguments are not JSON ({exc})")
    return await _run({"mode": "call", "function": name, "kwargs": kwargs}, source, None, limits)


def _interpreter_command(limits: SandboxLimits, spec_path: Path) -> list[str]:
    # -s: no user site-packages; -S: no site-packages at all (stdlib only); -B: no .pyc written anywhere.
    # Not -I/-E: the environment is built from scratch below, and PYTHONHASHSEED must reach the child so that
    # set and dict orders (and so the outputs of tools) are the same run after run.
    flags = ["-s", "-B"] + ([] if limits.site_packages else ["-S"])
    return [sys.executable, *flags, str(BOOTSTRAP), str(spec_path)]


def _environment(work: Path) -> dict[str, str]:
    return {
        "PATH": os.defpath,
        "HOME": str(work),
        "TMPDIR": str(work),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONSAFEPATH": "1",
    }


async def _run(spec: dict[str, Any], code: str, stdin: str | None, limits: SandboxLimits) -> SandboxResult:
    async with _slot():
        return await _run_now(spec, code, stdin, limits)


async def _run_now(spec: dict[str, Any], code: str, stdin: str | None, limits: SandboxLimits) -> SandboxResult:
    root = Path(tempfile.mkdtemp(prefix="joyforge-sandbox-"))
    try:
        work = root / "work"
        work.mkdir()
        code_path = root / ("main.py" if spec["mode"] == "run" else "tool.py")
        code_path.write_text(code, "utf-8")
        result_path = root / "result.json"
        spec = {
            **spec,
            "code_path": str(code_path),
            "work": str(work),
            "result_path": str(result_path),
            "limits": asdict(limits),
        }
        spec_path = root / "spec.json"
        spec_path.write_text(json.dumps(spec, ensure_ascii=False), "utf-8")
        return await _supervise(_interpreter_command(limits, spec_path), work, result_path, stdin, limits)
    finally:
        await asyncio.to_thread(_remove_tree, root)


class _Output:
    """stdout and stderr read as they come, within one budget shared by both."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.parts: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.exceeded = asyncio.Event()

    async def drain(self, which: str, stream: asyncio.StreamReader) -> None:
        buffer = self.parts[which]
        while chunk := await stream.read(READ_CHUNK):
            room = self.budget - len(self.parts["stdout"]) - len(self.parts["stderr"])
            buffer += chunk[: max(room, 0)]
            if len(chunk) > room:
                self.exceeded.set()
                return

    def text(self, which: str) -> str:
        return self.parts[which].decode("utf-8", errors="replace")


async def _supervise(
    command: list[str], work: Path, result_path: Path, stdin: str | None, limits: SandboxLimits
) -> SandboxResult:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=work,
        env=_environment(work),
        start_new_session=True,  # its own process group: one killpg reaches everything it started
    )
    output = _Output(limits.max_output_bytes)
    tasks = [
        asyncio.create_task(output.drain("stdout", process.stdout)),
        asyncio.create_task(output.drain("stderr", process.stderr)),
    ]
    if stdin is not None:
        tasks.append(asyncio.create_task(_feed(process, stdin)))
    finished = asyncio.create_task(_finish(process, tasks))
    limit_hit = asyncio.create_task(output.exceeded.wait())
    killed_for: Verdict | None = None
    try:
        done, _ = await asyncio.wait({finished, limit_hit}, timeout=limits.timeout_s, return_when="FIRST_COMPLETED")
        if finished not in done:
            killed_for = "output_limit" if limit_hit in done else "timeout"
    finally:
        limit_hit.cancel()
        _kill_group(process.pid)  # also what a finished run left behind in its group
        if not finished.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(finished), KILL_GRACE_S)
        if not finished.done():
            finished.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(finished, *tasks, return_exceptions=True)
    if process.returncode is None:
        await process.wait()
    stdout, stderr = output.text("stdout"), output.text("stderr")
    if killed_for == "timeout":
        reason = f"the code ran longer than {limits.timeout_s:g} s and was stopped"
        return SandboxResult("timeout", None, stdout, stderr, reason=reason)
    if killed_for == "output_limit" or output.exceeded.is_set():
        reason = f"the code printed more than {limits.max_output_bytes} bytes and was stopped"
        return SandboxResult("output_limit", None, stdout, stderr, reason=reason)
    return _verdict(process.returncode, _read_result(result_path), stdout, stderr, limits)


async def _finish(process: asyncio.subprocess.Process, tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*tasks)
    await process.wait()


async def _feed(process: asyncio.subprocess.Process, text: str) -> None:
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.write(text.encode("utf-8"))
        await process.stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.close()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _read_result(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text("utf-8").strip()
        return json.loads(text.splitlines()[0]) if text else None
    except (OSError, ValueError, IndexError):
        return None


def _verdict(
    returncode: int | None, result: dict[str, Any] | None, stdout: str, stderr: str, limits: SandboxLimits
) -> SandboxResult:
    exit_code = returncode if returncode is not None and returncode >= 0 else None
    if returncode is not None and returncode < 0:
        signum = -returncode
        if signum == signal.SIGXCPU:
            reason = f"the code used more than {int(limits.timeout_s) + 1} s of CPU and was stopped"
            return SandboxResult("timeout", None, stdout, stderr, reason=reason)
        name = SIGNAL_NAMES.get(signum, f"signal {signum}")
        if "MemoryError" in stderr or "Cannot allocate memory" in stderr or "out of memory" in stderr:
            return SandboxResult("memory", None, stdout, stderr, reason=f"the code ran out of memory ({name})")
        return SandboxResult("error", None, stdout, stderr, reason=f"the process was killed by {name}")
    if result is None:
        if returncode == 0:
            return SandboxResult("ok", 0, stdout, stderr)
        return SandboxResult("error", exit_code, stdout, stderr, reason=f"the process ended with status {returncode}")
    verdict = result.get("verdict", "error")
    if verdict not in ("ok", "error", "memory", "forbidden", "output_limit"):
        verdict = "error"
    value = result.get("value")
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8")) + len(stdout.encode()) + len(stderr.encode())
    if verdict == "ok" and size > limits.max_output_bytes:
        reason = f"the returned value and output are larger than {limits.max_output_bytes} bytes"
        return SandboxResult("output_limit", exit_code, stdout, stderr, reason=reason)
    return SandboxResult(verdict, exit_code, stdout, stderr, value=value, reason=str(result.get("reason") or ""))


def _remove_tree(root: Path) -> None:
    def unlock(function: Any, path: str, _info: Any) -> None:
        # The code may have taken its own permissions away (chmod 000); put them back, try once more.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), stat.S_IRWXU)
            os.chmod(path, stat.S_IRWXU)
            function(path)

    if sys.version_info >= (3, 12):
        shutil.rmtree(root, onexc=unlock)
    else:
        shutil.rmtree(root, onerror=unlock)
