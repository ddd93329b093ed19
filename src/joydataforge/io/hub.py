"""Share a dataset on the Hugging Face Hub: Parquet shards, a dataset card, one commit.

``joyforge push PATH REPO_ID`` (:mod:`joydataforge.cli.push`) is this module plus the measuring of
:mod:`joydataforge.evaluate`. What goes up is the folder layout ``datasets.push_to_hub`` writes, so that
``datasets.load_dataset(REPO_ID)`` and the Hub's viewer read it without a loading script:

- ``data/<split>-00000-of-0000N.parquet`` (``<config>/<split>-...`` for a config other than ``default``):
  shards of at most ``max_shard_bytes`` of Arrow data each (500 MB by default, as ``datasets`` counts them);
- ``README.md``: the dataset card (:mod:`.hub_card`): front matter for the Hub and ``datasets``, how the data
  was made (from ``summary.json``, ``run.json`` and each record's ``_meta``: :class:`RunFacts`) and the
  ``joyforge eval`` numbers.

Pushing another split or config to the same repo keeps what is there (the card is merged); the old shards of
the pushed split are deleted in the same commit, so a smaller push never leaves stale rows behind.

The token is ``huggingface_hub``'s own (``HF_TOKEN``, or the login cache of ``hf auth login``): this module
never takes one as an argument, never writes one, never prints one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, JoyForgeError, Location

DEFAULT_MAX_SHARD_BYTES = 500 * 10**6  # what datasets.push_to_hub uses ("500MB", decimal)
_ROW_GROUP_ROWS = 10_000
_ROW_GROUP_BYTES = 64 << 20
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")  # datasets' own rule for split names
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}
_SUMMARY, _RUN_INFO, _DATA, _LEDGER = "summary.json", "run.json", "data.jsonl", "ledger.jsonl"


class HubPushError(JoyForgeError):
    """The Hub refused or could not be reached; the message is one line and never holds the token."""


# --- what to push where ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushTarget:
    """Where the data goes and how the card describes it. ``None`` fields are detected or kept from the card."""

    repo_id: str
    split: str = "train"
    config: str = "default"
    private: bool = False
    license: str | None = None
    languages: tuple[str, ...] | None = None
    task_categories: tuple[str, ...] | None = None
    tags: tuple[str, ...] = ()
    pretty_name: str | None = None
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES

    def __post_init__(self) -> None:
        if not _REPO_ID.match(self.repo_id) or ".." in self.repo_id:
            raise InputError(f"REPO_ID {self.repo_id!r}: write OWNER/NAME (letters, digits, '-', '_', '.')")
        if not _SPLIT_NAME.match(self.split):
            raise InputError(f"--split {self.split!r}: a split name is letters, digits and '_' (train, test, ...)")
        if not _CONFIG_NAME.match(self.config) or self.config == "data":
            raise InputError(f"--config {self.config!r}: letters, digits, '-', '_' or '.', and not 'data'")
        if self.max_shard_bytes < 1:
            raise InputError("--max-shard-size must be more than 0 bytes")

    @property
    def data_dir(self) -> str:
        """The repo folder of this config's shards (``datasets``' layout)."""
        return "data" if self.config == "default" else self.config

    @property
    def shard_pattern(self) -> str:
        """The ``data_files`` pattern of this split, and the files a new push of it replaces."""
        return f"{self.data_dir}/{self.split}-*"

    @property
    def key(self) -> str:
        return f"{self.config}/{self.split}"


def parse_size(text: str) -> int:
    """``500MB``, ``1GB``, ``64MiB``, ``1000000``: bytes (decimal units like ``datasets``, binary with ``i``)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, re.I)
    if match is None:
        raise InputError(f"--max-shard-size {text!r}: write a size like 500MB, 1GB or 64MiB")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "").upper()])


# --- what the run says -----------------------------------------------------------------------------------


@dataclass
class CallStats:
    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class DataSource:
    """The records file to push, and the run folder around it when there is one."""

    path: Path  # what the user named
    data: Path  # the records file: a run's data.jsonl, or the file itself
    run_folder: Path | None = None
    summary: dict[str, Any] | None = None
    fingerprint: str | None = None

    @property
    def is_parquet(self) -> bool:
        return self.data.suffix.lower() == ".parquet"


