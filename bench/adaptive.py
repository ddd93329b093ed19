"""Adaptive concurrency against a finite server, against fixed concurrencies measured in the same run.

Issue 16: ``max_concurrency`` used to be a number the user guessed. This bench runs the model gateway
(``ModelClient.chat`` through the openai backend, as every step calls it) against the mock server of
``tests/mock_openai`` made finite: latency flat up to its batch ``capacity``, then rising with the requests
in flight (the rest wait in a FIFO queue), and optionally a request quota answering 429 with
``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers.

Every arm runs one *job*: a fixed number of requests, from a cold start (a new gateway, a server with
nothing in flight, no warm-up for anyone), as a pipeline run would make them. Its goodput is successful
requests over the job's makespan, ramp-up and tail included. The job is sized per profile to ``--rtts``
round trips (30) at the best fixed concurrency (the capacity, or quota x latency): a realistic run, long
enough that a start is a part of it, not all of it. Demand is ``--callers`` coroutines (2048: more than any
limit) taking the job's requests in turn, as the records in flight of a run do.

For each profile (capacity 8, 64 and 512), a sweep of fixed concurrencies (``concurrency: fixed``,
``max_concurrency`` = capacity/4 ... 4 x capacity) finds the best goodput; adaptive concurrency, untuned
(``max_concurrency`` left to its ceiling of 1024), runs the same job against the same server. A fixed arm
still running at ``--stop-after`` (1.25) times the best makespan of its round is stopped: its goodput so
far is printed (it cannot be the best). ``--rounds`` (3) runs every arm that many times, interleaved, and
compares medians: on a shared machine the load drifts. Printed per run: goodput, makespan, the share of
requests answered 429, the client's CPU use (near 100% the client, not the server, would be the limit), and
for adaptive the limit it ended at, its range and its mean latency; per profile, adaptive / best fixed.
The base latencies keep the ideal rate (capacity / latency) within what one client core sustains, so the
server's capacity is what is measured, not the client's CPU: 512 requests in flight at 2 s is 256 req/s.

The quota profile adds a request quota far below the capacity: adaptive must reach the quota's goodput
while at most 5% of its requests get a 429 (fixed concurrencies above the quota collect 429s). Its job is
20 s at the quota, so the quota's one-second burst is a small part of it. A call that failed after its
retries is made again until it succeeds (a job is done when all its requests are), as ``--retry-failed``
would.

Where adaptive starts depends on the endpoint (``models/adaptive.py``, ``initial_limit``): the mock
listens on 127.0.0.1, a server of one's own, so adaptive starts at 64 there (a hosted API: at 2); each
adaptive run prints where it started.

``--llama-server`` adds the real peer: llama-cpp-python's ``llama_cpp.server`` on the bundled SmolLM2 GGUF
(``tests/support/llama_server.py`` starts it), fixed 1, 2, 4, 8 and adaptive; printed, not part of R.

The last line is ``adaptive/best fixed (worst profile): R``, R the smallest of the three capacity
profiles' ratios of job goodput (target: R >= 0.95; 429s <= 5% on the quota profile).

    python bench/adaptive.py [--rtts 30] [--rounds 3] [--callers 2048] [--quick]
                             [--llama-server] [--profiles 8,64,512,quota]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from joydataforge.errors import ModelError  # noqa: E402
from joydataforge.models.config import ModelRegistry  # noqa: E402
from joydataforge.models.gateway import Gateway  # noqa: E402

TARGET = 0.95
QUOTA_429_TARGET = 0.05


@dataclass(frozen=True)
class Profile:
    name: str
    capacity: int
    latency: float
    quota_rps: float = 0.0
    seconds: float = 0.0  # the job's length at the ideal rate, when round trips are not the measure (a quota)

    @property
    def best_in_flight(self) -> int:
        """The concurrency that serves this server best: its capacity, or what its quota lets through."""
        if self.quota_rps:
            return max(1, round(self.quota_rps * self.latency))
        return self.capacity

    @property
    def ideal_rate(self) -> float:
        return self.quota_rps or self.capacity / self.latency

    def job(self, rtts: float) -> int:
        """Requests of one job: ``rtts`` round trips at the best concurrency (or ``seconds`` at the ideal rate)."""
        if self.seconds:
            return round(self.seconds * self.ideal_rate)
        return max(1, round(rtts * self.best_in_flight))

    def job_text(self, rtts: float) -> str:
        requests = self.job(rtts)
        size = f"{self.seconds:g} s at the quota" if self.seconds else f"{rtts:g} round trips"
        return (
            f"job of {requests:,} requests ({size}, concurrency {self.best_in_flight} at best: "
            f"{requests / self.ideal_rate:.1f} s at the ideal {self.ideal_rate:,.0f} req/s)"
        )

    def fixed_sweep(self) -> list[int]:
        """Fixed concurrencies, likeliest best first (so slower ones can be stopped at the best's pace)."""
        best = self.best_in_flight
        return list(dict.fromkeys([best, best * 2, best * 4, max(1, best // 2), max(1, best // 4)]))


# Base latencies chosen so that the ideal rate (capacity / latency) stays within what one client core of a
# small machine sustains: the bench measures the server's capacity, not the client's CPU.
PROFILES = {
    "8": Profile("capacity 8", 8, 0.05),
    "64": Profile("capacity 64", 64, 0.2),
    "512": Profile("capacity 512", 512, 2.0),
    # 20 s of quota: its 150-request burst is a small part of the job, not most of it
    "quota": Profile("quota 150 req/s (capacity 512)", 512, 0.1, quota_rps=150.0, seconds=20.0),
}


@dataclass
class Result:
    label: str
    goodput: float  # successes per second of makespan
    makespan: float  # seconds from the first request to the last reply (or to the stop)
    successes: int
    requests: int  # what the server saw (retries included)
    rate_limited: int
    cpu: float  # the client's CPU seconds over the makespan
    stopped: bool = False
    concurrency: dict[str, Any] | None = None

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0


def registry(url: str, model: str, fixed: int | None, timeout: float = 120.0) -> ModelRegistry:
    body: dict[str, Any] = {"backend": "openai", "model": model, "base_url": url, "timeout": timeout}
    if fixed is not None:
        body.update(concurrency="fixed", max_concurrency=fixed)
    return ModelRegistry.from_dict({"models": {"m": body}}, "bench")


async def run_job(
    url: str,
    model: str,
    fixed: int | None,
    requests: int,
    callers: int,
    stop_after: float | None,
    prompt: str = "Say hello.",
    params: dict[str, Any] | None = None,
) -> tuple[int, float, bool, dict[str, Any]]:
    """``requests`` calls from a cold gateway, ``callers`` at a time at most, each until it succeeds (a call
    that failed after its retries is made again, as ``--retry-failed`` would: a job is done when every
    request is); returns (successes, makespan, whether it was stopped at ``stop_after`` seconds, the
    model's concurrency report)."""
    gateway = Gateway(registry(url, model, fixed))
    client = gateway.model("m")
    started_at = client.limits.controller.limit  # where the limit starts: it depends on the endpoint
    messages = [{"role": "user", "content": prompt}]
    taken = successes = 0
    last = start = time.monotonic()

    async def caller() -> None:
        nonlocal taken, successes, last
        while taken < requests:
            sample = taken
            taken += 1
            while True:
                try:
                    await client.chat(messages, sample=sample, **(params or {}))
                    break
                except ModelError:
                    continue
            successes += 1
            last = time.monotonic()

    tasks = [asyncio.ensure_future(caller()) for _ in range(min(callers, requests))]
    _, pending = await asyncio.wait(tasks, timeout=stop_after)
    stopped = bool(pending)
    makespan = (time.monotonic() if stopped else last) - start  # before the cancellations, which take a while
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    report = {**client.concurrency(), "start": started_at}
    await gateway.close()
    return successes, makespan, stopped, report


def run_arm(server: Any, profile: Profile, fixed: int | None, args: argparse.Namespace, stop: float | None) -> Result:
    server.reset()
    cpu = time.process_time()
    successes, makespan, stopped, report = asyncio.run(
        run_job(server.url, "mock-model", fixed, profile.job(args.rtts), args.callers, stop)
    )
    cpu = time.process_time() - cpu
    stats = server.stats()
    if stopped:  # requests cut off mid-flight still hold the server's places: let them finish
        time.sleep(profile.latency * 1.5)
    return Result(
        f"fixed {fixed}" if fixed is not None else "adaptive",
        successes / makespan if makespan > 0 else 0.0,
        makespan,
        successes,
        stats["by_endpoint"].get("/v1/chat/completions", 0),
        stats["by_status"].get("429", 0),
        cpu,
        stopped,
        report if fixed is None else None,
    )


def show(result: Result, best: Result | None = None) -> None:
    text = (
        f"    {result.label:<12} {result.goodput:8.1f} req/s  {result.makespan:7.2f} s"
        f"{' (stopped)' if result.stopped else '          '}  429s {result.share_429:6.2%} of {result.requests:,}"
        f"  client CPU {result.cpu / result.makespan:4.0%}"
    )
    if result.concurrency:
        c = result.concurrency
        text += (
            f"   limit {c['limit']} (started at {c['start']}, ranged {c['lowest']}-{c['highest']}), "
            f"latency {c['latency']:.3f}s"
        )
    if best:
        text += f"   ratio to best fixed {result.goodput / best.goodput:.3f}"
    print(text, flush=True)


def median_result(results: list[Result]) -> Result:
    """The run of median goodput (its other numbers come with it)."""
    ordered = sorted(results, key=lambda r: r.goodput)
    return ordered[len(ordered) // 2]


def bench_profile(server: Any, profile: Profile, args: argparse.Namespace) -> tuple[float, Result, Result]:
    server.configure(
        latency=profile.latency,
        capacity=profile.capacity,
        quota_rps=profile.quota_rps,
        quota_burst=profile.quota_rps,
    )
    print(
        f"  {profile.name}: latency {profile.latency * 1000:g} ms; {profile.job_text(args.rtts)}; "
        f"{args.callers} callers, {args.rounds} round(s), every arm cold",
        flush=True,
    )
    arms: list[int | None] = [*profile.fixed_sweep(), None]
    runs: dict[int | None, list[Result]] = {arm: [] for arm in arms}
    for _ in range(args.rounds):  # interleaved, so drift in the machine's load hits every arm alike
        fastest: float | None = None
        for arm in arms:
            stop = args.stop_after * fastest if arm is not None and fastest is not None else None
            result = run_arm(server, profile, arm, args, stop)
            runs[arm].append(result)
            if arm is not None and not result.stopped:
                fastest = min(fastest or result.makespan, result.makespan)
            if args.rounds > 1 or arm is not None:
                show(result)
    medians = {arm: median_result(results) for arm, results in runs.items()}
    best = max((medians[arm] for arm in arms if arm is not None), key=lambda r: r.goodput)
    if args.rounds > 1:
        print(f"   medians of {args.rounds} rounds:")
        for arm in arms[:-1]:
            show(medians[arm])
    adaptive = medians[None]
    show(adaptive, best)
    return adaptive.goodput / best.goodput, best, adaptive


# ---- the real peer: llama_cpp.server on the bundled model ---------------------------------------------------


def bench_llama(args: argparse.Namespace) -> None:
    from tests.support.llama_server import MODEL_ALIAS, llama_server

    params = {"max_tokens": 24, "temperature": 0.0}
    with tempfile.TemporaryDirectory() as tmp, llama_server(Path(tmp) / "server.log") as url:
        print(
            f"  llama_cpp.server (bundled SmolLM2): job of {args.llama_requests} requests, max_tokens 24, "
            "64 callers, every arm cold",
            flush=True,
        )
        results: list[Result] = []
        for fixed in (1, 2, 4, 8, None):
            cpu = time.process_time()
            successes, makespan, _, report = asyncio.run(
                run_job(url, MODEL_ALIAS, fixed, args.llama_requests, 64, None, "Name three colours.", params)
            )
            label = f"fixed {fixed}" if fixed else "adaptive"
            result = Result(
                label,
                successes / makespan,
                makespan,
                successes,
                successes,
                0,
                time.process_time() - cpu,
                concurrency=report if fixed is None else None,
            )
            show(result, max(results, key=lambda r: r.goodput) if fixed is None else None)
            results.append(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtts", type=float, default=30, help="job size, in round trips at the best concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every arm, interleaved; medians compared")
    parser.add_argument("--callers", type=int, default=2048, help="concurrent callers (the demand)")
    parser.add_argument("--stop-after", type=float, default=1.25, help="stop a fixed arm at this x the best makespan")
    parser.add_argument("--profiles", default="8,64,512,quota", help="comma-separated: 8, 64, 512, quota")
    parser.add_argument("--quick", action="store_true", help="one round (no medians)")
    parser.add_argument("--llama-server", action="store_true", help="also run against llama_cpp.server")
    parser.add_argument("--llama-requests", type=int, default=200, help="job size against llama_cpp.server")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
    keys = [k.strip() for k in args.profiles.split(",") if k.strip()]
    unknown = [k for k in keys if k not in PROFILES]
    if unknown:
        parser.error(f"--profiles: no profile {', '.join(unknown)} (known: {', '.join(PROFILES)}; '' for none)")
    from tests.mock_openai import spawn_mock_server

    cores = sorted(os.sched_getaffinity(0))
    server_cpu = cores[-1] if len(cores) >= 2 else None
    if server_cpu is not None:
        os.sched_setaffinity(0, set(cores[:-1]))
    print(
        f"adaptive concurrency bench: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
        f"mock server (raw engine) on core {server_cpu}, client on the others",
        flush=True,
    )
    ratios: dict[str, float] = {}
    quota: tuple[float, Result, Result] | None = None
    with spawn_mock_server(engine="raw", cpu=server_cpu, keep_last=1) as server:
        for key in keys:
            profile = PROFILES[key]
            outcome = bench_profile(server, profile, args)
            if profile.quota_rps:
                quota = outcome
            else:
                ratios[profile.name] = outcome[0]
    if args.llama_server:
        bench_llama(args)
    print("summary (job goodput, cold starts):")
    for name, ratio in ratios.items():
        print(f"  {name}: adaptive/best fixed {ratio:.3f}")
    if quota is not None:
        ratio, best, adaptive = quota
        verdict = "meets" if adaptive.share_429 <= QUOTA_429_TARGET else "ABOVE"
        print(
            f"  quota: adaptive/best fixed {ratio:.3f} ({best.label}: 429s {best.share_429:.1%}); adaptive 429s "
            f"{adaptive.share_429:.2%} ({verdict} the {QUOTA_429_TARGET:.0%} target)"
        )
    if ratios:
        worst = min(ratios.values())
        print(f"  target {TARGET}: {'met' if worst >= TARGET else 'NOT met'}")
        print(f"adaptive/best fixed (worst profile): {worst:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
