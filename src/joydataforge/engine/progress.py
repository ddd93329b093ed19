"""A live progress line: records done, rate, ETA, tokens, failures, and each model's concurrency (its limit,
its measured latency, its share of 429s). Quiet when disabled or not a terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .summary import concurrency_text

if TYPE_CHECKING:
    from ..models.gateway import Gateway
    from .summary import RunSummary


class RunProgress:
    def __init__(self, total: int | None, *, enabled: bool, gateway: "Gateway", console: Console | None = None):
        self.gateway = gateway
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: Any = None
        self.total = total
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]forging"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>7} rec/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=console or Console(stderr=True),
                transient=False,
                refresh_per_second=4,
            )

    def __enter__(self) -> "RunProgress":
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("run", total=self.total, rate="-", extra="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance_skipped(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, 1)

    def update(self, summary: "RunSummary") -> None:
        if self._progress is None:
            return
        done = summary.inputs_done + summary.filtered + summary.failed + summary.bad_input + summary.skipped
        tokens = sum(u.prompt_tokens + u.completion_tokens for u in self.gateway.usage.values())
        hits = sum(u.cache_hits for u in self.gateway.usage.values())
        task = self._progress.tasks[0]
        rate = f"{task.speed:.1f}" if task.speed else "-"
        self._progress.update(
            self._task,
            completed=done,
            rate=rate,
            extra=f"tokens {tokens:,}  cached {hits:,}  failed {summary.failed + summary.bad_input}"
            + self._concurrency(),
        )

    def _concurrency(self) -> str:
        """``  m: limit 57 0.21s 429 0.3%`` per model that made requests (cached calls make none)."""
        shown = [
            f"  {name}: limit {concurrency_text(report, short=True)}"
            for name, report in self.gateway.concurrency().items()
            if report.get("requests")
        ]
        return "".join(shown)
