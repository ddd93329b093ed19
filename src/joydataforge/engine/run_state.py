"""The files of one run's output folder, and how a crashed run is picked up again.

The data files are the source of truth (DataDesigner's rule): ``data.jsonl`` and ``failures.jsonl`` hold
records, ``ledger.jsonl`` one line per finished input record, written *after* that record's outputs. On
resume, a record is done iff its ledger line exists; output lines of a record whose ledger line never
got written (a ``kill -9`` between the two writes) can only sit at the tail, and are cut off, so nothing
is duplicated. ``run.json`` (the pipeline's fingerprint) is replaced atomically.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io.writers import repair_tail

DATA = "data.jsonl"
FAILURES = "failures.jsonl"
LEDGER = "ledger.jsonl"
RUN_INFO = "run.json"
SUMMARY = "summary.json"


def atomic_write_json(path: Path, value: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(value, handle, ensure_ascii=False, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_ledger(path: Path) -> dict[str, str]:
    """Source id -> status; a torn last line (the crash) is dropped and truncated away."""
    done: dict[str, str] = {}
    if not path.exists():
        return done
    good_bytes = 0
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                break
            done[entry["id"]] = entry["status"]
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        with path.open("r+b") as handle:
            handle.truncate(good_bytes)
    return done


def _source_of(record: dict[str, Any]) -> str | None:
    meta = record.get("_meta")
    return meta.get("source_id") if isinstance(meta, dict) else record.get("source_id")


def _rewrite_without(path: Path, drop_ids: set[str]) -> None:
    """Drop the lines of records about to be redone (``--retry-failed``), atomically."""
    if not path.exists() or not drop_ids:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as out, path.open(encoding="utf-8") as src:
        for line in src:
            if _source_of(json.loads(line)) not in drop_ids:
                out.write(line)
    os.replace(tmp, path)


@dataclass
class RunState:
    folder: Path
    done: dict[str, str] = field(default_factory=dict)
    resumed: bool = False
    repaired_lines: int = 0

    @property
    def data(self) -> Path:
        return self.folder / DATA

    @property
    def failures(self) -> Path:
        return self.folder / FAILURES

    @property
    def ledger(self) -> Path:
        return self.folder / LEDGER

    @classmethod
    def open(cls, folder: Path, fingerprint: str, *, retry_failed: bool = False,
             overwrite: bool = False) -> "RunState":
        folder.mkdir(parents=True, exist_ok=True)
        info_path = folder / RUN_INFO
        if overwrite:
            for name in (DATA, FAILURES, LEDGER, RUN_INFO, SUMMARY):
                (folder / name).unlink(missing_ok=True)
        state = cls(folder)
        if info_path.exists():
            previous = json.loads(info_path.read_text("utf-8")).get("fingerprint")
            if previous != fingerprint and (folder / LEDGER).exists():
                raise ConfigError(
                    f"{folder} holds the output of a different pipeline (its steps or settings changed). "
                    "Use another output folder, or --overwrite to start this one afresh.")
        state.done = _read_ledger(state.ledger)
        state.resumed = bool(state.done)
        committed = set(state.done)
        for path in (state.data, state.failures):
            if path.exists():
                state.repaired_lines += repair_tail(path, lambda r: _source_of(r) in committed)
        if retry_failed:
            failed = {i for i, status in state.done.items() if status == "failed"}
            if failed:
                _rewrite_without(state.failures, failed)
                _rewrite_without(state.data, failed)
                for source_id in failed:
                    del state.done[source_id]
                _rewrite_ledger(state.ledger, state.done)
        atomic_write_json(info_path, {"fingerprint": fingerprint})
        return state


def _rewrite_ledger(path: Path, done: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        for source_id, status in done.items():
            out.write(json.dumps({"id": source_id, "status": status}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
