"""The files of one run's output folder, and how a crashed run is picked up again.

The data files are the source of truth (DataDesigner's rule): ``data.jsonl`` and ``failures.jsonl`` hold
records, ``ledger.jsonl`` one line per finished input record, written *after* that record's outputs. A
record's *last* ledger line is its status, and the status says where its lines are: ``ok`` in data.jsonl,
``failed`` in failures.jsonl (its last line there), ``filtered`` nowhere. Any other line of a record is
not committed and is removed by :meth:`RunState.open` before anything is appended:

- output lines whose ledger line never got written (a ``kill -9`` between the two writes) can only sit at
  the tail of their file, and are cut off (:func:`~joydataforge.io.writers.repair_tail`);
- failure lines of a record that was redone since (``--retry-failed``) are dropped from failures.jsonl
  (:func:`compact_failures`), by one atomic replace.

``--retry-failed`` therefore deletes nothing up front: the failed records are simply not counted as done,
and each one's old failure line stays until its new outcome is committed. A kill at any instant leaves
every record in data.jsonl or failures.jsonl as its ledger says, never in neither and never twice
(``tests/test_retry_failed_crash.py`` kills a run at each of these points, see :func:`crash_point`).

``spend.json`` is what every run of the folder spent on model calls, by model (calls, tokens, cost): what
``run.budget`` counts from on a resume. The committer replaces it (atomically) with each batch it commits,
before the batch's lines, and the run replaces it once more at its end; a ``kill -9`` forgets at most the
calls made since the last commit, most of which a resume finds in the call cache.
Files are only ever replaced whole (``os.replace``), so a half-written replacement is a stray ``*.tmp``
that the next open removes. ``run.json`` (the pipeline's fingerprint) is replaced atomically too.

The folder must be locked (:mod:`.lock`) by the caller before :meth:`RunState.open`: two processes
repairing and appending to the same files would undo each other.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io.writers import repair_tail
from ..models.budget import Spend

DATA = "data.jsonl"
FAILURES = "failures.jsonl"
LEDGER = "ledger.jsonl"
RUN_INFO = "run.json"
SUMMARY = "summary.json"
SPEND = "spend.json"

_REPLACED = (DATA, FAILURES, LEDGER, RUN_INFO, SUMMARY, SPEND)
CRASH_ENV = "JOYFORGE_TEST_CRASH_AT"
_crash_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Test hook: ``JOYFORGE_TEST_CRASH_AT=name[:n]`` makes the process SIGKILL itself the n-th time (default
    1st) it passes ``name``. Only the crash tests set it; it lets them prove that every commit point of a
    run leaves a folder that resumes without losing or duplicating a record."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    target, _, count = wanted.partition(":")
    if target != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_json(path: Path, value: Any, *, sync: bool = True) -> None:
    """Replace ``path`` with ``value`` as JSON, whole or not at all; ``sync=False`` skips the fsync (a
    ``kill -9`` cannot tear it either way; only a power cut can lose the newest version)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, ensure_ascii=False, indent=2)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def os_error_line(exc: OSError) -> str:
    """One line for a file-system error: the path and what to do, not a traceback."""
    path = exc.filename or "the output folder"
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"no space left on the device of {path}: free some space"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: {path}: fix its permissions, or choose another path (-o for the output folder)"
    if code == errno.EROFS:
        return f"{path} is on a read-only file system: use another folder (-o for the output)"
    if code == errno.ENOENT:
        return f"no such file or folder: {path}"
    if code == errno.ENOTDIR:
        return f"{path}: a part of this path is a file, not a folder"
    if code == errno.EISDIR:
        return f"{path} is a folder, not a file"
    return f"{path}: {exc.strerror or exc}"


