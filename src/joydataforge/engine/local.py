"""The local executor: asyncio, bounded concurrency, streaming, ordered output, resume.

Shape of a run::

    reader thread --batches--> feeder --(sequential steps, in order)--> N concurrent record tasks
        --> reorder buffer --> committer --(one thread hop per batch)--> data / failures / ledger

Memory stays flat: the feeder may run at most ``window`` records ahead of the committer, whatever the
input size. Every input record ends in exactly one ledger line (ok, filtered or failed), written after
its outputs, which is what makes ``kill -9`` safe (see :mod:`.run_state`).

A run can also end early, cleanly: a model declared down (:class:`~joydataforge.errors.EndpointDown`),
a call that would cross ``run.budget`` (:class:`~joydataforge.errors.BudgetExceeded`), ``run.max_failures``
exceeded, a bad record under ``on_bad_record: stop``, Ctrl-C, or the disk refusing a write. Then feeding
stops, the records in flight finish (Ctrl-C and write errors cancel them instead), a record that could not
finish gets no ledger line (it is redone on resume), the summary is written, and
:class:`~joydataforge.errors.RunStopped` (or :class:`BadInputStop`) is raised after it. The folder is held
by an OS lock for the whole run (:mod:`.lock`), so a second run on it fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.pipeline import Pipeline
from ..errors import (
    BudgetExceeded,
    ConfigError,
    EndpointDown,
    InputError,
    JoyForgeError,
    Location,
    ModelError,
    RunStopped,
    StepError,
)
from ..io.readers import SourceItem, count_records, iter_records
from ..io.writers import JsonlAppender, jsonl_to_parquet
from ..models.batch import CallDeferred
from ..models.budget import BudgetLedger, BudgetLimits, Spend, budget_problems, combined
from ..models.cache import CallCache
from ..models.config import ModelRegistry
from ..models.gateway import Gateway
from ..prompts.renderer import OPTIONAL_FIELDS, PromptLibrary
from ..records import IdAssigner, canonical_json, field_problem
from .batches import BatchRun
from .lock import FolderLock
from .progress import RunProgress
from .registry import built_steps
from .run_state import (
    SUMMARY,
    RunState,
    atomic_write_json,
    crash_point,
    os_error_line,
    restore_order,
    write_spend,
)
from .step import Record, Step, StepContext, as_list, with_source_id
from .summary import RunSummary

READ_BATCH = 512
MIN_FINISHED_FOR_RATE = 20  # --max-failures P% waits for this many finished records: one early failure is no rate


class BadInputStop(InputError):
    """``on_bad_record: stop`` met a bad record: the run stopped there (exit status 2, the input needs fixing)."""

    def __init__(self, message: str):
        super().__init__(message)

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class StopRequest:
    """Why a record asks the run to stop; plain data, so it travels back from Ray workers."""

    kind: str  # "stopped" or "budget" (resumable, exit 5), or "bad_input" (on_bad_record: stop, exit 2)
    reason: str
    detail: dict[str, Any] | None = None  # "budget": which limit (BudgetExceeded.detail())

    def error(self) -> JoyForgeError:
        if self.kind == "bad_input":
            return BadInputStop(self.reason)
        if self.kind == "budget":
            return BudgetExceeded(self.reason, **(self.detail or {}))
        return RunStopped(self.reason)


@dataclass
class Outcome:
    """What became of one input record, ready to be committed.

    ``unfinished``: the record could not finish (its model is down, a stop, Ctrl-C); it is written
    nowhere, gets no ledger line, and is redone when the run is resumed. ``stop`` asks the run to stop.
    """

    seq: int
    source_id: str
    status: str  # "ok", "filtered", "failed", "bad_input" or "unfinished"
    outputs: list[Record] = field(default_factory=list)
    failure: dict[str, Any] | None = None
    stop: StopRequest | None = None


@dataclass
class _IntakeLog:
    """What reading found out: sequence numbers used, and whether output order needs restoring at the end."""

    seq: int = 0
    positions: dict[str, int] = field(default_factory=dict)
    order_broken: bool = False


class FailureBudget:
    """``run.max_failures``: ``N`` stops the run once more than N records failed in it; ``P%`` once more than
    P percent of the records it finished failed, counted from MIN_FINISHED_FOR_RATE finished records on (or
    all of them, when the window is smaller). Only records whose steps failed count, not bad input lines."""

    def __init__(self, limit: int | str, total: int | None):
        self.limit = limit
        self.total = total

    @classmethod
    def of(cls, limit: int | str | None, total: int | None) -> "FailureBudget | None":
        return None if limit is None else cls(limit, total)

    def exceeded(self, failed: int, finished: int) -> str | None:
        """The one-line reason to stop, or None."""
        if isinstance(self.limit, int):
            if failed > self.limit:
                return f"{failed} records failed, more than --max-failures {self.limit}"
            return None
        percent = float(self.limit.rstrip("%"))
        needed = MIN_FINISHED_FOR_RATE if self.total is None else min(MIN_FINISHED_FOR_RATE, self.total)
        if finished >= max(needed, 1) and failed * 100 > percent * finished:
            return f"{failed} of the {finished} records finished failed, more than --max-failures {self.limit}"
        return None


def pipeline_fingerprint(pipeline: Pipeline, steps: list[Step]) -> str:
    """Changes when what a record would become changes: the steps, their settings, the seed.

    The input window is left out on purpose: widening ``--limit`` or moving ``--start`` over the same
    folder is how a big file is processed in slices, and records are matched by id anyway. So are the run
    settings that do not change a record (concurrency, ``max_failures``...).
    """
    written = [{"kind": s.kind, "name": s.name, "settings": s.settings()} for s in steps]
    body = {"steps": written, "seed": pipeline.run.seed}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


# Records in flight an adaptive model may widen a run to: its default ceiling (models/config.py), so the limit
# it finds is never capped by the records feeding it, while a ceiling set far higher (4096) costs no more memory.
ADAPTIVE_RECORDS_CAP = 1024


def _widen_records_in_flight(pipeline: Pipeline, steps: list[Step], registry: ModelRegistry) -> None:
    """Without ``run.concurrency`` in the file or on the command line, let as many records run as the widest
    model can take, not the 32 that suit a single pinned server: an in-process vLLM model batches whatever
    requests are in flight (its ``max_concurrency``, 256 by default), and an adaptive model's limit can only
    reach what the records in flight send it (its ``max_concurrency``, at most :data:`ADAPTIVE_RECORDS_CAP`).
    """
    if "concurrency" in pipeline.run.model_fields_set:
        return
    widths = []
    for name in {name for step in steps for name in step.model_names()}:
        model = registry.get(name)
        if model.capabilities.batches_in_flight:
            widths.append(model.max_concurrency)
        elif model.concurrency == "adaptive":
            widths.append(min(model.max_concurrency, ADAPTIVE_RECORDS_CAP))
    if widths and max(widths) > pipeline.run.concurrency:
        pipeline.run.concurrency = max(widths)


def split_steps(steps: list[Step]) -> tuple[list[Step], list[Step]]:
    """The sequential prefix (run in input order by the feeder) and the concurrent rest."""
    prefix = 0
    while prefix < len(steps) and steps[prefix].sequential:
        prefix += 1
    if any(step.sequential for step in steps[prefix:]):
        raise JoyForgeError("sequential steps (e.g. minhash_dedup) must come first in the pipeline")
    return steps[:prefix], steps[prefix:]


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


Feed = Callable[[int, str, Record, Location], Awaitable[None]]
Settle = Callable[[bool], Awaitable[None]]


class LocalExecutor:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        registry: ModelRegistry | None = None,
        gateway: Gateway | None = None,
        overwrite: bool = False,
        progress: bool | None = None,
        on_summary: Callable[[RunSummary], None] | None = None,
        batch: bool | None = False,
    ):
        """``batch``: send every model's uncached calls through its provider's batch API (``joyforge run
        --batch``; :mod:`.batches`), not only those of models with ``batch: true``; ``None``: no call through a
        batch, not even theirs (a plan's pilot measures live calls)."""
        self.pipeline = pipeline
        self.steps = built_steps(pipeline.steps)
        self.batch = batch
        self.registry = registry or self._registry()
        self._gateway = gateway
        self.overwrite = overwrite
        self.show_progress = pipeline.run.progress if progress is None else progress
        self.on_summary = on_summary
        self.summary = RunSummary()
        self._lock: FolderLock | None = None
        self._intake_log = _IntakeLog()
        self._provenance = _Provenance(pipeline, self.steps)

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

    @property
    def output_dir(self) -> Path:
        out_dir = self.pipeline.resolve(self.pipeline.output.dir)
        assert out_dir is not None
        return out_dir

    @contextlib.contextmanager
    def folder_locked(self) -> Iterator[Path]:
        """Hold the output folder's lock (:mod:`.lock`) for the block; re-entered, it is a no-op.

        The Ray executor takes it before it starts Ray, so a second run fails before paying for a cluster.
        """
        if self._lock is not None:
            yield self.output_dir
            return
        lock = FolderLock(self.output_dir).acquire()
        self._lock = lock
        try:
            yield self.output_dir
        finally:
            self._lock = None
            lock.release()

    def run_sync(self) -> RunSummary:
        return asyncio.run(self.run())

    async def run(self) -> RunSummary:
        with self.folder_locked() as out_dir:
            return await self._run_locked(out_dir)

    async def _run_locked(self, out_dir: Path) -> RunSummary:
        pipeline = self.pipeline
        started = time.perf_counter()
        cache_path = pipeline.resolve(pipeline.run.cache) if pipeline.run.cache else None
        cache = CallCache(cache_path) if cache_path is not None and self._gateway is None else None
        gateway = self._gateway or Gateway(self.registry, cache)
        batches: BatchRun | None = None
        try:
            ctx = self._context(gateway)
            for step in self.steps:
                step.check(ctx)  # unknown models, missing prompts, bad schemas: before any record is read
            limits = self._budget_limits(gateway)
            _widen_records_in_flight(pipeline, self.steps, gateway.registry)
            state = RunState.open(
                out_dir,
                pipeline_fingerprint(pipeline, self.steps),
                retry_failed=pipeline.run.retry_failed,
                overwrite=self.overwrite,
            )
            if limits is not None:  # counted from what earlier runs of this folder spent
                await gateway.use_budget(BudgetLedger(limits, state.spent_before))
            self.summary = RunSummary(output_dir=str(out_dir), repaired_lines=state.repaired_lines)
            self._intake_log = _IntakeLog()
            if self.batch is not None:
                retry = pipeline.run.retry_failed
                batches = BatchRun.open(out_dir, gateway, every_model=self.batch, retry_failed=retry)
            # A batch still out stops the run before its pass; finished ones are collected into the cache first.
            stop = await batches.before_pass() if batches is not None else None
            if stop is None:
                with _young_generation(50 * 4 * pipeline.run.concurrency):
                    stop = await self._execute(ctx, state)
                if batches is not None:  # the pass's deferred calls go out as batches
                    stop = await batches.after_pass(stop)
        finally:
            if batches is not None:
                await batches.close()
            await gateway.close()
            if cache is not None:
                cache.close()
        self._close_run(state, gateway, stop, started)
        if stop is not None:
            raise stop
        return self.summary

    def _budget_limits(self, gateway: Gateway) -> BudgetLimits | None:
        """``run.budget`` as the ledger's limits, or ``None`` without one; a budget that cannot work (an unknown
        model, a money limit over a model without a price) is a configuration error, said before any call."""
        limits = BudgetLimits.of(self.pipeline.run.budget)
        if not limits.active:
            return None
        used = {name for step in self.steps for name in step.model_names()}
        problems = budget_problems(limits, gateway.registry, used)
        if problems:
            raise ConfigError("\n".join(problems))
        return limits

    def _close_run(self, state: RunState, gateway: Gateway, stop: JoyForgeError | None, started: float) -> None:
        """Tidy the folder, then fill in and write the summary, also for a run that stopped early."""
        summary = self.summary
        write_failed = isinstance(stop, RunStopped) and isinstance(stop.__cause__, OSError)
        if not write_failed:  # the disk that refused a line would refuse a rewrite too; the next open tidies
            state.finish()
            log = self._intake_log
            if log.order_broken and self.pipeline.output.order == "input" and restore_order(state.data, log.positions):
                crash_point("reordered")
            if stop is None and "parquet" in self.pipeline.output.formats:
                jsonl_to_parquet(state.data, state.data.with_suffix(".parquet"))
        summary.seconds = round(time.perf_counter() - started, 3)
        summary.models = {name: usage.as_dict() for name, usage in gateway.usage.items()}
        summary.steps = {step.name: step.stats() for step in self.steps}
        summary.totals = state.totals()
        spend = combined(state.spent_before, gateway.usage)  # kept for the next run's budget
        if spend:
            with contextlib.suppress(OSError):  # a full disk: the last commit's spend stays
                write_spend(state.folder, spend, sync=True)
        if stop is not None:
            summary.stopped = stop.reason if isinstance(stop, RunStopped) else str(stop)
            summary.stop_kind = "bad_input" if isinstance(stop, BadInputStop) else "stopped"
        try:
            atomic_write_json(state.folder / SUMMARY, summary.as_dict())
        except OSError:
            if stop is None:
                raise
        if self.on_summary:
            self.on_summary(summary)

    def _new_committer(
        self, ctx: StepContext, state: RunState, window: asyncio.Semaphore, total: int | None
    ) -> "_Committer":
        progress = RunProgress(total, enabled=self.show_progress, gateway=ctx.gateway)
        budget = FailureBudget.of(self.pipeline.run.max_failures, total)
        committer = _Committer(state, self.pipeline.output.order == "input", self.summary, window, progress, budget)
        usage = ctx.gateway.usage  # on Ray: the driver's, merged from the workers' before their outcomes arrive
        committer.spend_now = lambda: combined(state.spent_before, usage)
        return committer

    async def _count_input(self) -> int | None:
        cfg = self.pipeline.input
        path = self.pipeline.resolve(cfg.path)
        assert path is not None
        return await asyncio.to_thread(count_records, path, start=cfg.start, limit=cfg.limit)

    async def _execute(self, ctx: StepContext, state: RunState) -> JoyForgeError | None:
        sequential, concurrent = split_steps(self.steps)
        concurrency = self.pipeline.run.concurrency
        window = asyncio.Semaphore(concurrency * 4)
        slots = asyncio.Semaphore(concurrency)
        committer = self._new_committer(ctx, state, window, await self._count_input())
        tasks: set[asyncio.Task[None]] = set()

        async def process(seq_no: int, source_id: str, record: Record, location: Location) -> None:
            # The feeder took this record's slot before creating the task: hundreds of tasks queued on
            # one semaphore cost O(n) per release when a burst of replies lands in one loop iteration.
            try:
                try:
                    outcome = await self._through(concurrent, seq_no, source_id, record, location, ctx)
                finally:
                    slots.release()
                committer.put(outcome)
            except asyncio.CancelledError:  # Ctrl-C or a failed write: the record is redone on resume
                committer.put(Outcome(seq_no, source_id, "unfinished"))
                raise
            except BaseException as exc:  # a bug in the executor itself: keep the record, stop cleanly
                committer.put(_failure(seq_no, source_id, record, location, "executor", exc))
                raise

        async def feed(seq_no: int, source_id: str, record: Record, location: Location) -> None:
            await slots.acquire()
            if committer.stop_request is not None:  # asked while this record waited for a slot: not started
                slots.release()
                committer.put(Outcome(seq_no, source_id, "unfinished"))
                return
            task = asyncio.create_task(process(seq_no, source_id, record, location))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async def settle(cancel: bool) -> None:
            await _settle(tasks, cancel)

        return await self._drive(ctx, state, committer, sequential, feed, settle)

    async def _drive(
        self,
        ctx: StepContext,
        state: RunState,
        committer: "_Committer",
        sequential: list[Step],
        feed: Feed,
        settle: Settle,
    ) -> JoyForgeError | None:
        """Read and feed records, wait for those in flight, commit; how every run ends, normally or early.

        Shared by the local and the Ray executor, which differ only in ``feed`` (where records go) and
        ``settle`` (wait for, or with ``True`` cancel, the records in flight). Returns the error that
        stopped the run cleanly (raised by the caller once the summary is written), or None.
        """
        commit_task = asyncio.create_task(committer.loop())
        reading = asyncio.create_task(self._intake(ctx, state, committer, sequential, feed, self._intake_log))
        with committer.progress:
            try:
                await asyncio.wait({reading, commit_task}, return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():  # the committer only ends early when a write failed
                    commit_task.result()
                reading.result()
                await settle(False)
                committer.finish(self._intake_log.seq)
                await asyncio.shield(commit_task)  # a Ctrl-C now must not cancel a write half-way
            except asyncio.CancelledError:  # Ctrl-C (asyncio.run cancels the main task on SIGINT)
                _uncancel()
                await _wind_down(reading, commit_task, committer, settle)
                return RunStopped("interrupted")
            except OSError as exc:  # the disk is full, a file became unwritable: what was committed stays
                await _wind_down(reading, commit_task, committer, settle)
                stopped = RunStopped(os_error_line(exc))
                stopped.__cause__ = exc
                return stopped
            except BaseException:
                await _wind_down(reading, commit_task, committer, settle)
                raise
        request = committer.stop_request
        return request.error() if request is not None else None

    async def _intake(
        self,
        ctx: StepContext,
        state: RunState,
        committer: "_Committer",
        sequential: list[Step],
        feed: Feed,
        log: _IntakeLog,
    ) -> None:
        """Read the window, skip what is done, report bad input, run the sequential steps in input order,
        and hand every record that needs the concurrent steps to ``feed``, until the end or a stop.

        ``log.seq`` is how many sequence numbers were used (the committer's end). On a resume with
        ``order: input`` it also notes each record's input position and whether this run redoes a record
        ahead of one already written, so that the output can be put back in input order at the end.
        """
        cfg = self.pipeline.input
        path = self.pipeline.resolve(cfg.path)
        assert path is not None
        assign_id = IdAssigner(cfg.id_field)
        track_order = state.resumed and self.pipeline.output.order == "input"
        redoing = False
        items = iter_records(path, start=cfg.start, limit=cfg.limit, encoding=cfg.encoding, sheet=cfg.sheet)
        async for batch in _read_batches(items):
            for item in batch:
                if committer.stop_request is not None:
                    return
                self.summary.records_in += 1
                if item.error is not None or item.record is None:
                    await self._intake_bad_line(state, committer, item, log)
                    continue
                source_id = assign_id(item.record)
                if track_order:
                    log.positions[source_id] = len(log.positions)
                if state.is_done(source_id):
                    log.order_broken |= redoing and state.status[source_id] == "ok"
                    await self._skip_done(sequential, source_id, item, ctx, committer.progress)
                    continue
                redoing = True
                await committer.window.acquire()
                record = with_source_id(item.record, source_id)
                outcome_or_record = await self._sequential(sequential, log.seq, source_id, record, item.location, ctx)
                if isinstance(outcome_or_record, Outcome):
                    committer.put(outcome_or_record)
                else:
                    await feed(log.seq, source_id, outcome_or_record, item.location)
                log.seq += 1

    async def _intake_bad_line(
        self, state: RunState, committer: "_Committer", item: SourceItem, log: _IntakeLog
    ) -> None:
        """A line the reader could not turn into a record: reported once (its location is its id), or a stop."""
        if state.is_done(str(item.location)):  # reported by an earlier run already
            self.summary.skipped += 1
            return
        if self.pipeline.input.on_bad_record == "stop":
            committer.request_stop(StopRequest("bad_input", f"{item.error} (on_bad_record: stop)"))
            return
        await committer.window.acquire()
        committer.put(_bad_input(log.seq, item))
        log.seq += 1

    async def _skip_done(
        self, sequential: list[Step], source_id: str, item: SourceItem, ctx: StepContext, progress: RunProgress
    ) -> None:
        self.summary.skipped += 1
        progress.advance_skipped()
        if sequential:
            # Stateful filters must see done records too, or a resumed dedup would forget everything
            # before the crash. Their verdict was committed already.
            assert item.record is not None
            await self._sequential(
                sequential, -1, source_id, with_source_id(item.record, source_id), item.location, ctx
            )

    async def _sequential(
        self, steps: list[Step], seq: int, source_id: str, record: Record, location: Location, ctx: StepContext
    ) -> Outcome | Record:
        """Order-sensitive steps (streaming dedup) run here, one record at a time, in input order."""
        for step in steps:
            bad = field_error(step, record)
            if bad is not None:
                return self._bad_record(seq, source_id, record, location, step.name, bad)
            try:
                results = as_list(await step.run(record, ctx))
            except Exception as exc:
                return self._outcome_of_error(seq, source_id, record, location, step.name, exc)
            if not results:
                return Outcome(seq, source_id, "filtered")
            if len(results) > 1:
                raise JoyForgeError(f"sequential step '{step.name}' returned several records; it must filter or tag")
            record = results[0]
        return record

    async def _through(
        self, steps: list[Step], seq: int, source_id: str, record: Record, location: Location, ctx: StepContext
    ) -> Outcome:
        """Run one input record through the concurrent steps; fan-out multiplies records as it goes.

        Before a step sees a record, the fields it reads are checked (:func:`field_error`): a bad record
        costs no model call and follows ``input.on_bad_record``.
        """
        current = [record]
        for step in steps:
            produced: list[Record] = []
            for rec in current:
                bad = field_error(step, rec)
                if bad is not None:
                    return self._bad_record(seq, source_id, record, location, step.name, bad)
                try:
                    produced.extend(as_list(await step.run(rec, ctx)))
                except Exception as exc:
                    return self._outcome_of_error(seq, source_id, record, location, step.name, exc)
            current = produced
            if not current:
                return Outcome(seq, source_id, "filtered")
        return Outcome(seq, source_id, "ok", _finalise(current, source_id, record, self._provenance, location))

    def _outcome_of_error(
        self, seq: int, source_id: str, record: Record, location: Location, step: str, exc: Exception
    ) -> Outcome:
        """A dead model leaves the record unfinished and stops the run; bad input follows ``on_bad_record``;
        anything else is a failed record. A call deferred to a provider batch leaves the record unfinished, and the
        run goes on with the next record (:mod:`.batches`)."""
        if _deferred(exc):
            return Outcome(seq, source_id, "unfinished")
        down = _endpoint_down(exc)
        if isinstance(down, BudgetExceeded):
            return Outcome(seq, source_id, "unfinished", stop=StopRequest("budget", down.reason, down.detail()))
        if down is not None:
            return Outcome(seq, source_id, "unfinished", stop=StopRequest("stopped", str(down)))
        if isinstance(exc, InputError):
            return self._bad_record(seq, source_id, record, location, step, exc)
        return _failure(seq, source_id, record, location, step, exc)

    def _bad_record(
        self, seq: int, source_id: str, record: Record, location: Location, step: str, error: InputError
    ) -> Outcome:
        if error.location is None:
            error.location = location
        if self.pipeline.input.on_bad_record == "stop":
            stop = StopRequest("bad_input", f"{error} (on_bad_record: stop)")
            return Outcome(seq, source_id, "unfinished", stop=stop)
        outcome = _failure(seq, source_id, record, location, step, error)
        assert outcome.failure is not None
        outcome.failure["field"] = error.field
        outcome.status = "bad_input"
        return outcome


def field_error(step: Step, record: Record) -> InputError | None:
    """The first field ``step`` needs that the record lacks or holds in a shape no prompt should see.

    Without this, ``input: null`` became the prompt text ``"None"`` and ``{}`` became ``"{}"``: billed, and
    written as good records. Which values pass is :func:`~joydataforge.records.field_problem`'s rule. A
    ``history`` the record carries is checked whenever the step reads record fields, since prompts render it
    even when they do not name it.
    """
    needed = step.required_fields()
    if not needed:
        return None
    for name in sorted(needed):
        if name not in record:
            if name in OPTIONAL_FIELDS:
                continue
            return InputError(f"missing (step '{step.name}' needs it)", None, name)
        problem = field_problem(name, record[name])
        if problem is not None:
            return InputError(f"{problem} (step '{step.name}' needs it)", None, name)
    if "history" not in needed and "history" in record:
        problem = field_problem("history", record["history"])
        if problem is not None:
            return InputError(f"{problem} (step '{step.name}')", None, "history")
    return None


def _endpoint_down(exc: BaseException) -> EndpointDown | BudgetExceeded | None:
    """The EndpointDown (or BudgetExceeded: the run cannot go on either) behind ``exc``, also when a step
    wrapped it (``raise StepError(...) from exc``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (EndpointDown, BudgetExceeded)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _deferred(exc: BaseException) -> bool:
    """Whether ``exc`` is (or was raised because of) a call deferred to a provider batch."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, CallDeferred):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


async def _settle(tasks: set[asyncio.Task[None]], cancel: bool) -> None:
    """Wait for the record tasks (cancelled first when ``cancel``); re-raise a bug unless cancelling."""
    while tasks:
        batch = list(tasks)
        if cancel:
            for task in batch:
                task.cancel()
        results = await asyncio.gather(*batch, return_exceptions=True)
        if not cancel:
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                    raise result


async def _wind_down(
    reading: asyncio.Task[None], commit_task: asyncio.Task[None], committer: "_Committer", settle: Settle
) -> None:
    """Stop reading, cancel the records in flight, commit what is ready, and let the committer end."""
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    await settle(True)
    committer.abandon()
    with contextlib.suppress(Exception):  # a failed write was reported by the caller already
        await asyncio.shield(commit_task)


def _uncancel() -> None:
    """Ctrl-C cancelled the run's task once; the wind-down that follows must be able to await (3.11+)."""
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()


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


class _Provenance:
    """What every output record of a run is stamped with in ``_meta`` (docs/pipelines.md, "Provenance"):
    ``pipeline`` (its name), ``task`` (the kind of the step that made the record: the one whose model call
    is the record's last, else the last step) and ``from`` (where the input record was read: file and line,
    the file relative to the input folder). The original's ``from``/``task`` stamps, made by the engine."""

    def __init__(self, pipeline: Pipeline, steps: list[Step]):
        self.pipeline = pipeline.name
        self.kinds = {step.name: step.kind for step in steps}
        self.last_kind = steps[-1].kind if steps else None
        path = pipeline.resolve(pipeline.input.path)
        self.input_dir = (path if path.is_dir() else path.parent).resolve() if path is not None else None
        self._shown: dict[str, str] = {}  # file path -> as shown, resolved once per file

    def task(self, meta: dict[str, Any]) -> str | None:
        for call in reversed(meta.get("calls") or []):
            kind = self.kinds.get(call.get("step")) if isinstance(call, dict) else None
            if kind is not None:
                return kind
        return self.last_kind

    def origin(self, location: Location | None) -> str | None:
        if location is None:
            return None
        shown = self._shown.get(location.path)
        if shown is None:
            path = Path(location.path)
            try:
                shown = path.resolve().relative_to(self.input_dir).as_posix() if self.input_dir else path.name
            except (ValueError, OSError):
                shown = path.name
            self._shown[location.path] = shown
        return f"{shown}:{location.line}" if location.line is not None else shown

    def stamp(self, meta: dict[str, Any], location: Location | None) -> None:
        meta["pipeline"] = self.pipeline
        meta["task"] = self.task(meta)
        origin = self.origin(location)
        if origin is not None:
            meta["from"] = origin


def _finalise(
    outputs: list[Record],
    source_id: str,
    source: Record,
    provenance: _Provenance | None = None,
    location: Location | None = None,
) -> list[Record]:
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
        if provenance is not None:
            provenance.stamp(meta, location)
        rec["_meta"] = meta
        final.append(rec)
    return final


def _failure(seq: int, source_id: str, record: Record, location: Location, step: str, exc: BaseException) -> Outcome:
    if isinstance(exc, InputError) and exc.location is None:
        exc.location = location
    raw = getattr(exc, "raw", None)
    record = _as_given(record)
    failure = {
        "id": source_id,
        "source_id": source_id,
        "step": step,
        "error_type": type(exc).__name__,
        "error": str(exc),
        "raw": raw,
        "location": str(location),
        "record": record,
    }
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
    failure = {
        "id": source_id,
        "source_id": source_id,
        "step": "read",
        "error_type": type(error).__name__,
        "error": str(error),
        "raw": None,
        "location": str(item.location),
        "record": None,
    }
    return Outcome(seq, source_id, "bad_input", failure=failure)


class _Committer:
    """Writes finished records in input order (or as they finish), a batch per thread hop.

    It also keeps the run's stop request: the first record that asks (a model down, a bad record under
    ``on_bad_record: stop``) or the failure budget; the feeder reads it before each record.
    """

    def __init__(
        self,
        state: RunState,
        ordered: bool,
        summary: RunSummary,
        window: asyncio.Semaphore,
        progress: RunProgress,
        budget: FailureBudget | None = None,
    ):
        self.state = state
        self.ordered = ordered
        self.summary = summary
        self.window = window
        self.progress = progress
        self.budget = budget
        self.pending: dict[int, Outcome] = {}
        self.next_seq = 0
        self.end_seq: int | None = None
        self.abandoned = False
        self.stop_request: StopRequest | None = None
        self.wakeup = asyncio.Event()
        self.data = JsonlAppender(state.data)
        self.failures = JsonlAppender(state.failures)
        self.ledger = JsonlAppender(state.ledger)
        self.spend_now: Callable[[], dict[str, Spend]] | None = None  # what the folder's runs spent, now
        self._spend_written: dict[str, Spend] | None = None

    def put(self, outcome: Outcome) -> None:
        if outcome.stop is not None:  # at once, not at commit: the feeder should not start another record
            self.request_stop(outcome.stop)
        self.pending[outcome.seq] = outcome
        self.wakeup.set()

    def finish(self, end_seq: int) -> None:
        self.end_seq = end_seq
        self.wakeup.set()

    def abandon(self) -> None:
        """End after committing what is ready now: records that never got an outcome are simply not done."""
        self.abandoned = True
        self.wakeup.set()

    def request_stop(self, request: StopRequest) -> None:
        if self.stop_request is None:
            self.stop_request = request

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

    def _write(self, batch: list[Outcome], spend: dict[str, Spend] | None = None) -> None:
        """The spend so far, outputs, then failures, then the ledger: a record's ledger line is what commits it
        (run_state); the spend goes first, so a record committed is never one whose calls were forgotten."""
        if spend and spend != self._spend_written:
            write_spend(self.state.folder, spend)
            self._spend_written = spend
        finished = [o for o in batch if o.status != "unfinished"]
        outputs = [rec for outcome in finished for rec in outcome.outputs]
        failures = [outcome.failure for outcome in finished if outcome.failure is not None]
        if outputs:
            _write_lines(self.data, outputs)
            crash_point("data-written")
        if failures:
            _write_lines(self.failures, failures)
            crash_point("failures-written")
        if finished:
            _write_lines(
                self.ledger,
                [{"id": o.source_id, "status": "failed" if o.status == "bad_input" else o.status} for o in finished],
            )
            crash_point("ledger-written")

    async def loop(self) -> None:
        try:
            while True:
                await self.wakeup.wait()
                self.wakeup.clear()
                batch = self._ready()
                if batch:
                    spend = self.spend_now() if self.spend_now is not None else None  # read on the loop's thread
                    writing = asyncio.ensure_future(asyncio.to_thread(self._write, batch, spend))
                    try:
                        await asyncio.shield(writing)
                    except asyncio.CancelledError:
                        await asyncio.wait({writing})  # the files close below: not under a writing thread
                        raise
                    self._count(batch)
                if self.abandoned or (self.end_seq is not None and self.next_seq >= self.end_seq and not self.pending):
                    return
        finally:
            for appender in (self.data, self.failures, self.ledger):
                appender.close()

    def _count(self, batch: list[Outcome]) -> None:
        summary = self.summary
        for outcome in batch:
            self.window.release()
            if outcome.status == "unfinished":
                continue
            self.state.committed(outcome.source_id, "failed" if outcome.status == "bad_input" else outcome.status)
            if outcome.status == "ok":
                summary.inputs_done += 1
                summary.records_out += len(outcome.outputs)
            elif outcome.status == "filtered":
                summary.filtered += 1
            elif outcome.status == "failed":
                summary.failed += 1
            else:
                summary.bad_input += 1
                if outcome.failure is not None:
                    summary.note_bad_record(outcome.failure["error"])
            self._check_budget()
        self.progress.update(summary)

    def _check_budget(self) -> None:
        """After each record, so the reason names the count that crossed the limit, not a batch's total."""
        if self.budget is None or self.stop_request is not None:
            return
        summary = self.summary
        reason = self.budget.exceeded(summary.failed, summary.inputs_done + summary.filtered + summary.failed)
        if reason is not None:
            self.request_stop(StopRequest("stopped", reason))


def _write_lines(appender: JsonlAppender, records: list[dict[str, Any]]) -> None:
    """Append, naming the file when the OS refuses (``os.write`` on a descriptor does not say which)."""
    try:
        appender.write(records)
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(appender.path)) from exc
        raise
