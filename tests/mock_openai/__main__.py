"""``python -m tests.mock_openai --port 0 --latency 0.1``: run the mock server in the foreground.

The first stdout line is ``PORT <n>`` (the port actually bound), so a parent process that asked for
port 0 can read where to connect; nothing else is printed per request. SIGTERM or Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from .server import MockApp, MockOptions, start_site


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.mock_openai", description="Mock OpenAI-compatible server for tests and benchmarks."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as 'PORT <n>')")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each model request")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests that fail")
    parser.add_argument("--error-status", type=int, default=500, help="status of the random failures")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random failures")
    parser.add_argument("--dimension", type=int, default=8, help="embedding dimension")
    parser.add_argument("--keep-last", type=int, default=50, help="request bodies kept for /_stats")
    parser.add_argument("--model", action="append", default=None, help="served model id (repeatable)")
    parser.add_argument("--error-retry-after", default=None, help="Retry-After header of the random failures")
    parser.add_argument("--capacity", type=int, default=0, help="requests served at once; the rest queue (0: no limit)")
    parser.add_argument("--quota-rps", type=float, default=0.0, help="request quota refilled per second (0: none)")
    parser.add_argument("--quota-burst", type=float, default=0.0, help="quota bucket size (0: one second's worth)")
    parser.add_argument("--no-quota-headers", action="store_true", help="answer 429s without the x-ratelimit-* headers")
    parser.add_argument(
        "--hold-after", type=int, default=-1, help="hold model requests after this many until /_config frees them"
    )
    parser.add_argument(
        "--engine",
        choices=("aiohttp", "raw"),
        default="aiohttp",
        help="HTTP engine: aiohttp.web (default) or the lean asyncio protocol",
    )
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU core")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's loop even if uvloop is installed")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT, then shut down cleanly (pending requests are cancelled)."""
    options = MockOptions(
        latency=args.latency,
        error_rate=args.error_rate,
        error_status=args.error_status,
        seed=args.seed,
        dimension=args.dimension,
        keep_last=args.keep_last,
        models=tuple(args.model or MockOptions().models),
        error_retry_after=args.error_retry_after,
        capacity=args.capacity,
        quota_rps=args.quota_rps,
        quota_burst=args.quota_burst,
        quota_headers=not args.no_quota_headers,
        hold_after=args.hold_after,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before PORT, so a parent may stop us at once
        loop.add_signal_handler(sig, stop.set)
    stop_site, port = await start_site(MockApp(options), args.host, args.port, args.engine)
    print(f"PORT {port}", flush=True)
    try:
        await stop.wait()
    finally:
        await stop_site()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    if not args.no_uvloop:
        try:  # optional: faster when present, never required
            import uvloop  # type: ignore[import-not-found]

            uvloop.install()
        except ImportError:
            pass
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