def read_spend(folder: Path) -> dict[str, Spend]:
    """What earlier runs of the folder spent, by model (``spend.json``); nothing when there is no such file."""
    path = folder / SPEND
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text("utf-8"))
        return {name: Spend.from_dict(values) for name, values in data["models"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"{path}: not a spend file joyforge wrote ({exc}); fix or delete it (it is what run.budget counts "
            "from: deleting it forgets what earlier runs of this folder spent)"
        ) from None


def write_spend(folder: Path, spend: dict[str, Spend], *, sync: bool = False) -> None:
    """Replace ``spend.json`` with ``spend`` (every run of the folder, by model) and its totals."""
    value = {
        "models": {name: s.as_dict() for name, s in sorted(spend.items())},
        "cost": round(sum(s.cost for s in spend.values()), 9),
        "tokens": sum(s.tokens for s in spend.values()),
    }
    atomic_write_json(folder / SPEND, value, sync=sync)


def _read_ledger(path: Path) -> dict[str, str]:
    """Source id -> last status; a torn last line (the crash) is dropped and truncated away."""
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
            done.pop(entry["id"], None)  # a redone record moves to the end: dict order = commit order
            done[entry["id"]] = entry["status"]
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        with path.open("r+b") as handle:
            handle.truncate(good_bytes)
    return done


def source_of(record: dict[str, Any]) -> str | None:
    """The input record a data or failure line belongs to."""
    meta = record.get("_meta")
    return meta.get("source_id") if isinstance(meta, dict) else record.get("source_id")


def _replace_with_lines(path: Path, lines: Callable[[Any], Any]) -> None:
    """Write a new version of ``path`` through ``lines(out)`` and swap it in atomically (fsync first)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            lines(out)
            out.flush()
            os.fsync(out.fileno())
        crash_point("replacing")  # the new version is written, not yet swapped in
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compact_failures(path: Path, status: dict[str, str]) -> int:
    """Keep, per record whose last status is ``failed``, only its last failure line; return lines dropped.

    Stale lines are those of records redone since (``--retry-failed``) and the earlier failure of a record
    that failed again. Nothing is rewritten when nothing is stale, so a plain resume only reads the file.
    """
    if not path.exists():
        return 0
    last: dict[str, int] = {}
    total = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle):
            total += 1
            source = source_of(json.loads(raw))
            if source is not None and status.get(source) == "failed":
                last[source] = number
    keep = set(last.values())
    if len(keep) == total:
        return 0

    def kept(out: Any) -> None:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle):
                if number in keep:
                    out.write(raw)

    _replace_with_lines(path, kept)
    return total - len(keep)


def restore_order(path: Path, position: dict[str, int]) -> bool:
    """Sort data.jsonl back into input order after records were redone out of it (resume, ``--retry-failed``).

    ``position`` maps source ids to their place in the input. A line of a record outside it (another
    ``--start``/``--limit`` window) keeps its place after the line before it; the outputs of one record
    keep their order. Only an index (position, offset, length) is held in memory, never the lines. The
    file is replaced atomically with the same lines, so a kill during the sort loses nothing.
    """
    if not path.exists():
        return False
    index: list[tuple[int, int, int]] = []
    offset, key = 0, -1
    with path.open("rb") as handle:
        for raw in handle:
            found = position.get(source_of(json.loads(raw)) or "")
            key = key if found is None else found
            index.append((key, offset, len(raw)))
            offset += len(raw)
    if all(index[i][0] <= index[i + 1][0] for i in range(len(index) - 1)):
        return False
    index.sort(key=itemgetter(0))  # stable: a record's outputs stay in their order

    def ordered(out: Any) -> None:
        with path.open("rb") as handle:
            for _, start, length in index:
                handle.seek(start)
                out.write(handle.read(length))

    _replace_with_lines(path, ordered)
    return True


@dataclass
class RunState:
    """What the folder says about each input record, kept current by the executor as records commit.

    ``status``: every record's last ledger status. ``redo``: failed records that ``--retry-failed`` runs
    again (until they commit anew). A record is done when it has a status and is not to be redone.
    """

    folder: Path
    status: dict[str, str] = field(default_factory=dict)
    redo: set[str] = field(default_factory=set)
    resumed: bool = False
    repaired_lines: int = 0
    redone: int = 0  # records of ``redo`` committed anew in this run
    spent_before: dict[str, Spend] = field(default_factory=dict)  # what earlier runs of the folder spent

    @property
    def data(self) -> Path:
        return self.folder / DATA

    @property
    def failures(self) -> Path:
        return self.folder / FAILURES

    @property
    def ledger(self) -> Path:
        return self.folder / LEDGER

    def is_done(self, source_id: str) -> bool:
        return source_id in self.status and source_id not in self.redo

    def committed(self, source_id: str, status: str) -> None:
        """Called once a record's ledger line is written."""
        if source_id in self.redo:
            self.redo.discard(source_id)
            self.redone += 1
        self.status[source_id] = status

    def totals(self) -> dict[str, int]:
        """Records of the folder by last status: the verdict of the folder, not only of this run."""
        counts = {"ok": 0, "filtered": 0, "failed": 0}
        for status in self.status.values():
            counts[status] = counts.get(status, 0) + 1
        return counts

    def finish(self) -> None:
        """Drop the failure lines of records redone in this run (crash-safe: one atomic replace)."""
        if self.redone:
            compact_failures(self.failures, self.status)
            crash_point("compacted-at-end")

    @classmethod
    def open(cls, folder: Path, fingerprint: str, *, retry_failed: bool = False, overwrite: bool = False) -> "RunState":
        """Read and repair the folder (see the module docstring); the caller holds its lock."""
        folder.mkdir(parents=True, exist_ok=True)
        for stray in folder.glob("*.tmp"):
            if stray.name.startswith(_REPLACED):  # a replacement a kill interrupted
                stray.unlink()
        info_path = folder / RUN_INFO
        if overwrite:
            for name in _REPLACED:
                (folder / name).unlink(missing_ok=True)
        state = cls(folder)
        if info_path.exists():
            previous = json.loads(info_path.read_text("utf-8")).get("fingerprint")
            if previous != fingerprint and (folder / LEDGER).exists():
                raise ConfigError(
                    f"{folder} holds the output of a different pipeline (its steps or settings changed). "
                    "Use another output folder, or --overwrite to start this one afresh."
                )
        state.status = _read_ledger(state.ledger)
        state.resumed = bool(state.status)
        status = state.status
        if state.data.exists():
            state.repaired_lines += repair_tail(state.data, lambda r: status.get(source_of(r) or "") == "ok")
        if state.failures.exists():
            state.repaired_lines += repair_tail(state.failures, lambda r: status.get(source_of(r) or "") == "failed")
            if compact_failures(state.failures, status):
                crash_point("compacted-at-open")
        if retry_failed:
            state.redo = {i for i, s in status.items() if s == "failed"}
        state.spent_before = read_spend(folder)
        atomic_write_json(info_path, {"fingerprint": fingerprint})
        return state
