"""At most two long-lived math-verify worker processes, shared by every math check of this process.

Why processes: SymPy can take unbounded time on a hostile expression (``9^{9^{9^9}}``) and math-verify bounds it
with ``signal.alarm``, which works only in a process's main thread: never in an executor's event-loop thread or a
Ray worker's. Why plain subprocesses and not ``multiprocessing``: its ``spawn`` re-imports the caller's main
script (a user's script without a ``__main__`` guard would run again) and ``fork`` copies a process full of
threads. Each worker answers one JSON line per request (:mod:`.math_worker`); a request is sent from one of as
many threads as there are workers (not the event loop's shared ones, which a queue of comparisons would hold up),
so it works under any event loop. A worker that overruns its time even so (a C-level
big-integer power ignores the alarm) is killed, its request gets an ``error`` answer, and a new worker starts
on the next request.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

STARTUP_S = 60.0
"""Seconds a new worker may take to start (a Python that imports SymPy and math-verify, on a busy machine)."""
MAX_WORKERS = max(1, min(2, os.cpu_count() or 1))


class WorkerGone(Exception):
    """The worker exited, or did not answer in time (then it has been killed)."""


class _Worker:
    """One worker process and its unread output."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[3])  # the folder holding `joydataforge`
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "joydataforge.methods.verify.math_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            env=env,
        )
        self.buffer = b""
        self.ready = False

    def _read_line(self, deadline: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise WorkerGone("the math worker exited")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            if not self.ready:
                if self._read_line(time.monotonic() + STARTUP_S) != b"ready":
                    raise WorkerGone("the math worker did not start")
                self.ready = True
            data = memoryview((json.dumps(request, ensure_ascii=False) + "\n").encode("utf-8"))
            while data:
                data = data[os.write(self.proc.stdin.fileno(), data) :]
            return json.loads(self._read_line(time.monotonic() + timeout_s))
        except TimeoutError:
            self.kill()
            raise WorkerGone(f"the comparison did not finish in {timeout_s:g} s (its worker was stopped)") from None
        except (OSError, ValueError) as exc:
            self.kill()
            raise WorkerGone(f"the math worker failed: {exc}") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class MathPool:
    """Idle workers and a bound on busy ones; blocking :meth:`call` is meant for ``asyncio.to_thread``."""

    def __init__(self, size: int = MAX_WORKERS):
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []

    def call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """The worker's answer to ``request``, or an ``error`` answer when no worker could give one in time."""
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
                if worker is not None and not worker.alive():
                    worker.kill()
                    self._all.remove(worker)
                    worker = None
                if worker is None:
                    worker = _Worker()
                    self._all.append(worker)
            try:
                answer = worker.call(request, timeout_s)
            except WorkerGone as exc:
                with self._lock:
                    self._all.remove(worker)
                return {"status": "error", "reason": str(exc)}
            with self._lock:
                self._idle.append(worker)
            return answer

    def close(self) -> None:
        with self._lock:
            workers, self._all, self._idle = self._all, [], []
        for worker in workers:
            worker.kill()


POOL = MathPool()
_THREADS = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="math-verify")
atexit.register(POOL.close)


async def compare(request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """A worker's answer to ``request`` (see :func:`.math_worker.compare`), awaited without blocking the loop."""
    return await asyncio.get_running_loop().run_in_executor(_THREADS, POOL.call, request, timeout_s)
