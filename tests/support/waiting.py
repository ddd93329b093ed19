"""Waiting for a state instead of for a time: a test asserts what happened, however slow the machine is."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

STEP_S = 0.02


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    """Return once ``predicate()`` is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(STEP_S)


async def eventually(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    """:func:`wait_for` for a coroutine: the event loop runs on while it waits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(STEP_S)
