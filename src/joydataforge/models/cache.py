"""A persistent cache of model calls, so a re-run or a resumed run costs nothing.

SQLite in WAL mode, owned by one background thread: lookups hop to it, writes are queued and committed
in batches, so hundreds of concurrent calls never block the event loop on disk I/O. The key is a hash
of everything that determines a reply (see :meth:`ModelClient._key`); keys and secrets are never part
of it, and nothing but the reply and its token counts is stored.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


class CallCache:
    def __init__(self, path: str | Path, *, batch_size: int = 256):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="joyforge-cache")
        self._pending: dict[str, str] = {}
        self._pending_lock = threading.Lock()
        self._batch_size = batch_size
        self._conn: sqlite3.Connection | None = None
        self.hits = 0
        self.misses = 0
        self._executor.submit(self._open).result()

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.commit()
        self._conn = conn

    def _get_sync(self, key: str) -> str | None:
        assert self._conn is not None
        row = self._conn.execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _flush_sync(self) -> None:
        with self._pending_lock:
            items = list(self._pending.items())
            self._pending.clear()
        if items and self._conn is not None:
            self._conn.executemany("INSERT OR REPLACE INTO calls (key, value) VALUES (?, ?)", items)
            self._conn.commit()

    async def get(self, key: str) -> dict[str, Any] | None:
        with self._pending_lock:
            value = self._pending.get(key)
        if value is None:
            value = await asyncio.get_running_loop().run_in_executor(self._executor, self._get_sync, key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(value)

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._pending_lock:
            self._pending[key] = json.dumps(value, ensure_ascii=False)
            full = len(self._pending) >= self._batch_size
        if full:
            self._executor.submit(self._flush_sync)

    async def flush(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._flush_sync)

    def close(self) -> None:
        def _close() -> None:
            self._flush_sync()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)
