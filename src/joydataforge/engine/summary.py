"""What a run did, in numbers: shown at the end, written to ``summary.json``, and the run's exit status."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ExitCode

BAD_RECORDS_LISTED = 20  # summary.json names this many bad records; failures.jsonl has them all


def concurrency_text(report: dict[str, Any], *, short: bool = False) -> str:
    """A model's concurrency in a few words: ``57 adaptive (8-64), 0.212s, 429s 0.3%``; ``short`` for the
    progress bar: ``57 0.21s 429 0.3%``. ``report`` is what summary.json keeps under ``models.<name>.concurrency``."""
    limit = report.get("limit", "?")
    latency = float(report.get("latency") or 0.0)
    share = float(report.get("rate_limited_share") or 0.0)
    if short:
        text = f"{limit}" + (f" {latency:.2f}s" if latency else "")
        return text + (f" 429 {share:.1%}" if report.get("rate_limited") else "")
    mode = report.get("mode", "")
    text = f"{limit} {mode}"
    if mode == "adaptive" and report.get("lowest") != report.get("highest"):
        text += f" ({report.get('lowest')}-{report.get('highest')})"
    if report.get("rate_limited"):
        text += f", 429s {share:.1%}"
    return text


@dataclass
class RunSummary:
    records_in: int = 0  # records read in the window, good or bad
    records_out: int = 0  # output records written (a step may emit several per input)
    inputs_done: int = 0  # input records that produced output
    filtered: int = 0  # input records that a step dropped on purpose
    failed: int = 0  # input records whose steps failed; kept in failures.jsonl
    bad_input: int = 0  # unreadable lines and records with a missing or mistyped field; in failures.jsonl
    skipped: int = 0  # already done by an earlier run (resume)
    repaired_lines: int = 0  # torn or uncommitted lines cut from the output tail on resume
    seconds: float = 0.0
    models: dict[str, Any] = field(default_factory=dict)  # usage per model; "concurrency": its limit at the end
    steps: dict[str, Any] = field(default_factory=dict)
    output_dir: str = ""
    bad_records: list[str] = field(default_factory=list)  # "file:line field 'x': reason", the first few
    stopped: str = ""  # why the run stopped before its end (one line); "" when it ran to its end
    stop_kind: str = ""  # "stopped" (resumable: exit 5) or "bad_input" (on_bad_record: stop: exit 2)
    totals: dict[str, int] = field(default_factory=dict)  # the folder's records by status after this run

    @property
    def cache_hits(self) -> int:
        return sum(int(m.get("cache_hits", 0)) for m in self.models.values())

    @property
    def tokens(self) -> int:
        return sum(int(m.get("prompt_tokens", 0)) + int(m.get("completion_tokens", 0)) for m in self.models.values())

    @property
    def reasoning_tokens(self) -> int:
        """Of the completion tokens, those thinking models spent on their traces (counted in ``tokens`` too)."""
        return sum(int(m.get("reasoning_tokens", 0)) for m in self.models.values())

    @property
    def cost(self) -> float:
        return sum(float(m.get("cost", 0.0)) for m in self.models.values())

    def note_bad_record(self, line: str) -> None:
        if len(self.bad_records) < BAD_RECORDS_LISTED:
            self.bad_records.append(line)

    @property
    def failed_total(self) -> int:
        """Records of the folder that failed (this run or an earlier one) and are in failures.jsonl now."""
        return self.totals.get("failed", self.failed + self.bad_input)

    @property
    def succeeded_total(self) -> int:
        return self.totals.get("ok", self.inputs_done) + self.totals.get("filtered", self.filtered)

    def exit_code(self) -> ExitCode:
        """The run's verdict for scripts and CI (``joyforge run --help``, docs/reliability.md).

        Failures are counted over the whole folder, so re-running a finished run whose records failed
        still says so (3) instead of 0: the folder is not complete until failures.jsonl is empty.
        """
        if self.stopped:
            return ExitCode.CONFIG if self.stop_kind == "bad_input" else ExitCode.STOPPED
        if self.failed_total == 0:
            return ExitCode.OK
        return ExitCode.SOME_FAILED if self.succeeded_total > 0 else ExitCode.ALL_FAILED

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            cache_hits=self.cache_hits,
            tokens=self.tokens,
            reasoning_tokens=self.reasoning_tokens,
            cost=round(self.cost, 6),
            exit_status=int(self.exit_code()),
        )
        return data
