"""The local executor: asyncio, bounded concurrency, streaming, ordered output, resume.

Shape of a run::

    reader thread --batches--> feeder --(sequential steps, in order)--> N concurrent record tasks
        --> reorder buffer --> committer --(one thread hop per batch)--> data / failures / ledger

Memory stays flat: the feeder may run at most ``window`` records ahead of the committer, whatever the
input size. Every input record ends in exactly one ledger line (ok, filtered or failed), written after
its outputs, which is what makes ``kill -9`` safe (see :mod:`.run_state`).
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

from ..errors import InputError, JoyForgeError, Location, ModelError, StepError
from ..io.readers import SourceItem, count_records, iter_records
from ..io.writers import JsonlAppender, jsonl_to_parquet
from ..models.cache import CallCache
from ..models.config import ModelRegistry
from ..models.gateway import Gateway
from ..config.pipeline import Pipeline
from ..prompts.renderer import PromptLibrary
from ..records import IdAssigner, canonical_json
from .registry import built_steps
from .step import Record, Step, StepContext, as_list, with_source_id
from .progress import RunProgress
from .run_state import SUMMARY, RunState, atomic_write_json
from .summary import RunSummary

READ_BATCH = 512


@dataclass
class Outcome:
    """What became of one input record, ready to be committed."""

    seq: int
    source_id: str
    status: str  # "ok", "filtered" or "failed"
    outputs: list[Record] = field(default_factory=list)
    failure: dict[str, Any] | None = None


class BadInputStop(JoyForgeError):
    """Raised when ``on_bad_record: stop`` meets a bad record."""


def pipeline_fingerprint(pipeline: Pipeline, steps: list[Step]) -> str:
    """Changes when what a record would become changes: the steps, their settings, the seed.

    The input window is left out on purpose: widening ``--limit`` or moving ``--start`` over the same
    folder is how a big file is processed in slices, and records are matched by id anyway.
    """
    written = [{"kind": s.kind, "name": s.name, "settings": s.settings()} for s in steps]
    body = {"steps": written, "seed": pipeline.run.seed}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def _widen_for_batching_engines(pipeline: Pipeline, steps: list[Step], registry: ModelRegistry) -> None:
    """An in-process vLLM model batches whatever requests are in flight: without ``run.concurrency`` in the
    file or on the command line, let as many records run as its ``max_concurrency`` (256 by default), not
    the 32 that suit a single server."""
    if "concurrency" in pipeline.run.model_fields_set:
        return
    names = {name for step in steps for name in step.model_names()}
    widths = [registry.get(name).max_concurrency for name in names if registry.get(name).capabilities.batches_in_flight]
    if widths and max(widths) > pipeline.run.concurrency:
        pipeline.run.concurrency = max(widths)


async def _read_batches(items: Iterator[SourceItem]) -> AsyncIterator[list[SourceItem]]:
    """File reading and parsing happen in a worker thread, a batch at a time, off the event loop."""
    def next_batch() -> list[SourceItem]:
        batch = []
        for item in items:
            batch.append(item)
            if len(batch) >= READ_BATCH:
                break
        return batch

    while True:
        batch = await asyncio.to_thread(next_batch)
        if not batch:
            return
        yield batch


class LocalExecutor:
    def __init__(self, pipeline: Pipeline, *, registry: ModelRegistry | None = None, gateway: Gateway | None = None,
                 overwrite: bool = False, progress: bool | None = None,
                 on_summary: Callable[[RunSummary], None] | None = None):
        self.pipeline = pipeline
        self.steps = built_steps(pipeline.steps)
        self.registry = registry or self._registry()
        self._gateway = gateway
        self.overwrite = overwrite
        self.show_progress = pipeline.run.progress if progress is None else progress
        self.on_summary = on_summary
        self.summary = RunSummary()

    def _registry(self) -> ModelRegistry:
        registry = ModelRegistry.load()
        user_models = self.pipeline.resolve(self.pipeline.models)
        if user_models is not None:
            registry = registry.merged(ModelRegistry.load(user_models))
        return registry

    def _context(self, gateway: Gateway) -> StepContext:
        run = self.pipeline.run
        search = [Path(self.pipeline.base_dir)]
        if run.prompts_dir:
            search.insert(0, self.pipeline.resolve(run.prompts_dir))  # type: ignore[arg-type]
        return StepContext(gateway, PromptLibrary(search, language=run.language), seed=run.seed)

    def run_sync(self) -> RunSummary:
        return asyncio.run(self.run())

    async def run(self) -> RunSummary:
        pipeline = self.pipeline
        started = time.perf_counter()
        cache_path = pipeline.resolve(pipeline.run.cache) if pipeline.run.cache else None
        cache = CallCache(cache_path) if cache_path is not None and self._gateway is None else None
        gateway = self._gateway or Gateway(self.registry, cache)
        ctx = self._context(gateway)
        for step in self.steps:
            step.check(ctx)  # unknown models, missing prompts, bad schemas: before any record is read
        _widen_for_batching_engines(pipeline, self.steps, gateway.registry)
        out_dir = pipeline.resolve(pipeline.output.dir)
        assert out_dir is not None
        state = RunState.open(out_dir, pipeline_fingerprint(pipeline, self.steps), retry_failed=pipeline.run.retry_failed,
                              overwrite=self.overwrite)
        self.summary = RunSummary(output_dir=str(out_dir), repaired_lines=state.repaired_lines)
        try:
            with _young_generation(50 * 4 * pipeline.run.concurrency):
                await self._execute(ctx, state)
        finally:
            await gateway.close()
            if cache is not None:
                cache.close()
        self.summary.seconds = round(time.perf_counter() - started, 3)
        self.summary.models = {name: usage.as_dict() for name, usage in gateway.usage.items()}
        self.summary.steps = {step.name: step.stats() for step in self.steps}
        if "parquet" in pipeline.output.formats:
            await asyncio.to_thread(jsonl_to_parquet, state.data, state.data.with_suffix(".parquet"))
        atomic_write_json(out_dir / SUMMARY, self.summary.as_dict())
        if self.on_summary:
            self.on_summary(self.summary)
        return self.summary

    async def _execute(self, ctx: StepContext, state: RunState) -> None:
        pipeline = self.pipeline
        cfg = pipeline.input
        path = pipeline.resolve(cfg.path)
        assert path is not None
        steps = self.steps
        prefix_len = 0
        while prefix_len < len(steps) and steps[prefix_len].sequential:
            prefix_len += 1
        if any(step.sequential for step in steps[prefix_len:]):
            raise JoyForgeError("sequential steps (e.g. minhash_dedup) must come first in the pipeline")
        sequential, concurrent = steps[:prefix_len], steps[prefix_len:]

        concurrency = pipeline.run.concurrency
        window = asyncio.Semaphore(concurrency * 4)
        slots = asyncio.Semaphore(concurrency)
        ordered = pipeline.output.order == "input"
        total = await asyncio.to_thread(count_records, path, start=cfg.start, limit=cfg.limit)
        progress = RunProgress(total, enabled=self.show_progress, gateway=ctx.gateway)
        committer = _Committer(state, ordered, self.summary, window, progress)
        tasks: set[asyncio.Task[None]] = set()
        commit_task = asyncio.create_task(committer.loop())

        async def process(seq_no: int, source_id: str, record: Record, location: Location) -> None:
            # The feeder took this record's slot before creating the task: hundreds of tasks queued on
            # one semaphore cost O(n) per release when a burst of replies lands in one loop iteration.
            try:
                try:
                    outcome = await self._through(concurrent, seq_no, source_id, record, location, ctx)
                finally:
                    slots.release()
                committer.put(outcome)
            except BaseException as exc:  # a bug in the executor itself: keep the record, stop cleanly
                committer.put(_failure(seq_no, source_id, record, location, "executor", exc))
                raise

        async def feed(seq_no: int, source_id: str, record: Record, location: Location) -> None:
            await slots.acquire()
            task = asyncio.create_task(process(seq_no, source_id, record, location))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        with progress:
            seq, stop_error = await self._intake(ctx, state, committer, window, progress, sequential, feed)
            if tasks:
                await asyncio.gather(*tasks)
            committer.finish(seq)
            await commit_task
        if stop_error is not None:
            raise stop_error

    async def _intake(self, ctx: StepContext, state: RunState, committer: "_Committer", window: asyncio.Semaphore,
                      progress: RunProgress, sequential: list[Step],
                      feed: Callable[[int, str, Record, Location], Awaitable[None]]) -> tuple[int, BaseException | None]:
        """Read the window, skip what is done, report bad input, run the sequential steps in input order,
        and hand every record that needs the concurrent steps to ``feed``.

        Shared by the local and the Ray executor, which differ only in where ``feed`` sends records.
        Returns how many sequence numbers were used (the committer's end) and the error that stopped
        reading under ``on_bad_record: stop``, if any.
        """
        cfg = self.pipeline.input
        path = self.pipeline.resolve(cfg.path)
        assert path is not None
        assign_id = IdAssigner(cfg.id_field)
        seq = 0
        items = iter_records(path, start=cfg.start, limit=cfg.limit, encoding=cfg.encoding, sheet=cfg.sheet)
        async for batch in _read_batches(items):
            for item in batch:
                self.summary.records_in += 1
                if item.error is not None or item.record is None:
                    if cfg.on_bad_record == "stop":
                        return seq, BadInputStop(f"{item.error} (on_bad_record: stop)")
                    if str(item.location) in state.done:  # reported by an earlier run already
                        self.summary.skipped += 1
                        continue
                    await window.acquire()
                    committer.put(_bad_input(seq, item))
                    seq += 1
                    continue
                source_id = assign_id(item.record)
                if source_id in state.done:
                    self.summary.skipped += 1
                    progress.advance_skipped()
                    if sequential:
                        # Stateful filters must see done records too, or a resumed dedup would
                        # forget everything before the crash. Their verdict was committed already.
                        await self._sequential(sequential, -1, source_id, with_source_id(item.record, source_id),
                                               item.location, ctx)
                    continue
                await window.acquire()
                record = with_source_id(item.record, source_id)
                outcome_or_record = await self._sequential(sequential, seq, source_id, record, item.location, ctx)
                if isinstance(outcome_or_record, Outcome):
                    committer.put(outcome_or_record)
                else:
                    await feed(seq, source_id, outcome_or_record, item.location)
                seq += 1
        return seq, None

    async def _sequential(self, steps: list[Step], seq: int, source_id: str, record: Record, location: Location,
                          ctx: StepContext) -> Outcome | Record:
        """Order-sensitive steps (streaming dedup) run here, one record at a time, in input order."""
        for step in steps:
            try:
                results = as_list(await step.run(record, ctx))
            except Exception as exc:
                return _failure(seq, source_id, record, location, step.name, exc)
            if not results:
                return Outcome(seq, source_id, "filtered")
            if len(results) > 1:
                raise JoyForgeError(f"sequential step '{step.name}' returned several records; it must filter or tag")
            record = results[0]
        return record

    async def _through(self, steps: list[Step], seq: int, source_id: str, record: Record, location: Location,
                       ctx: StepContext) -> Outcome:
        """Run one input record through the concurrent steps; fan-out multiplies records as it goes."""
        current = [record]
        for step in steps:
            produced: list[Record] = []
            for rec in current:
                try:
                    produced.extend(as_list(await step.run(rec, ctx)))
                except Exception as exc:
                    return _failure(seq, source_id, record, location, step.name, exc)
            current = produced
            if not current:
                return Outcome(seq, source_id, "filtered")
        return Outcome(seq, source_id, "ok", _finalise(current, source_id, record))


@contextlib.contextmanager
def _young_generation(objects: int) -> Iterator[None]:
    """Let the garbage collector's youngest generation hold about the run's working set while it runs.

    A streaming run keeps up to ``4 x concurrency`` records in flight, some 50 container objects each,
    each living for a fraction of a second. With CPython's default threshold (700) nearly all of them
    are alive at some young collection, get promoted, and are scanned again by the costly older
    collections until refcounting frees them: a third of the engine's CPU at C=256. A threshold
    above the working set lets them die young. Nothing changes but when the collector runs; cyclic
    garbage is still collected, after at most ``objects`` allocations. The old setting is restored.
    """
    old = gc.get_threshold()
    if objects <= old[0]:
        yield
        return
    gc.set_threshold(objects, old[1], old[2])
    try:
        yield
    finally:
        if gc.get_threshold()[0] == objects:  # unless someone changed it meanwhile
            gc.set_threshold(*old)


def _finalise(outputs: list[Record], source_id: str, source: Record) -> list[Record]:
    """Give every output an id and its provenance; a single output keeps the input's id."""
    final = []
    for index, rec in enumerate(outputs):
        rec = dict(rec)
        own = rec.get("id")
        if len(outputs) == 1:
            rec["id"] = own if own not in (None, "") and own != source.get("id") else source_id
        elif own in (None, "") or own == source.get("id"):
            rec["id"] = f"{source_id}:{index}"
        meta = dict(rec.get("_meta") or {})
        meta["source_id"] = source_id
        rec["_meta"] = meta
        final.append(rec)
    return final


def _failure(seq: int, source_id: str, record: Record, location: Location, step: str, exc: BaseException) -> Outcome:
    if isinstance(exc, InputError) and exc.location is None:
        exc.location = location
    raw = getattr(exc, "raw", None)
    record = _as_given(record)
    failure = {"id": source_id, "source_id": source_id, "step": step, "error_type": type(exc).__name__,
               "error": str(exc), "raw": raw, "location": str(location), "record": record}
    if not isinstance(exc, (InputError, ModelError, StepError, JoyForgeError)):
        failure["traceback"] = "".join(traceback.format_exception(exc, limit=-3))
    return Outcome(seq, source_id, "failed", failure=failure)


def _as_given(record: Record) -> Record:
    """The record as the user gave it: without the ``source_id`` the executor added on intake."""
    meta = record.get("_meta")
    if not isinstance(meta, dict) or "source_id" not in meta:
        return record
    rest = {k: v for k, v in meta.items() if k != "source_id"}
    given = {k: v for k, v in record.items() if k != "_meta"}
    if rest:
        given["_meta"] = rest
    return given


def _bad_input(seq: int, item: SourceItem) -> Outcome:
    error = item.error
    source_id = f"{item.location}"
    failure = {"id": source_id, "source_id": source_id, "step": "read", "error_type": type(error).__name__,
               "error": str(error), "raw": None, "location": str(item.location), "record": None}
    return Outcome(seq, source_id, "bad_input", failure=failure)


class _Committer:
    """Writes finished records in input order (or as they finish), a batch per thread hop."""

    def __init__(self, state: RunState, ordered: bool, summary: RunSummary, window: asyncio.Semaphore,
                 progress: RunProgress):
        self.state = state
        self.ordered = ordered
        self.summary = summary
        self.window = window
        self.progress = progress
        self.pending: dict[int, Outcome] = {}
        self.next_seq = 0
        self.end_seq: int | None = None
        self.wakeup = asyncio.Event()
        self.data = JsonlAppender(state.data)
        self.failures = JsonlAppender(state.failures)
        self.ledger = JsonlAppender(state.ledger)

    def put(self, outcome: Outcome) -> None:
        self.pending[outcome.seq] = outcome
        self.wakeup.set()

    def finish(self, end_seq: int) -> None:
        self.end_seq = end_seq
        self.wakeup.set()

    def _ready(self) -> list[Outcome]:
        ready = []
        if self.ordered:
            while self.next_seq in self.pending:
                ready.append(self.pending.pop(self.next_seq))
                self.next_seq += 1
        else:
            ready = list(self.pending.values())
            self.pending.clear()
            self.next_seq += len(ready)
        return ready

    def _write(self, batch: list[Outcome]) -> None:
        outputs = [rec for outcome in batch for rec in outcome.outputs]
        failures = [outcome.failure for outcome in batch if outcome.failure is not None]
        if outputs:
            self.data.write(outputs)
        if failures:
            self.failures.write(failures)
        self.ledger.write([{"id": o.source_id, "status": "failed" if o.status == "bad_input" else o.status}
                           for o in batch])

    async def loop(self) -> None:
        try:
            while True:
                await self.wakeup.wait()
                self.wakeup.clear()
                batch = self._ready()
                if batch:
                    await asyncio.to_thread(self._write, batch)
                    self._count(batch)
                if self.end_seq is not None and self.next_seq >= self.end_seq and not self.pending:
                    return
        finally:
            for appender in (self.data, self.failures, self.ledger):
                appender.close()

    def _count(self, batch: list[Outcome]) -> None:
        for outcome in batch:
            self.window.release()
            if outcome.status == "ok":
                self.summary.inputs_done += 1
                self.summary.records_out += len(outcome.outputs)
            elif outcome.status == "filtered":
                self.summary.filtered += 1
            elif outcome.status == "failed":
                self.summary.failed += 1
            else:
                self.summary.bad_input += 1
        self.progress.update(self.summary)
