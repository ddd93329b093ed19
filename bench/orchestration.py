"""How close the engine comes to the ideal request rate C/L against a server of fixed latency, in one run.

A mock OpenAI-compatible server runs in its own process with a fixed latency L per request. With C
requests in flight, a perfect client achieves C/L requests/s; what it loses is its own CPU per request
(JSON, HTTP, scheduling, accounting, writing output). Measured, each in a fresh child process so CPU time
and peak memory are its own:

  bare            aiohttp alone: C workers posting the same chat request N times (the baseline)
  bare+gc         the same with the garbage collector tuned as the engine tunes it during a run (a
                  young-generation threshold above the working set), so the engine is not compared with
                  a baseline that pays a cost the engine avoids
  gateway         (diagnostic, --phases) C workers calling ModelClient.chat: the gateway without the engine
  engine          the real pipeline engine: LocalExecutor, a `generate` step, an `openai` model with
                  max_concurrency C, run.concurrency C, N records from a JSONL file to data.jsonl, no cache
  engine+cache    the same with the SQLite call cache on (a cold cache in a temp dir: every call is a
                  miss and is written)

Printed per phase: requests/s, the ideal C/L, their ratio (target >= 0.9 at C=256, L=100 ms), CPU time
per request (process user+system CPU / requests) and peak RSS; then engine/bare.

    python bench/orchestration.py [--n 20000] [--concurrency 256] [--latency 0.1] [--quick] [--rounds 3]

On a shared machine the achieved rate of every phase, the baseline included, moves with the other load
(the header prints the load average); --rounds interleaves the phases so that drift hits them alike, and
CPU time per request is the steadier number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.9
MESSAGES_SYSTEM = "You are a helpful, accurate and concise assistant. Answer in the language of the user's question."


def question(i: int) -> str:
    return f"Question number {i}: how do I keep a sourdough starter alive over a long holiday?"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- phases (each runs in its own child process) -----------------------------------------------------------


async def bare(url: str, n: int, concurrency: int) -> dict[str, Any]:
    """The baseline: the same requests at the same concurrency, aiohttp and json only."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    done = 0
    texts = 0
    next_index = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, texts, next_index
        while next_index < n:
            i = next_index
            next_index += 1
            body = {
                "model": "mock-model",
                "messages": [{"role": "system", "content": MESSAGES_SYSTEM}, {"role": "user", "content": question(i)}],
            }
            async with session.post(url + "/chat/completions", json=body) as response:
                data = json.loads(await response.text())
            texts += len(data["choices"][0]["message"]["content"])
            done += 1

    cpu0, t0 = _cpu(), time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return {"requests": done, "seconds": time.perf_counter() - t0, "cpu": _cpu() - cpu0}


async def gateway(url: str, n: int, concurrency: int) -> dict[str, Any]:
    """The model gateway alone (ModelClient.chat: key, limits, retries, backend, accounting), no engine."""
    from joydataforge.models.config import ModelRegistry
    from joydataforge.models.gateway import Gateway

    registry = ModelRegistry.from_dict(
        {
            "models": {
                "bench": {
                    "backend": "openai",
                    "model": "mock-model",
                    "base_url": url,
                    "max_concurrency": concurrency,
                    "timeout": 60,
                    "max_retries": 2,
                }
            }
        },
        "bench",
    )
    gw = Gateway(registry)
    client = gw.model("bench")
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            await client.chat(
                [{"role": "system", "content": MESSAGES_SYSTEM}, {"role": "user", "content": question(i)}]
            )

    cpu0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    await gw.close()
    return {"requests": gw.usage["bench"].calls, "seconds": seconds, "cpu": cpu}


async def engine(url: str, n: int, concurrency: int, cache: bool, workdir: Path) -> dict[str, Any]:
    """The whole engine, as a user runs it, minus the progress bar."""
    from joydataforge.config.pipeline import Pipeline
    from joydataforge.engine.local import LocalExecutor
    from joydataforge.models.config import ModelRegistry

    source = workdir / "in.jsonl"
    with source.open("w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(json.dumps({"id": f"r{i}", "input": question(i)}) + "\n")
    registry = ModelRegistry.from_dict(
        {
            "models": {
                "bench": {
                    "backend": "openai",
                    "model": "mock-model",
                    "base_url": url,
                    "max_concurrency": concurrency,
                    "timeout": 60,
                    "max_retries": 2,
                }
            }
        },
        "bench",
    )
    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(source)},
            "steps": [{"generate": {"model": "bench", "prompt": "en/answer"}}],
            "output": {"dir": str(workdir / "out")},
            "run": {
                "concurrency": concurrency,
                "cache": str(workdir / "calls.sqlite") if cache else None,
                "progress": False,
            },
        },
        base_dir=str(workdir),
    )
    cpu0, t0 = _cpu(), time.perf_counter()
    summary = await LocalExecutor(pipeline, registry=registry, overwrite=True).run()
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    lines = sum(1 for _ in (workdir / "out" / "data.jsonl").open("rb"))
    if lines != n or summary.failed:
        raise SystemExit(f"engine run incomplete: {lines} of {n} records written, {summary.failed} failed")
    return {"requests": summary.models["bench"]["calls"], "seconds": seconds, "cpu": cpu}


def run_phase(args: argparse.Namespace) -> None:
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
    run: Any = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    with tempfile.TemporaryDirectory(prefix="joyforge-bench-") as tmp:
        if args.phase in ("bare", "bare+gc"):
            if args.phase == "bare+gc":  # the young-generation threshold the engine sets for its runs
                import gc

                gc.set_threshold(max(gc.get_threshold()[0], 50 * 4 * args.concurrency), *gc.get_threshold()[1:])
            result = run(bare(args.url, args.n, args.concurrency))
        elif args.phase == "gateway":
            result = run(gateway(args.url, args.n, args.concurrency))
        else:
            result = run(engine(args.url, args.n, args.concurrency, args.phase == "engine+cache", Path(tmp)))
    result["peak_mib"] = _peak_mib()
    print("RESULT " + json.dumps(result), flush=True)


