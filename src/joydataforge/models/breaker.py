"""A circuit breaker per model: a dead endpoint stops the run in seconds instead of failing every record.

Without it, a closed port or a proxy's login page costs every record its full retries (10,000 retries and
eight minutes for 2,000 records, all ending in failures.jsonl with exit status 0). The gateway tells the
breaker about each request that failed in a way that says "nothing usable is there" (a connection error, a
reply that is not a model API's, a refused key, a missing path) and about each success. After ``threshold``
such failures in a row the model is declared down: the call at hand and every later call raise
:class:`~joydataforge.errors.EndpointDown` at once, without touching the network, and the executor stops
the run cleanly (finished records kept, the rest redone on resume). Any success resets the count, so a
flaky but living server never trips it.
"""

from __future__ import annotations

from ..errors import EndpointDown


class CircuitBreaker:
    """Consecutive endpoint failures of one model; once open it stays open for the rest of the run."""

    def __init__(self, model: str, endpoint: str, threshold: int):
        """``endpoint`` is what the message names (a base URL without credentials); ``threshold`` 0 never opens."""
        self.model = model
        self.endpoint = endpoint
        self.threshold = threshold
        self.failures = 0
        self.reason: str | None = None  # the one-line verdict, once the model is declared down

    @property
    def is_open(self) -> bool:
        return self.reason is not None

    def check(self) -> None:
        """Raise :class:`EndpointDown` if the model is down: called before every request."""
        if self.reason is not None:
            raise EndpointDown(self.reason, model=self.model)

    def failed(self, what: str) -> None:
        """Count one failed request (``what``: what came back, in a few words); raise when the model is down."""
        if self.threshold <= 0:
            return
        self.failures += 1
        if self.reason is None and self.failures >= self.threshold:
            what = " ".join(what.split())
            self.reason = (
                f"model '{self.model}' declared down: {self.failures} requests in a row to "
                f"{self.endpoint} failed (last: {what})"
            )
        self.check()

    def succeeded(self) -> None:
        """A request got a real reply: the endpoint is alive, the count starts again."""
        if self.reason is None:
            self.failures = 0
