"""One run per output folder: an exclusive OS lock on ``<folder>/.lock`` that the kernel drops when its holder dies.

Two runs appending to one folder (a second terminal, an overlapping cron job) pay for every record twice and
write it twice, and resume cannot tell the copies apart. A pid file alone is no guard: after ``kill -9`` it
stays behind and blocks the next run, or names a pid the system has since given to another process. So the
lock is ``flock(LOCK_EX | LOCK_NB)`` on an open descriptor (``msvcrt.locking`` on Windows): the kernel
releases it when the descriptor closes, which a dying process always does, so there is never a stale lock.
The pid written into the file is only there to name the holder in the message; it is never trusted.

The lock file is never deleted: removing it while another process waits on its descriptor would let two
processes hold locks on two different files of the same name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

from ..errors import JoyForgeError

LOCK_NAME = ".lock"

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    _LOCK_OFFSET = 1 << 20  # lock a byte past the pid, so others can still read who holds it

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


class FolderBusy(JoyForgeError):
    """Another run holds the output folder; nothing of it was read or written (exit status 2)."""

    def __init__(self, folder: Path, pid: int | None):
        self.folder = folder
        self.pid = pid
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"{folder} is in use by another joyforge run ({holder}); wait for it to end, "
            "or write to another output folder (-o)"
        )


class FolderLock:
    """The exclusive lock of one output folder, held from :meth:`acquire` until :meth:`release` or death."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        """Take the lock at once or raise :class:`FolderBusy` naming the holder's pid; never waits."""
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
        try:
            if not _try_lock(fd):
                raise FolderBusy(self.folder, _read_pid(fd))
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (closing the descriptor is what releases it); clearing the pid is a courtesy."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote, if it got that far (a holder that just started may not have)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