def child(phase: str, url: str, args: argparse.Namespace, profile: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += [
        __file__,
        "--phase",
        phase,
        "--url",
        url,
        "--n",
        str(args.n),
        "--concurrency",
        str(args.concurrency),
        "--loop",
        args.loop,
    ]
    if args.client_cpu is not None:
        cmd += ["--client-cpu", str(args.client_cpu)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO), env.get("PYTHONPATH")]))
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"phase {phase} failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="requests (records) per phase")
    parser.add_argument("--concurrency", "-c", type=int, default=256, help="C: requests in flight")
    parser.add_argument("--latency", "-l", type=float, default=0.1, help="L: the mock's latency in seconds")
    parser.add_argument("--quick", action="store_true", help="2,000 requests per phase instead of 20,000")
    parser.add_argument(
        "--phases",
        default="bare,bare+gc,engine,engine+cache",
        help="comma-separated subset of bare, bare+gc, gateway, engine, engine+cache",
    )
    parser.add_argument(
        "--server-engine",
        choices=("raw", "aiohttp"),
        default="raw",
        help="the mock's HTTP engine (raw: lean asyncio protocol, least server CPU)",
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pin the server to the last core and the client to core 0 (default: on with >= 2 cores)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the phases this many times, interleaved; report the median and the best run",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the client's event loop (the engine's own default is asyncio)",
    )
    parser.add_argument("--profile", metavar="DIR", help="also write cProfile output of each phase here")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--client-cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        run_phase(args)
        return 0
    if args.quick:
        args.n = min(args.n, 2_000)

    sys.path[:0] = [str(REPO / "src"), str(REPO)]
    from tests.mock_openai import spawn_mock_server

    cores = sorted(os.sched_getaffinity(0))
    pin = len(cores) >= 2 if args.pin is None else args.pin
    server_cpu = cores[-1] if pin else None
    args.client_cpu = cores[0] if pin else None
    ideal = args.concurrency / args.latency
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    print(
        f"orchestration bench: N={args.n} requests per phase, C={args.concurrency}, L={args.latency * 1000:g} ms, "
        f"ideal C/L = {ideal:,.0f} req/s; mock engine {args.server_engine}; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; client loop {args.loop}; "
        + (f"client on core {args.client_cpu}, server on core {server_cpu}" if pin else "no pinning")
    )
    runs: dict[str, list[dict[str, Any]]] = {phase: [] for phase in phases}
    with spawn_mock_server(latency=args.latency, engine=args.server_engine, cpu=server_cpu, keep_last=1) as server:
        for round_no in range(args.rounds):
            for phase in phases:
                server.reset()
                profile = Path(args.profile) / f"{phase}-{round_no}.prof" if args.profile else None
                if profile is not None:
                    profile.parent.mkdir(parents=True, exist_ok=True)
                result = child(phase, server.url, args, profile)
                result["served"] = server.stats()["by_endpoint"].get("/v1/chat/completions", 0)
                result["rate"] = result["requests"] / result["seconds"]
                result["cpu_us"] = result["cpu"] * 1e6 / max(1, result["requests"])
                runs[phase].append(result)
                print(
                    f"  {phase:<13} {result['requests']:>7,} requests in {result['seconds']:6.2f} s = "
                    f"{result['rate']:8,.0f} req/s   ratio to C/L {result['rate'] / ideal:5.3f}   "
                    f"CPU {result['cpu_us']:6.0f} us/request   peak RSS {result['peak_mib']:6.1f} MiB   "
                    f"(server saw {result['served']:,}; load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    summary: dict[str, dict[str, float]] = {}
    label = f"median / best of {args.rounds} runs" if args.rounds > 1 else "one run"
    print(f"summary ({label}):")
    for phase in phases:
        rates = [r["rate"] for r in runs[phase]]
        cpus = [r["cpu_us"] for r in runs[phase]]
        summary[phase] = {
            "median": median(rates),
            "best": max(rates),
            "cpu": median(cpus),
            "peak": max(r["peak_mib"] for r in runs[phase]),
        }
        s = summary[phase]
        rate_text = (
            f"{s['median']:,.0f} / {s['best']:,.0f} req/s, ratio to C/L {s['median'] / ideal:.3f} / "
            f"{s['best'] / ideal:.3f}"
            if args.rounds > 1
            else f"{s['median']:,.0f} req/s, ratio to C/L {s['median'] / ideal:.3f}"
        )
        print(f"  {phase:<13} {rate_text};  CPU {s['cpu']:.0f} us/request;  peak RSS {s['peak']:.1f} MiB")
    for base_name in ("bare", "bare+gc"):
        base = summary.get(base_name)
        for phase in ("gateway", "engine", "engine+cache"):
            if base and phase in summary:
                s = summary[phase]
                print(
                    f"  {phase}/{base_name}: {s['median'] / base['median']:.3f} (requests/s, medians)"
                    + (f", {s['best'] / base['best']:.3f} (best runs)" if args.rounds > 1 else "")
                    + f";  CPU per request {s['cpu'] / base['cpu']:.2f}x {base_name}"
                )
    headline = summary.get("engine")
    if headline:
        ratio = headline["median"] / ideal
        verdict = "meets" if ratio >= TARGET else "BELOW"
        print(
            f"engine ratio to ideal C/L: {ratio:.3f} ({verdict} the {TARGET} target)"
            + (f"; best run {headline['best'] / ideal:.3f}" if args.rounds > 1 else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
