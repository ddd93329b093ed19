"""A real OpenAI-compatible peer: llama-cpp-python's own server (``llama_cpp.server``) on the bundled GGUF.

Used by ``tests/test_llama_server.py`` (the openai backend against a server that is not our mock) and by
``bench/adaptive.py`` (adaptive concurrency against a real server): one way to start it, so the two cannot
drift apart. It listens on 127.0.0.1 on a free port; its log goes to a file, since an unread pipe would
fill up and block it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

MODEL_ALIAS = "smollm2"  # the model name the server answers to
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def llama_server(log_path: Path, *, n_ctx: int = 2048) -> Iterator[str]:
    """Start ``llama_cpp.server`` on the bundled SmolLM2 GGUF; yields its base URL (``.../v1``) once it
    answers ``/models``, stops it on exit. Raises ``RuntimeError`` with the log's tail if it does not start
    within :data:`START_TIMEOUT_S`."""
    from joydataforge.models.backends.smollm2 import bundled_gguf_path

    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(bundled_gguf_path()),
                "--model_alias",
                MODEL_ALIAS,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                str(n_ctx),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            url = f"http://127.0.0.1:{port}/v1"
            _wait_until_up(proc, url, log_path)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_until_up(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not start: {log_path.read_text()[-2000:]}") from None
            time.sleep(0.5)
