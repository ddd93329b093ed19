"""The provider batches of one output folder: ``batches.json``, the ``batches/`` folder, and a batched run's passes.

A batched run (``joyforge run --batch``, or ``batch: true`` on a model; docs/cost.md, "Batch") is a series of
passes of the ordinary executor. Before a pass, :meth:`BatchRun.before_pass` looks at the folder's batches:
one still running stops the run at once (nothing is sent twice), finished ones are collected into the call
cache. During the pass, the calls the cache cannot answer are deferred (:mod:`joydataforge.models.batch`)
and their records stay unfinished. After it, :meth:`BatchRun.after_pass` submits them, one batch per model
(and endpoint), and the run stops with exit status 5 and one line saying so. The next run collects, and its
pass gets one stage further: a method that calls models in stages (candidates then judges, vote then
cascade, Evol rounds) takes one batch per stage, and the last pass finishes every record with no live call.

Every step that talks to the provider is recorded in ``batches.json`` first or right after, and the file is
only ever replaced whole (``os.replace``), so a ``kill -9`` at any instant leaves a folder the next run
picks up:

1. *intent*: each new batch's input file (``batches/<name>.jsonl``) is on disk and named in batches.json,
   with its sha256, before anything is sent;
2. *uploaded*: ``POST /files`` answered, its file id recorded;
3. *submitted*: ``POST /batches`` answered (with ``metadata`` naming this folder's run key and the batch's
   name), its batch id recorded. A kill between the provider creating the batch and its id being recorded
   is why the next run first lists the provider's batches by that metadata (:meth:`BatchAPI.find
   <joydataforge.models.batch_api.BatchAPI.find>`) before creating one: no batch is ever created twice;
4. *collected*: the output and error files read, every result written into the call cache and the cache
   committed, and only then the batch marked collected. A kill before that collects it again (cache
   writes are idempotent): no result is lost.

Requests the provider answered with an error, or never answered (an expired or cancelled batch), are kept
in batches.json's ``failed`` map with their error and tries; each model's ``batch_failed`` decides what the
next pass does with them (:class:`~joydataforge.models.batch.BatchCollector`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BudgetExceeded, ConfigError, JoyForgeError, ModelError, RunStopped
from ..models.batch import BatchCollector, Chunk, batch_price, cache_entry, read_results
from ..models.batch_api import BatchAPI, BatchAPIError
from ..models.budget import Hold, Spend, money
from ..models.gateway import Gateway
from ..models.prices import price_of
from .run_state import atomic_write_json, crash_point

BATCHES = "batches.json"
BATCH_DIR = "batches"
FINAL = frozenset({"completed", "expired", "cancelled", "failed"})
"""Provider statuses after which a batch changes no more: its results (if any) can be collected."""
QUIET_ROUNDS = 20  # event-loop turns a pass's last deferrals get to land before its batch is written


class BatchPending(RunStopped):
    """The run waits for provider batches (submitted now, or still running): exit status 5, re-run to collect."""


@dataclass
class BatchBook:
    """``batches.json``: the folder's run key (in every batch's metadata), its batches, its failed requests."""

    folder: Path
    run_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    next: int = 1
    batches: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)
    saved: bool = False

    @classmethod
    def load(cls, folder: Path) -> BatchBook:
        path = folder / BATCHES
        if not path.exists():
            return cls(folder)
        try:
            data = json.loads(path.read_text("utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc}); it records this folder's provider batches") from None
        return cls(
            folder,
            run_key=str(data["run_key"]),
            next=int(data.get("next", 1)),
            batches=list(data.get("batches") or []),
            failed=dict(data.get("failed") or {}),
            saved=True,
        )

    def save(self) -> None:
        body = {"run_key": self.run_key, "next": self.next, "batches": self.batches, "failed": self.failed}
        atomic_write_json(self.folder / BATCHES, body)
        self.saved = True

    def new_name(self) -> str:
        """The local name of the next batch (its input file, its ``joyforge_batch`` metadata)."""
        name = f"b{self.next:04d}"
        self.next += 1
        return name

    def unsent(self) -> list[dict[str, Any]]:
        return [b for b in self.batches if b["state"] in ("intent", "uploaded")]

    def out(self) -> list[dict[str, Any]]:
        """Submitted and not collected yet."""
        return [b for b in self.batches if b["state"] == "submitted"]


class BatchRun:
    """The batches of one output folder during one run (the caller holds the folder's lock)."""

    def __init__(self, folder: Path, gateway: Gateway, *, every_model: bool = False, retry_failed: bool = False):
        self.folder = folder
        self.gateway = gateway
        self.every_model = every_model
        self.retry_failed = retry_failed
        self.book = BatchBook.load(folder)
        self.collector: BatchCollector | None = None
        self._apis: dict[str, BatchAPI] = {}

    @classmethod
    def open(
        cls, folder: Path, gateway: Gateway, *, every_model: bool = False, retry_failed: bool = False
    ) -> BatchRun | None:
        """The folder's batches, or ``None`` when it has none and this run makes none."""
        wanted = every_model or any(config.batch for config in gateway.registry.models.values())
        if not wanted and not (folder / BATCHES).exists():
            return None
        if gateway.cache is None:
            raise ConfigError(
                "batched calls need the call cache (run.cache): batch results are delivered through it; "
                "set run.cache to a file"
            )
        return cls(folder, gateway, every_model=every_model, retry_failed=retry_failed)

    def api(self, model: str) -> BatchAPI:
        api = self._apis.get(model)
        if api is None:
            api = self._apis[model] = BatchAPI(self.gateway.registry.get(model))
        return api

    async def close(self) -> None:
        self.gateway.defer_to(None)
        for api in self._apis.values():
            await api.close()

    # ------------------------------------------------------------------------------------------ a run's passes

    async def before_pass(self) -> RunStopped | None:
        """Send what a crash left unsent, poll what is out, collect what is done; a stop while any batch is still
        running (or was only just sent), else ``None`` with the collector on the gateway for the pass."""
        if self.retry_failed and self.book.failed:  # --retry-failed: failed batch requests get a new chance
            self.book.failed.clear()
            self.book.save()
        try:
            sent = [await self._send(entry, recovering=True) for entry in self.book.unsent()]
            waiting = await self.poll()
        except BatchAPIError as exc:
            return RunStopped(f"{exc}; batches.json keeps the batch: re-run the same command to try again")
        if sent:
            return BatchPending(_submitted_line(sent))
        if waiting:
            return BatchPending(_waiting_line(waiting))
        self.collector = BatchCollector(
            self.folder / BATCH_DIR, self.book.new_name, self.book.failed, every_model=self.every_model
        )
        self.gateway.defer_to(self.collector)
        return None

    async def after_pass(self, stop: JoyForgeError | None) -> JoyForgeError | None:
        """Submit the pass's deferred calls; the stop that ends the run (``None``: nothing was deferred)."""
        collector = self.collector
        if collector is None:
            return stop
        await self._quiet(collector)
        self.gateway.defer_to(None)
        if stop is not None:  # a pass that stopped early is redone whole by the next run
            collector.discard()
            return stop
        chunks = collector.close()
        if not chunks:
            return None
        over = await self._over_budget(chunks)
        if over is not None:  # nothing is sent: a larger budget, and the same command, send it
            collector.discard()
            return over
        entries = []
        for chunk in chunks:
            entry = {
                "name": chunk.name,
                "model": chunk.model,
                "url": chunk.url,
                "file": f"{BATCH_DIR}/{chunk.path.name}",
                "requests": chunk.requests,
                "sha256": _sha256(chunk.path),
                "state": "intent",
                "created": time.time(),
            }
            entries.append(entry)
            self.book.batches.append(entry)
        self.book.save()
        crash_point("batch-intent")
        try:
            for entry in entries:
                await self._send(entry, recovering=False)
        except BatchAPIError as exc:
            return RunStopped(f"{exc}; batches.json keeps the batch: re-run the same command to send it")
        return BatchPending(_submitted_line(entries))

    async def _over_budget(self, chunks: list[Chunk]) -> BudgetExceeded | None:
        """``run.budget`` before a batch is sent: its requests at the most they can take (their prompts, their
        replies up to ``max_tokens``), priced at the batch price, must fit what earlier runs and batches left.
        The batch is paid for when its results are collected (counted in the usage, hence spend.json)."""
        budget = self.gateway.budget
        if budget is None or not hasattr(budget, "crossed"):  # the local executor's ledger; batches run locally
            return None
        holds = []
        try:
            for chunk in chunks:  # held one after the other: several models' batches must fit together
                over = budget.crossed(chunk.model, chunk.tokens, chunk.cost, with_held=True)
                if over is not None:
                    what = f"a batch of {chunk.requests} requests to '{chunk.model}' may "
                    cost = f"cost up to {money(chunk.cost)}"
                    what += cost if over.measure == "cost" else f"take up to {chunk.tokens:,} tokens"
                    reason = over.reason.split("; the next call")[0] + f"; {what} at the batch price, not sent"
                    return BudgetExceeded(
                        reason, measure=over.measure, limit=over.limit, spent=over.spent, model=over.model
                    )
                holds.append(await budget.reserve(chunk.model, chunk.tokens, chunk.cost))
        finally:
            for hold in holds:
                budget.release(hold)
        return None

    async def _quiet(self, collector: BatchCollector) -> None:
        """Let the calls still on their way to the collector arrive: a step that gathers several calls stops at
        the first deferred one, and its siblings reach the collector a few turns of the event loop later (after
        their cache lookups). Missing one costs a later batch, never a wrong result."""
        cache = self.gateway.cache
        while True:
            before = len(collector.keys)
            if cache is not None:
                await cache.flush()  # the cache thread answers lookups in order: every pending one is done
            for _ in range(QUIET_ROUNDS):
                await asyncio.sleep(0)
            if len(collector.keys) == before:
                return

    # ----------------------------------------------------------------------------------- provider exchanges

    async def _send(self, entry: dict[str, Any], *, recovering: bool) -> dict[str, Any]:
        """Upload and create one batch, recording each step; ``recovering``: a run before this one may have
        done some of it, so look for its batch at the provider first."""
        api = self.api(entry["model"])
        metadata = {"joyforge_run": self.book.run_key, "joyforge_batch": entry["name"]}
        if recovering:
            found = await api.find(metadata, float(entry.get("created") or 0))
            if found is not None:
                self._submitted(entry, found)
                return entry
        if entry["state"] == "intent":
            path = self.folder / entry["file"]
            if not path.exists() or _sha256(path) != entry["sha256"]:
                raise JoyForgeError(
                    f"{path}: missing or changed since batch {entry['name']} was recorded in {BATCHES}; "
                    f"remove that batch's entry from {BATCHES} to make it anew"
                )
            entry["input_file_id"] = await api.upload(path, f"joyforge-{self.book.run_key[:8]}-{path.name}")
            entry["state"] = "uploaded"
            self.book.save()
            crash_point("batch-uploaded")
        batch = await api.create(entry["input_file_id"], entry["url"], metadata)
        crash_point("batch-created")  # created at the provider, not yet recorded here: find() recovers it
        self._submitted(entry, batch)
        return entry

    def _submitted(self, entry: dict[str, Any], batch: dict[str, Any]) -> None:
        entry.update(state="submitted", batch_id=str(batch["id"]), status=batch.get("status"))
        if batch.get("input_file_id"):
            entry["input_file_id"] = batch["input_file_id"]
        self.book.save()

    async def poll(self, *, collect: bool = True) -> list[dict[str, Any]]:
        """Ask the provider about every batch that is out; collect the finished ones (unless not ``collect``).
        Returns those still running."""
        waiting = []
        changed = False
        for entry in self.book.out():
            batch = await self.api(entry["model"]).retrieve(entry["batch_id"])
            status = str(batch.get("status"))
            counts = batch.get("request_counts") or {}
            if entry.get("status") != status or entry.get("counts") != counts:
                entry.update(status=status, counts=counts)
                changed = True
            if status in FINAL and collect:
                await self._collect(entry, batch)
            elif status not in FINAL:
                waiting.append(entry)
        if changed:
            self.book.save()
        return waiting

    async def _collect(self, entry: dict[str, Any], batch: dict[str, Any]) -> None:
        """Every result of a finished batch into the call cache (committed), then the batch marked collected."""
        api = self.api(entry["model"])
        contents = [await api.content(batch[k]) for k in ("output_file_id", "error_file_id") if batch.get(k)]
        results = read_results(*contents)
        client = self.gateway.model(entry["model"])
        cache = self.gateway.cache
        assert cache is not None
        price = batch_price(price_of(client.config))
        answered = failed = 0
        paid = Spend()
        status = str(batch.get("status"))
        ended = f"no result: the batch ended {status}" + _batch_errors(batch)
        with (self.folder / entry["file"]).open("rb") as requests:
            for raw in requests:
                line = json.loads(raw)
                key = line["custom_id"]
                result = results.get(key)
                error = ended if result is None else result.error
                if result is not None and result.body is not None:
                    try:
                        value, prompt, completion, reasoning = cache_entry(
                            client.backend, line["url"], line["body"], result.body
                        )
                    except ModelError as exc:
                        error = f"unusable reply: {exc}"
                    else:
                        cache.put(key, value)
                        cost = client.usage.record(prompt, completion, 0.0, price, reasoning_tokens=reasoning)
                        paid = paid.plus(Spend(1, prompt, completion, cost))
                        self.book.failed.pop(key, None)
                        answered += 1
                        continue
                tries = int((self.book.failed.get(key) or {}).get("tries", 0)) + 1
                self.book.failed[key] = {"error": error, "tries": tries, "model": entry["model"]}
                failed += 1
        if self.gateway.budget is not None:  # spent now: run.budget counts it (a hold of nothing, settled)
            self.gateway.budget.settle(Hold(0, entry["model"], 0, 0.0), paid)
        await cache.flush()
        crash_point("batch-results-cached")  # in the cache, not yet marked collected: collected again, no loss
        entry.update(state="collected", status=status, answered=answered, failed=failed, collected=time.time())
        self.book.save()

    # -------------------------------------------------------------------------------------------- commands

    async def cancel(self) -> list[dict[str, Any]]:
        """Ask the provider to cancel every batch that is out; what they answered before the cancel is
        collected by the next run (or ``joyforge batches status``), the rest counts as failed."""
        cancelled = []
        for entry in self.book.out():
            if entry.get("status") in FINAL:
                continue
            batch = await self.api(entry["model"]).cancel(entry["batch_id"])
            entry["status"] = str(batch.get("status"))
            cancelled.append(entry)
        if cancelled:
            self.book.save()
        return cancelled


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _batch_errors(batch: dict[str, Any]) -> str:
    """The provider's words on a batch that failed as a whole (a line it could not read, a quota), if any."""
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    if not data:
        return ""
    first = data[0] if isinstance(data[0], dict) else {}
    said = " ".join(str(first.get(k)) for k in ("code", "message") if first.get(k))
    more = f" and {len(data) - 1} more" if len(data) > 1 else ""
    return f" ({said}{more})" if said else ""


def _ids(entries: list[dict[str, Any]]) -> str:
    names = [str(e.get("batch_id") or e["name"]) for e in entries]
    return ("batch " if len(names) == 1 else "batches ") + ", ".join(names)


def _submitted_line(entries: list[dict[str, Any]]) -> str:
    requests = sum(int(e["requests"]) for e in entries)
    return (
        f"{_ids(entries)} submitted ({requests} requests); re-run the same command "
        "(or `joyforge batches status`) to collect"
    )


def _waiting_line(entries: list[dict[str, Any]]) -> str:
    done = sum(int((e.get("counts") or {}).get("completed") or 0) for e in entries)
    total = sum(int(e["requests"]) for e in entries)
    statuses = ", ".join(sorted({str(e.get("status")) for e in entries}))
    return (
        f"{_ids(entries)} {statuses} ({done}/{total} requests done); re-run the same command later "
        "(or `joyforge batches status`) to collect"
    )
