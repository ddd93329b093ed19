"""What ``minhash_dedup`` costs before it runs (``joyforge plan``): no model call; it lets through all but
the near-duplicates (``dedup.duplicate_rate``; ``policy: tag`` keeps them all)."""

from __future__ import annotations

from ...engine.fanout import Assumption, Assumptions, FanOut, MethodPlan
from ...engine.step import Record
from .config import MinHashDedupConfig

DUPLICATE_RATE = Assumption(
    "dedup.duplicate_rate", 0.0, "share of records minhash_dedup drops as near-duplicates", 0.0, 0.5
)


def fan_out(config: MinHashDedupConfig, assume: Assumptions, record: Record | None = None) -> FanOut:
    if config.policy == "tag":
        return FanOut([], 1.0)
    return FanOut([], 1.0 - assume[DUPLICATE_RATE.name], exact_outputs=False)


DEDUP = MethodPlan(fan_out, None, (DUPLICATE_RATE,))  # type: ignore[arg-type]
