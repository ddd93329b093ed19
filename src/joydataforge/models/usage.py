"""Per-model accounting: calls, cache hits, tokens, latency, cost. Shown at the end of every run.

A call's cost is :meth:`~joydataforge.models.prices.Price.cost` of its tokens at the model's price
(:func:`~joydataforge.models.prices.price_of`: ``pricing:`` in models.yaml, else the price table), the same
arithmetic ``joyforge plan`` and ``run.budget`` use, so the summary, the plan and the budget agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .prices import Price


@dataclass
class ModelUsage:
    """Counters (every dataclass field is a number that executors may add up across workers), plus
    ``structured_output``: how the model was last asked for JSON replies (``json_schema``, ``json_object``
    after a server refused ``json_schema``, ``grammar``, ``none``), or ``None`` if it never was. It is a plain
    attribute, not a field, because it is a state and cannot be summed."""

    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    errors: int = 0
    invalid_replies: int = 0
    repaired_replies: int = 0  # JSON replies read leniently or repaired instead of re-asked
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens, those of thinking models' traces (docs/reasoning.md)
    latency_total: float = 0.0
    cost: float = 0.0

    def __post_init__(self) -> None:
        self.structured_output: str | None = None
        self.concurrency: dict[str, Any] | None = None  # the model's limit at the end (models/adaptive.py)

    def record(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        latency: float,
        price: Price | None,
        reasoning_tokens: int = 0,
    ) -> float:
        """Count one call a backend answered; returns its cost (0 when the model has no known price).

        ``reasoning_tokens`` are part of ``completion_tokens`` (and billed as such), counted apart so a run can
        say how much of its output went into thinking."""
        cost = price.cost(prompt_tokens, completion_tokens) if price is not None else 0.0
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.reasoning_tokens += reasoning_tokens
        self.latency_total += latency
        self.cost += cost
        return cost

    @property
    def mean_latency(self) -> float:
        return self.latency_total / self.calls if self.calls else 0.0

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = asdict(self)
        data["mean_latency"] = round(self.mean_latency, 4)
        data["latency_total"] = round(self.latency_total, 3)
        data["cost"] = round(self.cost, 6)
        if self.structured_output is not None:
            data["structured_output"] = self.structured_output
        if self.concurrency is not None:
            data["concurrency"] = self.concurrency
        return data
