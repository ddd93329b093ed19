"""When and how long to wait before trying a failed call again."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Exponential backoff with full jitter (spreads a thundering herd); never less than Retry-After."""
        backoff = rng.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))
        if retry_after is not None:
            # The server said when; a little jitter keeps many waiting clients from returning at once.
            return retry_after + rng.uniform(0, 0.1 * retry_after + 0.05)
        return backoff
