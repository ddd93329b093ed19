"""Logging handlers that outlive pytest's output capture, and how to let go of them.

A library that configures its own logger at import time (vLLM: a ``StreamHandler`` on ``sys.stdout``, bound
when ``vllm`` is first imported) binds the stream pytest has swapped in to capture output. pytest closes
that stream when the session ends, but the library keeps logging afterwards -- vLLM's engines shut down
at interpreter exit -- and every record then fails with ``ValueError: I/O operation on closed file``,
which :mod:`logging` reports as a page of ``--- Logging error ---`` per message.
"""

from __future__ import annotations

import logging
import sys


def _real_stream(stream: object) -> bool:
    return stream is sys.__stdout__ or stream is sys.__stderr__


def release_captured_handlers(prefix: str) -> int:
    """Detach, from the logger ``prefix`` and its children, every stream handler not bound to the real stdout
    or stderr (pytest's capture streams); returns how many. Records logged later find no handler there and
    go to :data:`logging.lastResort` (warnings and errors, to the stderr of that moment), never to a closed
    stream."""
    released = 0
    names = [name for name in list(logging.root.manager.loggerDict) if name == prefix or name.startswith(prefix + ".")]
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler).__module__.startswith("_pytest"):
                continue  # pytest's own log capture, which pytest removes itself
            if isinstance(handler, logging.StreamHandler) and not _real_stream(getattr(handler, "stream", None)):
                logger.removeHandler(handler)
                released += 1
    return released