def locate_data(path: str | Path) -> DataSource:
    """PATH of ``joyforge push``: a run folder (its ``data.jsonl``, kept records) or a JSONL/Parquet file."""
    target = Path(path).expanduser()
    if not target.exists():
        raise InputError("no such file or folder", Location(str(target)))
    if target.is_file() and target.name == _DATA and (target.parent / _LEDGER).exists():
        target = target.parent  # a run's data.jsonl: the run folder says how it was made
    if target.is_dir():
        data = target / _DATA
        if not data.is_file():
            raise InputError(
                f"not a run folder (no {_DATA}); give a run folder or a .jsonl/.parquet file", Location(str(target))
            )
        return DataSource(target, data, target, _read_json(target / _SUMMARY), _fingerprint(target / _RUN_INFO))
    if target.suffix.lower() not in (".jsonl", ".ndjson", ".parquet"):
        raise InputError(
            f"cannot push {target.suffix or 'a file without extension'}: give a run folder or a .jsonl/.parquet file",
            Location(str(target)),
        )
    return DataSource(target, target)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _fingerprint(path: Path) -> str | None:
    info = _read_json(path)
    value = info.get("fingerprint") if info else None
    return str(value) if value else None


@dataclass
class RunFacts:
    """How the records were made, gathered from their ``_meta`` (one pass, any number of records)."""

    records: int = 0
    pipelines: Counter[str] = field(default_factory=Counter)
    tasks: Counter[str] = field(default_factory=Counter)
    steps: list[str] = field(default_factory=list)  # in the order the records' calls name them
    calls: dict[tuple[str, str, str], CallStats] = field(default_factory=dict)  # (step, model, model id)
    inputs: Counter[str] = field(default_factory=Counter)  # the input files the records came from

    def observe(self, record: dict[str, Any]) -> None:
        self.records += 1
        meta = record.get("_meta")
        if not isinstance(meta, dict):
            return
        for key, counter in (("pipeline", self.pipelines), ("task", self.tasks)):
            if isinstance(meta.get(key), str):
                counter[meta[key]] += 1
        origin = meta.get("from")
        if isinstance(origin, str):
            self.inputs[origin.rsplit(":", 1)[0] if re.search(r":\d+$", origin) else origin] += 1
        for call in meta.get("calls") or []:
            if not isinstance(call, dict):
                continue
            step = str(call.get("step") or "?")
            if step not in self.steps:
                self.steps.append(step)
            key = (step, str(call.get("model") or "?"), str(call.get("model_id") or ""))
            stats = self.calls.setdefault(key, CallStats())
            stats.calls += 1
            stats.cached += bool(call.get("cached"))
            stats.prompt_tokens += _int(call.get("prompt_tokens"))
            stats.completion_tokens += _int(call.get("completion_tokens"))

    @property
    def models(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((model, model_id) for _, model, model_id in self.calls))

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.calls.values())

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.calls.values())


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


# --- Parquet shards --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    path_in_repo: str
    rows: int
    bytes: int  # the file's size


def write_shards(parquet_file: Path, folder: Path, target: PushTarget, *, drop: Sequence[str] = ()) -> list[Shard]:
    """Cut ``parquet_file`` into shards of at most ``target.max_shard_bytes`` of Arrow data under ``folder``.

    Shards are named ``<split>-<i>-of-<n>.parquet`` like ``datasets.push_to_hub`` names them, so ``n`` is
    known only at the end: they are written under temporary names first. The schema (with the metadata
    that names the columns stored as JSON text) is the source's, less the ``drop`` columns; row groups hold
    at most 10,000 rows or 64 MiB, small enough for the Hub's viewer to page through.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(parquet_file)
    names = [name for name in source.schema_arrow.names if name not in set(drop)]
    schema = pa.schema([source.schema_arrow.field(name) for name in names], metadata=source.schema_arrow.metadata)
    out = folder / target.data_dir
    out.mkdir(parents=True, exist_ok=True)
    parts: list[tuple[Path, int]] = []
    writer: pq.ParquetWriter | None = None
    pending: list[pa.RecordBatch] = []
    shard_bytes = pending_bytes = pending_rows = rows = 0

    def flush() -> None:
        nonlocal pending, pending_bytes, pending_rows
        if pending and writer is not None:
            writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=max(1, pending_rows))
        pending, pending_bytes, pending_rows = [], 0, 0

    def close() -> None:
        nonlocal writer
        flush()
        if writer is not None:
            writer.close()
            writer = None

    try:
        for batch in source.iter_batches(batch_size=_batch_rows(source, target.max_shard_bytes), columns=names):
            batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
            size = batch.nbytes
            if writer is not None and shard_bytes + size > target.max_shard_bytes:
                close()
                parts[-1] = (parts[-1][0], rows)
            if writer is None:
                part = out / f".{target.split}-{len(parts):05d}.parquet.part"
                writer = pq.ParquetWriter(part, schema)
                parts.append((part, 0))
                shard_bytes = rows = 0
            pending.append(batch)
            pending_bytes += size
            pending_rows += batch.num_rows
            shard_bytes += size
            rows += batch.num_rows
            if pending_rows >= _ROW_GROUP_ROWS or pending_bytes >= _ROW_GROUP_BYTES:
                flush()
        if writer is not None:
            close()
            parts[-1] = (parts[-1][0], rows)
    except BaseException:
        if writer is not None:
            writer.close()
        for part, _ in parts:
            part.unlink(missing_ok=True)
        raise
    shards = []
    for index, (part, count) in enumerate(parts):
        final = out / f"{target.split}-{index:05d}-of-{len(parts):05d}.parquet"
        os.replace(part, final)
        shards.append(Shard(final.relative_to(folder).as_posix(), count, final.stat().st_size))
    return shards


def _batch_rows(source: Any, max_bytes: int) -> int:
    """Rows read at a time: a quarter of a shard's worth (by the file's own size per row), 1 to 1,000, so that
    a shard ends close to its limit however small the limit is."""
    metadata = source.metadata
    rows = metadata.num_rows
    size = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    if not rows or not size:
        return 1_000
    return max(1, min(1_000, int(max_bytes / (size / rows)) // 4))


# --- the Hub ---------------------------------------------------------------------------------------------


def hub_api() -> Any:
    """``huggingface_hub.HfApi`` on its configured endpoint (``HF_ENDPOINT``), with its own token lookup."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise HubPushError("joyforge push needs huggingface_hub: pip install 'joydataforge[hub]'") from None
    return HfApi()


