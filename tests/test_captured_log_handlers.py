"""``make test`` printed pages of "--- Logging error --- ... I/O operation on closed file" at vLLM's shutdown.

The cause, reproduced without vLLM: a library that, like vLLM, configures its logger at import time with a
handler on ``sys.stdout`` (pytest's capture stream under pytest) and logs again at interpreter exit, after
pytest closed that stream. A child pytest run shows the error pages; with the guard that
``tests/test_vllm_real.py`` uses (:func:`tests.support.logs.release_captured_handlers` at module teardown),
none, and the library's warnings still reach the real stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LIBRARY = """
import atexit
import logging
import logging.config

logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"lib": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "level": "INFO"}},
    "loggers": {"shutdownlib": {"handlers": ["lib"], "level": "INFO", "propagate": False}},
})
log = logging.getLogger("shutdownlib.engine")


@atexit.register
def _shutdown():
    for i in range(5):
        log.info("engine core %d shut down", i)
    log.warning("engine stopped")
"""

TEST = """
import pytest

GUARD = {guard}


@pytest.fixture(scope="module", autouse=True)
def _guard():
    yield
    if GUARD:
        from tests.support.logs import release_captured_handlers

        assert release_captured_handlers("shutdownlib") == 1


def test_uses_the_library():
    import shutdownlib

    shutdownlib.log.info("engine started")
"""


def _run(tmp_path: Path, guard: bool) -> subprocess.CompletedProcess[str]:
    work = tmp_path / ("guarded" if guard else "plain")
    work.mkdir()
    (work / "shutdownlib.py").write_text(textwrap.dedent(LIBRARY), "utf-8")
    (work / "test_lib.py").write_text(TEST.format(guard=guard), "utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work), str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(work / "test_lib.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=work,
        env=env,
    )


def test_a_handler_on_the_capture_stream_fails_at_exit(tmp_path: Path) -> None:
    plain = _run(tmp_path, guard=False)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "--- Logging error ---" in plain.stderr and "closed file" in plain.stderr  # the reported symptom


def test_releasing_the_handlers_silences_the_error_pages(tmp_path: Path) -> None:
    guarded = _run(tmp_path, guard=True)
    assert guarded.returncode == 0, guarded.stdout + guarded.stderr
    assert "Logging error" not in guarded.stderr + guarded.stdout
    assert "engine stopped" in guarded.stderr  # warnings still reach the real stderr (logging.lastResort)
