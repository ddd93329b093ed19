"""Every default that more than one part of the program uses, in one place.

A number here is a default a user can change in a file or on the command line; changing it here changes
it everywhere it applies (run settings, model settings, commands, the generated reference).
"""

from __future__ import annotations

RECORDS_IN_FLIGHT = 32
"""``run.concurrency``: records in flight at once when nothing else says."""

MODEL_MAX_CONCURRENCY = 16
"""``max_concurrency`` of a model with ``concurrency: fixed``: requests in flight to one endpoint."""

ADAPTIVE_MAX_CONCURRENCY = 1024
"""``max_concurrency`` of a model with adaptive concurrency (the default): the ceiling its limit may reach."""

BATCHING_ENGINE_MAX_CONCURRENCY = 256
"""``max_concurrency`` of an in-process engine that batches whatever is in flight (vLLM)."""

COMMAND_RECORDS_IN_FLIGHT = 8
"""Records in flight for one-shot commands (``joyforge magpie``) that run on a small local model by default."""

SEED = 0
"""The run seed: with the same seed and inputs a run draws the same samples."""

CACHE_PATH = ".joyforge-cache/calls.sqlite"
"""The persistent call cache, relative to the pipeline file."""