def require_token() -> None:
    """Stop before any work when no token is configured: a push needs write access."""
    from huggingface_hub import get_token

    if not get_token():
        raise HubPushError(
            "no Hugging Face token: set HF_TOKEN (a token with write access) or run `hf auth login`; "
            "joyforge never takes a token on the command line"
        )


def check_token(api: Any) -> None:
    """Ask the Hub who the token belongs to: a refused token or an unreachable Hub stops here, before any work."""
    try:
        api.whoami()
    except Exception as exc:
        raise hub_error(exc, "checking the token") from None


def existing_card(api: Any, repo_id: str) -> str | None:
    """The README.md on the Hub now, or ``None`` when the repo or the file does not exist (yet)."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = api.hf_hub_download(repo_id=repo_id, filename="README.md", repo_type="dataset")
    except (RepositoryNotFoundError, EntryNotFoundError, RevisionNotFoundError):
        return None
    except Exception as exc:
        raise hub_error(exc, "reading the current card") from None
    return Path(path).read_text("utf-8")


def upload(api: Any, folder: Path, target: PushTarget, *, message: str) -> str:
    """Create the dataset repo if needed and commit ``folder`` to it, replacing the split's old shards.

    Returns the commit's URL. Every failure is a :class:`HubPushError` of one line.
    """
    try:
        url = api.create_repo(target.repo_id, repo_type="dataset", private=target.private, exist_ok=True)
        info = api.upload_folder(
            repo_id=url.repo_id,
            repo_type="dataset",
            folder_path=str(folder),
            commit_message=message,
            delete_patterns=[target.shard_pattern],
        )
    except Exception as exc:
        raise hub_error(exc, "pushing") from None
    return str(getattr(info, "commit_url", info))


def hub_error(exc: BaseException, doing: str) -> HubPushError:
    """One line for a Hub failure: the status and the server's own message, never headers (the token)."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        server = getattr(exc, "server_message", None) or ""
        hint = {
            401: "the token was refused: check HF_TOKEN",
            403: "the token may not write there: use a token with write access to that namespace",
            404: "no such repository, or no access to it",
        }.get(status or 0, "")
        detail = "; ".join(p for p in (" ".join(server.split())[:300], hint) if p)
        return HubPushError(f"the Hub answered {status} while {doing}" + (f": {detail}" if detail else ""))
    if isinstance(exc, ValueError) and "metadata" in str(exc).lower():
        return HubPushError(f"the Hub refused the card while {doing}: {' '.join(str(exc).split())[:300]}")
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    return HubPushError(f"could not reach the Hub while {doing}: {type(exc).__name__}: {text}")


def clear_folder(folder: Path, target: PushTarget) -> None:
    """Empty a staging folder the user named (``--dry-run DIR``), refusing one that holds other things."""
    if folder.exists():
        if not folder.is_dir():
            raise InputError("--dry-run: a file is in the way; name a folder", Location(str(folder)))
        ours = ("README.md", target.data_dir)
        extra = [p.name for p in folder.iterdir() if p.name not in ours and not p.name.startswith(".")]
        if extra:
            raise InputError(
                f"--dry-run: the folder holds other files ({', '.join(sorted(extra)[:5])}); name an empty or new folder",
                Location(str(folder)),
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
