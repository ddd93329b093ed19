"""Adaptive concurrency against a finite server, against fixed concurrencies measured in the same run.

Issue 16: ``max_concurrency`` used to be a number the user guessed. This bench runs the model gateway
(``ModelClient.chat`` through the openai backend, as every step calls it) against the mock server of
``tests/mock_openai`` made finite: latency flat up to its batch ``capacity``, then rising with the requests
in flight (the rest wait in a FIFO queue), and optionally a request quota answering 429 with
``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers.

For each profile (capacity 8, 64 and 512), a sweep of fixed concurrencies (``concurrency: fixed``,
``max_concurrency`` = capacity/4 ... 4 x capacity) finds the best goodput; then adaptive concurrency,
untuned (``max_concurrency`` left to its default ceiling of 1024, starting cold at 2), runs as long
against the same server. Demand is the same for every run: ``--callers`` coroutines calling the model in a
loop (the records in flight of a pipeline run). Every run, fixed or adaptive, lasts ``--warmup`` base
latencies, not measured (adaptive's ramp from 2 takes about six round trips), then ``--rtts`` measured
ones. Goodput is successful requests per second over the measured part (the rate each one *reaches*);
the rate from cold, warm-up included, is printed beside it. ``--rounds`` (3) runs every arm that many
times, interleaved, and compares medians: on a shared machine the load drifts during a run. Printed per run: both, the share of requests
answered 429, and for adaptive the limit it ended at, its range and its mean latency; per profile,
adaptive / best fixed. The base latencies keep the ideal rate (capacity / latency) within what one client
core sustains, so the server's capacity is what is measured, not the client's CPU.

The quota profile adds a request quota far below the capacity: adaptive must reach the quota's goodput
while at most 5% of its requests get a 429 (fixed concurrencies above the quota collect 429s).

``--llama-server`` adds the real peer: llama-cpp-python's ``llama_cpp.server`` on the bundled SmolLM2 GGUF
(as ``tests/test_llama_server.py`` starts it), fixed 1, 2, 4, 8 and adaptive; printed, not part of R.

The last line is ``adaptive/best fixed (worst profile): R``, R the smallest of the three capacity
profiles' ratios of measured goodput (target: R >= 0.95; 429s <= 5% on the quota profile); the line
before it gives the same from cold.

    python bench/adaptive.py [--rtts 60] [--warmup 10] [--rounds 3] [--callers 2048] [--quick]
                             [--llama-server] [--profiles 8,64,512,quota]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
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

    def timing(self, args: argparse.Namespace) -> tuple[float, float]:
        """(warm-up, measured) seconds of one run: ``--warmup`` and ``--rtts`` base latencies, the measured
        part between 10 s (short latencies still give a few thousand requests) and ``--max-seconds``."""
        return args.warmup * self.latency, min(args.max_seconds, max(10.0, args.rtts * self.latency))

    def fixed_sweep(self) -> list[int]:
        if self.quota_rps:  # the quota, not the capacity, decides: around quota x latency
            best = max(1, round(self.quota_rps * self.latency))
            return sorted({max(1, best // 4), max(1, best // 2), best, best * 2, best * 4})
        return sorted(
            {
                max(1, self.capacity // 4),
                max(1, self.capacity // 2),
                self.capacity,
                self.capacity * 2,
                self.capacity * 4,
            }
        )


# Base latencies chosen so that the ideal rate (capacity / latency) stays within what one client core of a
# small machine sustains: the bench measures the server's capacity, not the client's CPU.
PROFILES = {
    "8": Profile("capacity 8", 8, 0.05),
    "64": Profile("capacity 64", 64, 0.2),
    "512": Profile("capacity 512", 512, 2.0),
    "quota": Profile("quota 150 req/s (capacity 512)", 512, 0.1, quota_rps=150.0),
}


@dataclass
class Result:
    label: str
    goodput: float  # successes per second after the warm-up
    cold: float  # successes per second over the whole run, warm-up included
    requests: int
    rate_limited: int
    concurrency: dict[str, Any] | None = None

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0


def registry(url: str, model: str, fixed: int | None, timeout: float = 120.0) -> ModelRegistry:
    body: dict[str, Any] = {"backend": "openai", "model": model, "base_url": url, "timeout": timeout}
    if fixed is not None:
        body.update(concurrency="fixed", max_concurrency=fixed)
    return ModelRegistry.from_dict({"models": {"m": body}}, "bench")


async def drive(
    url: str,
    model: str,
    fixed: int | None,
    warmup: float,
    seconds: float,
    callers: int,
    prompt: str = "Say hello.",
    params: dict[str, Any] | None = None,
) -> tuple[int, int, dict[str, Any]]:
    """``callers`` loops calling the model for ``warmup + seconds``; returns (successes after the warm-up,
    successes in all, the model's concurrency report)."""
    gateway = Gateway(registry(url, model, fixed))
    client = gateway.model("m")
    counted = everything = 0
    start = time.monotonic()
    measure_from, deadline = start + warmup, start + warmup + seconds
    messages = [{"role": "user", "content": prompt}]

    async def caller(i: int) -> None:
        nonlocal counted, everything
        while time.monotonic() < deadline:
            try:
                await client.chat(messages, sample=i, **(params or {}))
            except ModelError:
                continue
            now = time.monotonic()
            if now <= deadline:
                everything += 1
                counted += now >= measure_from

    tasks = [asyncio.ensure_future(caller(i)) for i in range(callers)]
    await asyncio.sleep(warmup + seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    report = client.concurrency()
    await gateway.close()
    return counted, everything, report


def run_one(server: Any, profile: Profile, fixed: int | None, args: argparse.Namespace) -> Result:
    warmup, seconds = profile.timing(args)
    server.reset()
    counted, everything, report = asyncio.run(drive(server.url, "mock-model", fixed, warmup, seconds, args.callers))
    stats = server.stats()
    requests = stats["by_endpoint"].get("/v1/chat/completions", 0)
    limited = stats["by_status"].get("429", 0)
    label = f"fixed {fixed}" if fixed is not None else "adaptive"
    return Result(
        label, counted / seconds, everything / (warmup + seconds), requests, limited, report if fixed is None else None
    )


def show(result: Result, best: Result | None = None) -> None:
    text = (
        f"    {result.label:<12} {result.goodput:8.1f} req/s ({result.cold:8.1f} from cold)   "
        f"429s {result.share_429:6.2%} of {result.requests:,}"
    )
    if result.concurrency:
        c = result.concurrency
        text += f"   limit {c['limit']} (ranged {c['lowest']}-{c['highest']}), latency {c['latency']:.3f}s"
    if best:
        text += f"   ratio to best fixed {result.goodput / best.goodput:.3f} ({result.cold / best.cold:.3f} from cold)"
    print(text, flush=True)


def median_result(results: list[Result]) -> Result:
    """The run of median goodput (its other numbers come with it)."""
    ordered = sorted(results, key=lambda r: r.goodput)
    return ordered[len(ordered) // 2]


def bench_profile(server: Any, profile: Profile, args: argparse.Namespace) -> tuple[float, Result, Result]:
    warmup, seconds = profile.timing(args)
    server.configure(
        latency=profile.latency,
        capacity=profile.capacity,
        quota_rps=profile.quota_rps,
        quota_burst=profile.quota_rps,
    )
    ideal = min(profile.capacity / profile.latency, profile.quota_rps or math.inf)
    print(
        f"  {profile.name}: latency {profile.latency * 1000:g} ms, runs of {warmup:g} s warm-up + {seconds:g} s "
        f"measured, {args.callers} callers, {args.rounds} round(s); ideal {ideal:,.0f} req/s",
        flush=True,
    )
    arms: list[int | None] = [*profile.fixed_sweep(), None]
    runs: dict[int | None, list[Result]] = {arm: [] for arm in arms}
    for _ in range(args.rounds):  # interleaved, so drift in the machine's load hits every arm alike
        for arm in arms:
            result = run_one(server, profile, arm, args)
            runs[arm].append(result)
            if args.rounds > 1:
                show(result)
    if args.rounds > 1:
        print(f"   medians of {args.rounds} rounds:")
    medians = {arm: median_result(results) for arm, results in runs.items()}
    best = max((medians[arm] for arm in arms if arm is not None), key=lambda r: r.goodput)
    for arm in arms:
        show(medians[arm], best if arm is None else None)
    adaptive = medians[None]
    return adaptive.goodput / best.goodput, best, adaptive


# ---- the real peer: llama_cpp.server on the bundled model ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_llama_server(log_path: Path) -> tuple[subprocess.Popen[bytes], str, Any]:
    from joydataforge.models.backends.smollm2 import bundled_gguf_path

    port = _free_port()
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(bundled_gguf_path()),
            "--model_alias",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as response:
                if response.status == 200:
                    return proc, url, log
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"llama_cpp.server did not start: {log_path.read_text()[-2000:]}") from None
            time.sleep(0.5)


def bench_llama(args: argparse.Namespace) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc, url, log = start_llama_server(Path(tmp) / "server.log")
        try:
            params = {"max_tokens": 24, "temperature": 0.0}
            prompt = "Name three colours."
            warmup, seconds = 5.0, args.llama_seconds
            print(
                f"  llama_cpp.server (bundled SmolLM2), runs of {warmup:g} s warm-up + {seconds:g} s measured, "
                "16 callers, max_tokens 24",
                flush=True,
            )
            results: list[Result] = []
            for fixed in (1, 2, 4, 8, None):
                counted, everything, report = asyncio.run(
                    drive(url, "smollm2", fixed, warmup, seconds, 16, prompt, params)
                )
                result = Result(
                    f"fixed {fixed}" if fixed else "adaptive",
                    counted / seconds,
                    everything / (warmup + seconds),
                    everything,
                    0,
                    report if fixed is None else None,
                )
                show(result, max(results, key=lambda r: r.goodput) if fixed is None else None)
                results.append(result)
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtts", type=float, default=60, help="measured part of each run, in base latencies")
    parser.add_argument("--warmup", type=float, default=10, help="warm-up of each run (not measured), in latencies")
    parser.add_argument("--max-seconds", type=float, default=40, help="longest measured part of a run, seconds")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every arm, interleaved; medians compared")
    parser.add_argument("--callers", type=int, default=2048, help="concurrent callers (the demand)")
    parser.add_argument("--profiles", default="8,64,512,quota", help="comma-separated: 8, 64, 512, quota")
    parser.add_argument("--quick", action="store_true", help="30 measured base latencies instead of 60")
    parser.add_argument("--llama-server", action="store_true", help="also run against llama_cpp.server")
    parser.add_argument("--llama-seconds", type=float, default=60.0, help="measured part of a llama_cpp.server run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rtts = min(args.rtts, 30)
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
    cold: dict[str, float] = {}
    quota: tuple[float, Result, Result] | None = None
    with spawn_mock_server(engine="raw", cpu=server_cpu, keep_last=1) as server:
        for key in [k.strip() for k in args.profiles.split(",") if k.strip()]:
            profile = PROFILES[key]
            outcome = bench_profile(server, profile, args)
            if profile.quota_rps:
                quota = outcome
            else:
                ratios[profile.name] = outcome[0]
                cold[profile.name] = outcome[2].cold / outcome[1].cold
    if args.llama_server:
        bench_llama(args)
    print("summary:")
    for name, ratio in ratios.items():
        print(f"  {name}: adaptive/best fixed {ratio:.3f} ({cold[name]:.3f} from cold)")
    if quota is not None:
        ratio, best, adaptive = quota
        verdict = "meets" if adaptive.share_429 <= QUOTA_429_TARGET else "ABOVE"
        print(
            f"  quota: adaptive/best fixed {ratio:.3f} ({best.label}: 429s {best.share_429:.1%}); adaptive 429s "
            f"{adaptive.share_429:.2%} ({verdict} the {QUOTA_429_TARGET:.0%} target)"
        )
    if ratios:
        print(f"  from cold, warm-up included: worst profile {min(cold.values()):.3f}")
        print(f"adaptive/best fixed (worst profile): {min(ratios.values()):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
