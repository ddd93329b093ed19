"""What a run did, in numbers: shown at the end and written to ``summary.json``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunSummary:
    records_in: int = 0        # records read in the window, good or bad
    records_out: int = 0       # output records written (a step may emit several per input)
    inputs_done: int = 0       # input records that produced output
    filtered: int = 0          # input records that a step dropped on purpose
    failed: int = 0            # input records whose steps failed; kept in failures.jsonl
    bad_input: int = 0         # unreadable or invalid input lines; kept in failures.jsonl
    skipped: int = 0           # already done by an earlier run (resume)
    repaired_lines: int = 0    # torn or uncommitted lines cut from the output tail on resume
    seconds: float = 0.0
    models: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)
    output_dir: str = ""

    @property
    def cache_hits(self) -> int:
        return sum(int(m.get("cache_hits", 0)) for m in self.models.values())

    @property
    def tokens(self) -> int:
        return sum(int(m.get("prompt_tokens", 0)) + int(m.get("completion_tokens", 0)) for m in self.models.values())

    @property
    def cost(self) -> float:
        return sum(float(m.get("cost", 0.0)) for m in self.models.values())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(cache_hits=self.cache_hits, tokens=self.tokens, cost=round(self.cost, 6))
        return data
