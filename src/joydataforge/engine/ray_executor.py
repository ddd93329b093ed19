"""The Ray executor: the same pipeline, the same steps and the same output files, on a Ray cluster.

Shape of a run::

    driver: reader -> ids, resume check, sequential steps (in input order)
        -> batches of records -> pool of StepWorker actors (one per CPU of the cluster by default)
              each worker: its own Gateway (same registry, call cache on its node), the concurrent steps,
              ceil(concurrency / workers) records in flight; model slots and rate tokens granted by one
              cluster-wide LimitsActor (:mod:`.ray_limits`)
        <- outcomes per batch -> the local executor's committer -> data / failures / ledger

Why an actor pool and not Ray Data blocks. Ray Data's ``map_batches`` over an actor pool is the
natural fit for stateless batch inference, and was the first choice. Three things made a small actor
pool the better one here: (1) resume and exactly-once output rest on the ledger, written by one
process after a record's outputs (see :mod:`.run_state`); with results streaming back to the driver,
the Ray executor reuses that committer unchanged, while blocks written by workers would need a second,
multi-writer commit protocol; (2) records are dispatched in input order and committed in input order
(``output.order: input``) by the same reorder buffer as locally, so both executors write byte-for-byte
comparable files; (3) on a 2-core machine Ray Data's streaming executor (its own scheduling loop,
operator actors, object-store spilling of blocks) costs more than the model calls of a small run. The
pool is what Ray Data would build underneath (long-lived actors holding a model client, batches
pushed to the least loaded one), without the planner.

Output: results stream back to the driver, which writes the same ``data.jsonl``, ``failures.jsonl``,
``ledger.jsonl`` and ``summary.json`` as the local executor (consistent resume, one format to read).
For a synthesis run the driver's work per record is a JSON line; a model call takes 100-1000 times
longer, so one writer is not the bottleneck until tens of thousands of records per second.

Fault tolerance: workers are actors with ``max_restarts=-1`` and ``max_task_retries=-1``: a worker
killed mid-batch is restarted by Ray, and its unfinished batch is run again there. The driver only
commits a batch's outcomes when they arrive, once, so every record is written exactly once; the model
calls the dead worker had completed are usually answered from the call cache on the re-run. A batch
that still cannot complete is recorded as failed (kept in ``failures.jsonl``, redone by
``--retry-failed``), never dropped.

Caveat, as on any cluster: steps that keep state across records (a near-duplicate filter inside a
concurrent step) see only their worker's records. Order-sensitive filters are ``sequential`` steps, and
those run on the driver, exactly as locally.
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from ..config.pipeline import Pipeline
from ..errors import ConfigError, JoyForgeError, Location
from ..models.cache import CallCache
from ..models.config import ModelRegistry
from ..models.usage import ModelUsage
from .local import LocalExecutor, Outcome, _Committer, _failure, split_steps
from .ray_limits import ClusterGateway, start_limits_actor
from .registry import shippable_configs
from .run_state import RunState
from .step import Record, StepContext
from .summary import RunSummary

BATCHES_PER_WORKER = 2  # one batch running, one queued: a worker never waits for the driver
MAX_BATCH = 64


def _require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the Ray executor needs Ray: pip install 'joydataforge[ray]' (or run with --executor local)"
        ) from None
    return ray


class StepWorker:
    """One Ray actor: runs the concurrent steps on batches of records with its own gateway.

    It is built from the pipeline's step configs (plain data, pickled by Ray) and builds its own steps
    from them, and through a :class:`LocalExecutor` it uses the very same code to run a record through
    the steps and to turn errors into failure records.
    """

    def __init__(self, pipeline_blob: bytes, limits_name: str, name: str, in_flight: int):
        import ray

        pipeline, registry = ray.cloudpickle.loads(pipeline_blob)
        self.holder = holder = f"{name}#{uuid.uuid4().hex[:12]}"  # a new incarnation after each restart
        self.limits = ray.get_actor(limits_name)
        self.local = LocalExecutor(pipeline, registry=registry, progress=False)
        cache_path = pipeline.resolve(pipeline.run.cache) if pipeline.run.cache else None
        # One SQLite file per node: workers on one machine share it (WAL mode, SQLite's own locking);
        # a worker on another machine has its own file at the same (relative) path.
        self.cache = CallCache(cache_path) if cache_path is not None else None
        self.gateway = ClusterGateway(registry, self.limits, self.cache, holder=holder)
        self.ctx: StepContext = self.local._context(self.gateway)
        self.steps = split_steps(self.local.steps)[1]
        for step in self.steps:
            step.counters = Counter()
        self.in_flight = asyncio.Semaphore(max(1, in_flight))
        self._reported_usage: dict[str, dict[str, float]] = {}
        self._reported_counters: dict[str, Counter[str]] = {}
        self._released = False

    async def process(self, items: list[tuple[int, str, Record, Location]]) -> tuple[list[Outcome], dict, dict]:
        """Outcomes of a batch, plus the model usage and step counters accrued since the last report."""
        if not self._released:
            # Slots an earlier incarnation of this worker held when it was killed go back first.
            await self.limits.retire_others.remote(self.holder)
            self._released = True

        async def one(seq: int, source_id: str, record: Record, location: Location) -> Outcome:
            async with self.in_flight:
                return await self.local._through(self.steps, seq, source_id, record, location, self.ctx)

        outcomes = list(await asyncio.gather(*(one(*item) for item in items)))
        if self.cache is not None:
            await self.cache.flush()  # a worker killed later keeps what this batch paid for
        return outcomes, self._usage_delta(), self._counter_delta()

    def _usage_delta(self) -> dict[str, dict[str, float]]:
        delta: dict[str, dict[str, float]] = {}
        for name, usage in self.gateway.usage.items():
            now = {f.name: getattr(usage, f.name) for f in dataclass_fields(ModelUsage)}
            before = self._reported_usage.get(name, {})
            delta[name] = {k: v - before.get(k, 0) for k, v in now.items()}
            if usage.structured_output is not None:  # a mode, not a count: the latest one wins
                delta[name]["structured_output"] = usage.structured_output
            self._reported_usage[name] = now
        return delta

    def _counter_delta(self) -> dict[str, dict[str, int]]:
        delta: dict[str, dict[str, int]] = {}
        for step in self.steps:
            before = self._reported_counters.get(step.name, Counter())
            now = Counter(step.counters)
            delta[step.name] = dict(now - before)
            self._reported_counters[step.name] = now
        return delta

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    async def close(self) -> None:
        await self.gateway.close()
        if self.cache is not None:
            self.cache.close()


def _merge_usage(target: dict[str, ModelUsage], delta: dict[str, dict[str, float]]) -> None:
    for name, values in delta.items():
        usage = target.setdefault(name, ModelUsage())
        for key, value in values.items():
            if key == "structured_output":
                usage.structured_output = value
            else:
                setattr(usage, key, getattr(usage, key) + value)


class _Pool:
    """Batches go to whichever worker has a free place; results are committed as they arrive."""

    def __init__(self, ray: Any, workers: list[Any], committer: _Committer, on_stats: Callable[[dict, dict], None]):
        self.ray = ray
        self.free: asyncio.Queue[Any] = asyncio.Queue()
        for _ in range(BATCHES_PER_WORKER):
            for worker in workers:
                self.free.put_nowait(worker)
        self.committer = committer
        self.on_stats = on_stats
        self.tasks: set[asyncio.Task[None]] = set()

    async def submit(self, batch: list[tuple[int, str, Record, Location]]) -> None:
        worker = await self.free.get()
        task = asyncio.create_task(self._collect(worker, batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _collect(self, worker: Any, batch: list[tuple[int, str, Record, Location]]) -> None:
        try:
            outcomes, usage, counters = await worker.process.remote(batch)
            self.on_stats(usage, counters)
        except self.ray.exceptions.RayError as exc:
            # Ray restarts a killed worker and re-runs its batch by itself; this is what is left when
            # even that failed. The records are kept as failures (``--retry-failed`` redoes them).
            outcomes = [
                _failure(seq, source_id, record, location, "executor", exc)
                for seq, source_id, record, location in batch
            ]
        finally:
            self.free.put_nowait(worker)
        for outcome in outcomes:
            self.committer.put(outcome)

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks))

    async def cancel(self) -> None:
        """Ctrl-C or a failed write: stop waiting for the batches out (Ray finishes or drops them)."""
        while self.tasks:
            batch = list(self.tasks)
            for task in batch:
                task.cancel()
            await asyncio.gather(*batch, return_exceptions=True)


class RayExecutor(LocalExecutor):
    """Runs a pipeline on a Ray cluster (``address``: ``auto``, ``ray://host:10001``, or ``None`` for a
    local one started for this run). Same arguments, files and summary as :class:`LocalExecutor`."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        registry: ModelRegistry | None = None,
        overwrite: bool = False,
        progress: bool | None = None,
        on_summary: Callable[[RunSummary], None] | None = None,
        address: str | None = None,
        workers: int | None = None,
        worker_cpus: float = 1.0,
    ):
        super().__init__(pipeline, registry=registry, overwrite=overwrite, progress=progress, on_summary=on_summary)
        self.address = address
        self.num_workers = workers
        self.worker_cpus = worker_cpus
        self.workers: list[Any] = []  # live handles during a run (tests kill one to prove recovery)
        self.limits_actor: Any = None
        self.limits_name = ""
        self._pipeline_blob = b""

    async def run(self) -> RunSummary:
        # The folder's lock first: a second run on it must fail at once, not after starting a cluster.
        with self.folder_locked():
            return await self._run_on_cluster()

    async def _run_on_cluster(self) -> RunSummary:
        ray = _require_ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self.limits_name = f"joyforge-limits-{uuid.uuid4().hex[:12]}"
        self.limits_actor = start_limits_actor(self.registry, self.limits_name)
        pipeline = self.pipeline
        cache_path = pipeline.resolve(pipeline.run.cache) if pipeline.run.cache else None
        cache = CallCache(cache_path) if cache_path is not None else None
        self._gateway = ClusterGateway(self.registry, self.limits_actor, cache, holder="driver")
        try:
            # Configs travel, never live steps: each worker builds its own from the same plain data.
            # Bytes, passed inline: a restarted worker must find its arguments even after the driver moved on.
            shipped = pipeline.model_copy(update={"steps": shippable_configs(pipeline.steps)})
            self._pipeline_blob = ray.cloudpickle.dumps((shipped, self.registry))
            return await super().run()
        finally:
            self._gateway = None
            if cache is not None:
                cache.close()
            await self._stop_workers(ray)
            ray.kill(self.limits_actor)
            if started_here:
                ray.shutdown()

    def _start_workers(self, ray: Any, concurrency: int) -> list[Any]:
        count = self.num_workers
        if count is None:
            cpus = int(ray.cluster_resources().get("CPU", 1) // max(self.worker_cpus, 1e-3))
            count = max(1, min(cpus, concurrency))
        per_worker = math.ceil(concurrency / count)
        # SPREAD: one worker per node first, so that a cluster's model traffic leaves from all its machines.
        remote = ray.remote(StepWorker).options(
            num_cpus=self.worker_cpus,
            max_restarts=-1,
            max_task_retries=-1,
            max_concurrency=max(8, 4 * BATCHES_PER_WORKER),
            scheduling_strategy="SPREAD",
        )
        self.workers = [
            remote.remote(self._pipeline_blob, self.limits_name, f"worker-{i}", per_worker) for i in range(count)
        ]
        return self.workers

    async def _stop_workers(self, ray: Any) -> None:
        workers, self.workers = self.workers, []
        for worker in workers:
            try:
                await worker.close.remote()
            except ray.exceptions.RayError:
                pass
            ray.kill(worker, no_restart=True)

    async def _execute(self, ctx: StepContext, state: RunState) -> JoyForgeError | None:
        ray = _require_ray()
        sequential, _ = split_steps(self.steps)
        concurrency = self.pipeline.run.concurrency
        workers = self._start_workers(ray, concurrency)
        # A worker that cannot start (a step that does not unpickle, a missing package on a node) stops
        # the run here, before any record, rather than failing every record.
        await asyncio.gather(*(worker.pid.remote() for worker in workers))
        batch_size = max(1, min(MAX_BATCH, math.ceil(concurrency / len(workers))))
        window = asyncio.Semaphore(concurrency * 4 + batch_size * (BATCHES_PER_WORKER + 1) * len(workers))
        committer = self._new_committer(ctx, state, window, await self._count_input())
        by_name = {step.name: step for step in self.steps}

        def on_stats(usage: dict, counters: dict) -> None:
            _merge_usage(ctx.gateway.usage, usage)
            for name, delta in counters.items():
                by_name[name].counters.update(delta)

        pool = _Pool(ray, workers, committer, on_stats)
        pending: list[tuple[int, str, Record, Location]] = []

        async def feed(seq_no: int, source_id: str, record: Record, location: Location) -> None:
            nonlocal pending
            pending.append((seq_no, source_id, record, location))
            if len(pending) >= batch_size:
                batch, pending = pending, []
                await pool.submit(batch)

        async def settle(cancel: bool) -> None:
            nonlocal pending
            if cancel:  # batches cancelled here never report: their records are simply not done
                pending = []
                await pool.cancel()
                return
            if pending:  # also after a stop: these records were taken in, they finish like the rest
                batch, pending = pending, []
                await pool.submit(batch)
            await pool.drain()

        return await self._drive(ctx, state, committer, sequential, feed, settle)


def run_on_ray(
    pipeline: Pipeline | str | Path,
    *,
    address: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> RunSummary:
    """Library entry point: ``run_on_ray("pipeline.yaml", address="auto")``."""
    if not isinstance(pipeline, Pipeline):
        pipeline = Pipeline.from_yaml(pipeline)
    return RayExecutor(pipeline, address=address, overwrite=overwrite, progress=progress).run_sync()
