"""What ``joyforge view PATH`` opens: a run folder's files, or one data file, and where the viewer keeps its own.

A run folder (see :mod:`joydataforge.engine.run_state`) gives ``data.jsonl`` (kept records),
``failures.jsonl`` (failed ones, with the raw reply), ``ledger.jsonl`` (the ids of records a filter
dropped), ``summary.json`` and any ``joyforge eval`` output saved there (an HTML report, whose metrics
are embedded in it, or a metrics JSON). Any other path is one data file: JSONL is indexed where it lies;
Parquet (and the other formats :mod:`joydataforge.io.readers` reads) is first copied to JSONL in the cache
folder, once, so that every record has a line to seek to.

The viewer's own files never touch the data: the index lives in ``.joyforge-view/`` beside the data (or
in ``~/.cache/joyforge/view/`` when that folder is read-only), the review in its sidecar
(:func:`~joydataforge.view.review.review_path_for`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.run_state import DATA, FAILURES, LEDGER, RUN_INFO, SUMMARY
from ..errors import InputError
from ..io.readers import SUPPORTED_SUFFIXES
from .review import REVIEW_FILE, review_path_for

CACHE_DIR = ".joyforge-view"
_METRICS_SCRIPT = re.compile(rb'<script type="application/json" id="metrics-data">(.*?)</script>', re.S)
_METRICS_KEYS = ("near_duplicates", "semantic", "lengths", "labels", "entities")
_MAX_REPORT_BYTES = 64 << 20


@dataclass
class EvalReport:
    """A ``joyforge eval`` output found in a run folder: its metrics, and the HTML page when there is one."""

    path: Path
    metrics: dict[str, Any]
    html: bool


@dataclass
class Dataset:
    path: Path  # what the user gave
    run: bool  # a run folder
    data: Path | None  # the records file as given (data.jsonl, or the file)
    failures: Path | None = None
    ledger: Path | None = None
    summary: Path | None = None
    input: Path | None = None  # the run's input, given with --input: rewrite parents, dropped records
    reports: list[EvalReport] = field(default_factory=list)
    review: Path = Path(REVIEW_FILE)
    cache: Path = Path(CACHE_DIR)

    @property
    def title(self) -> str:
        return self.path.name or str(self.path)

    def is_jsonl(self, path: Path) -> bool:
        return path.suffix.lower() in (".jsonl", ".ndjson")

    def sources(self) -> list[tuple[str, Path]]:
        """``(role, path)`` of every file the index is built from; their sizes and times key the index."""
        found = [("data", self.data), ("failures", self.failures), ("ledger", self.ledger), ("input", self.input)]
        return [(role, path) for role, path in found if path is not None and path.exists()]

    def signature(self) -> str:
        """Changes whenever a source file does (size, modification time): the index is then rebuilt."""
        parts = []
        for role, path in self.sources():
            stat = path.stat()
            parts.append([role, str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        return json.dumps(parts)


def open_dataset(path: str | Path, *, input_path: str | Path | None = None) -> Dataset:
    """The dataset at ``path``; InputError (one line) when there is nothing to show there."""
    target = Path(path).expanduser()
    if not target.exists():
        raise InputError(f"{target}: no such file or folder")
    given_input = Path(input_path).expanduser() if input_path else None
    if given_input is not None and not given_input.is_file():
        raise InputError(f"--input {given_input}: no such file")
    if target.is_file() and target.name == DATA and (target.parent / LEDGER).exists():
        target = target.parent  # a run's data.jsonl: show the whole run
    if target.is_dir():
        dataset = _run_folder(target)
    else:
        if target.suffix.lower() not in SUPPORTED_SUFFIXES or target.suffix.lower() in (".yaml", ".yml"):
            raise InputError(
                f"{target}: cannot show {target.suffix or 'a file without extension'}; "
                "give a run folder or a .jsonl, .parquet, .json, .csv or .xlsx file"
            )
        dataset = Dataset(target, run=False, data=target, review=review_path_for(target))
    dataset.input = given_input
    dataset.cache = cache_folder(target if target.is_dir() else target.parent)
    return dataset


def _run_folder(folder: Path) -> Dataset:
    present = {name: (folder / name) for name in (DATA, FAILURES, LEDGER, SUMMARY, RUN_INFO)}
    if not any(present[name].exists() for name in (DATA, FAILURES, LEDGER)):
        candidates = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jsonl", ".parquet"))
        hint = f"; files here: {', '.join(candidates[:8])}" if candidates else ""
        raise InputError(
            f"{folder}: not a run folder (no {DATA}, {FAILURES} or {LEDGER}); give a run folder or a data file{hint}"
        )
    return Dataset(
        folder,
        run=True,
        data=present[DATA] if present[DATA].exists() else None,
        failures=present[FAILURES] if present[FAILURES].exists() else None,
        ledger=present[LEDGER] if present[LEDGER].exists() else None,
        summary=present[SUMMARY] if present[SUMMARY].exists() else None,
        reports=find_reports(folder),
        review=folder / REVIEW_FILE,
    )


def cache_folder(beside: Path) -> Path:
    """``beside/.joyforge-view``, or a per-path folder under ``~/.cache`` where ``beside`` is read-only."""
    local = beside / CACHE_DIR
    try:
        local.mkdir(exist_ok=True)
        probe = local / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
        return local
    except OSError:
        digest = hashlib.sha256(str(beside.resolve()).encode("utf-8")).hexdigest()[:16]
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        fallback = base / "joyforge" / "view" / digest
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def find_reports(folder: Path) -> list[EvalReport]:
    """``joyforge eval`` outputs saved in the folder: HTML reports (metrics embedded) and metrics JSON."""
    found = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.stat().st_size > _MAX_REPORT_BYTES:
            continue
        suffix = path.suffix.lower()
        if suffix == ".html":
            match = _METRICS_SCRIPT.search(path.read_bytes())
            metrics = _json_or_none(match.group(1)) if match else None
            if isinstance(metrics, dict):
                found.append(EvalReport(path, metrics, html=True))
        elif suffix == ".json" and path.name not in (SUMMARY, RUN_INFO):
            metrics = _json_or_none(path.read_bytes())
            if isinstance(metrics, dict) and "records" in metrics and any(k in metrics for k in _METRICS_KEYS):
                found.append(EvalReport(path, metrics, html=False))
    return found


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
