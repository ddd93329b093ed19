"""Per-model accounting: calls, cache hits, tokens, latency, cost. Shown at the end of every run."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import Pricing


@dataclass
class ModelUsage:
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    errors: int = 0
    invalid_replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_total: float = 0.0
    cost: float = 0.0

    def record(self, prompt_tokens: int, completion_tokens: int, latency: float, pricing: Pricing | None) -> None:
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.latency_total += latency
        if pricing is not None:
            self.cost += (prompt_tokens * pricing.input_per_mtok + completion_tokens * pricing.output_per_mtok) / 1e6

    @property
    def mean_latency(self) -> float:
        return self.latency_total / self.calls if self.calls else 0.0

    def as_dict(self) -> dict[str, float | int]:
        data = asdict(self)
        data["mean_latency"] = round(self.mean_latency, 4)
        data["latency_total"] = round(self.latency_total, 3)
        data["cost"] = round(self.cost, 6)
        return data
