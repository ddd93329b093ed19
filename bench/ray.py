"""Records/s of the local and the Ray executor against the mock server at equal total concurrency.

A mock OpenAI-compatible server runs in its own process with a fixed latency L per request. The same
pipeline (one `generate` step, an `openai` model whose max_concurrency is C, run.concurrency C, no call
cache, N records) runs on both executors:

  local   LocalExecutor: one asyncio process, C records in flight
  ray     RayExecutor on a local Ray instance (started before timing; its start-up is printed apart),
          W workers with C/W records in flight each, model slots granted by the cluster-wide limits
          actor: the same total concurrency C. Its time includes starting the W worker actors.

Printed per round: records/s of each, the ideal C/L, and ray/local (the Ray executor's overhead as a
ratio: 1.0 = none). Outputs of both are checked to be identical before any number is printed.

    python bench/ray.py [--n 2000] [--concurrency 32] [--latency 0.05] [--workers 2] [--rounds 2]

On one small machine Ray only adds work (actors, the limits actor's round trips, object transfers) and
cannot add CPUs, so a ratio below 1 is expected here; the point of Ray is more machines and more model
servers, which this benchmark cannot show. What it shows is the per-record price of the distribution.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This file is named ray.py: Python put its folder first on sys.path, where it would shadow the ray package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))


def write_pipeline(folder: Path, url: str, n: int, concurrency: int, name: str) -> Path:
    (folder / "in.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "id": f"r{i}",
                    "input": f"Question number {i}: how do I keep a sourdough starter alive over a long holiday?",
                }
            )
            + "\n"
            for i in range(n)
        ),
        "utf-8",
    )
    (folder / "models.yaml").write_text(
        f"models:\n  bench:\n    backend: openai\n    model: mock\n    base_url: {url}\n"
        f"    max_concurrency: {concurrency}\n    timeout: 60\n",
        "utf-8",
    )
    path = folder / f"{name}.yaml"
    path.write_text(
        "input: {path: in.jsonl}\nmodels: models.yaml\n"
        "steps:\n  - generate: {model: bench, prompt: en/answer}\n"
        f"output: {{dir: out-{name}}}\nrun: {{concurrency: {concurrency}, cache: null, progress: false}}\n",
        "utf-8",
    )
    return path


def timed(executor: object) -> tuple[float, object]:
    started = time.perf_counter()
    summary = executor.run_sync()  # type: ignore[attr-defined]
    return time.perf_counter() - started, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import ray
    from joydataforge.config.pipeline import Pipeline
    from joydataforge.engine.local import LocalExecutor
    from joydataforge.engine.ray_executor import RayExecutor
    from tests.mock_openai import spawn_mock_server

    ideal = args.concurrency / args.latency
    print(
        f"n={args.n}  C={args.concurrency}  L={args.latency * 1000:.0f} ms  workers={args.workers}  "
        f"ideal C/L={ideal:,.0f} rec/s  cpus={os.cpu_count()}  load={os.getloadavg()[0]:.2f}"
    )
    started = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"ray.init: {time.perf_counter() - started:.2f}s (not counted below)")
    server = spawn_mock_server(latency=args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            print(
                f"{'round':>5} {'local rec/s':>12} {'ray rec/s':>10} {'local/ideal':>12} {'ray/ideal':>10} "
                f"{'ray/local':>10}"
            )
            ratios = []
            for r in range(args.rounds):
                local_pipe = Pipeline.from_yaml(write_pipeline(folder, server.url, args.n, args.concurrency, "local"))
                ray_pipe = Pipeline.from_yaml(write_pipeline(folder, server.url, args.n, args.concurrency, "ray"))
                local_s, local_sum = timed(LocalExecutor(local_pipe, overwrite=True, progress=False))
                ray_s, ray_sum = timed(RayExecutor(ray_pipe, overwrite=True, progress=False, workers=args.workers))
                a = (folder / "out-local" / "data.jsonl").read_text("utf-8")
                b = (folder / "out-ray" / "data.jsonl").read_text("utf-8")
                if a != b or local_sum.records_out != args.n:  # type: ignore[attr-defined]
                    raise SystemExit("the two executors wrote different outputs: the numbers would mean nothing")
                local_rate, ray_rate = args.n / local_s, args.n / ray_s
                ratios.append(ray_rate / local_rate)
                print(
                    f"{r + 1:>5} {local_rate:>12,.0f} {ray_rate:>10,.0f} {local_rate / ideal:>12.2f} "
                    f"{ray_rate / ideal:>10.2f} {ray_rate / local_rate:>10.2f}"
                )
            ratios.sort()
            print(
                f"ray/local (median of {len(ratios)}): {ratios[len(ratios) // 2]:.2f}  "
                f"(Ray executor overhead: {1 / ratios[len(ratios) // 2]:.2f}x the local time)"
            )
    finally:
        server.close()
        ray.shutdown()


if __name__ == "__main__":
    main()
