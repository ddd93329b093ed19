"""The Ray executor on a real local two-node Ray cluster (1 CPU each): same outputs as the local executor,
cluster-wide model limits, a worker killed mid-run, and distributed dedup.

One Ray instance serves the whole module (starting one costs seconds on a small machine); every
pipeline talks to the mock OpenAI server, which Ray's worker processes reach over 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.waiting import wait_for

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    """A real two-node Ray cluster on this machine (a head and a worker node, 1 CPU each: two raylets, two
    object stores), by Ray's own ``Cluster`` utility, which stops exactly the processes it started."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # an outer cluster (e.g. RAY_ADDRESS in CI): use it as it is
        yield ray
        return
    # Both nodes on this machine (Ray names them by the machine's own interface address; nothing is
    # reachable from outside it in the test environment).
    node = {"num_cpus": 1}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        cluster.add_node(**node)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        yield ray
    finally:
        ray.shutdown()
        cluster.shutdown()


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []


def as_set(records: list[dict]) -> set[str]:
    return {json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records}


def uncached(records: list[dict]) -> list[dict]:
    """Records without the provenance's ``cached`` flags: a cache hit gives the same record otherwise."""
    for record in records:
        for call in record.get("_meta", {}).get("calls", []):
            call.pop("cached", None)
    return records


def demo_copy(where: Path, server_url: str) -> Path:
    """examples/demo.yaml with its data, its `smollm2` pointed at the mock server; its own empty cache."""
    where.mkdir()
    shutil.copy(EXAMPLES / "demo.yaml", where / "demo.yaml")
    shutil.copy(EXAMPLES / "demo_seed.jsonl", where / "demo_seed.jsonl")
    shutil.copytree(EXAMPLES / "prompts", where / "prompts")
    (where / "models.yaml").write_text(
        f"models:\n  smollm2:\n    backend: openai\n    model: mock\n    base_url: {server_url}\n"
        "    max_concurrency: 4\n",
        "utf-8",
    )
    return where / "demo.yaml"


def cli_run(*args: str) -> dict:
    from click.testing import CliRunner

    from joydataforge.cli import cli

    result = CliRunner().invoke(cli, ["run", *args, "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = Path(args[args.index("-o") + 1])
    return json.loads((out / "summary.json").read_text("utf-8"))


def test_demo_example_same_output_on_both_executors_with_cache_and_resume(ray_cluster, mock_server, tmp_path):
    local_file = demo_copy(tmp_path / "local", mock_server.url)
    ray_file = demo_copy(tmp_path / "ray", mock_server.url)
    local = cli_run(
        str(local_file), "-o", str(tmp_path / "out-local"), "--models", str(local_file.parent / "models.yaml")
    )
    # the Ray run is done in two goes: 2 records, then all: the first 2 are not redone (resume)
    first = cli_run(
        str(ray_file),
        "-o",
        str(tmp_path / "out-ray"),
        "--models",
        str(ray_file.parent / "models.yaml"),
        "--executor",
        "ray",
        "--limit",
        "2",
    )
    assert first["inputs_done"] + first["failed"] == 2
    resumed = cli_run(
        str(ray_file),
        "-o",
        str(tmp_path / "out-ray"),
        "--models",
        str(ray_file.parent / "models.yaml"),
        "--executor",
        "ray",
    )
    assert resumed["skipped"] == 2 and resumed["inputs_done"] + resumed["failed"] == 3
    for name in ("data.jsonl", "failures.jsonl"):
        assert as_set(lines(tmp_path / "out-local" / name)) == as_set(lines(tmp_path / "out-ray" / name)), name
    assert lines(tmp_path / "out-local" / "data.jsonl") == lines(tmp_path / "out-ray" / "data.jsonl")  # order too
    assert local["records_out"] == 5 and local["failed"] == 0
    calls = lambda s: sum(m["calls"] for m in s["models"].values())  # noqa: E731
    assert calls(first) + calls(resumed) == calls(local) > 0  # the workers' usage reaches the summary
    assert resumed["steps"]["label"] and resumed["steps"] == {k: v for k, v in resumed["steps"].items() if v}
    # the workers wrote the call cache (the pipeline's own file): a fresh Ray run is all cache hits
    again = cli_run(
        str(ray_file),
        "-o",
        str(tmp_path / "out-ray-2"),
        "--models",
        str(ray_file.parent / "models.yaml"),
        "--executor",
        "ray",
    )
    assert calls(again) == 0 and again["cache_hits"] == calls(local)
    assert as_set(uncached(lines(tmp_path / "out-ray-2" / "data.jsonl"))) == as_set(
        uncached(lines(tmp_path / "out-local" / "data.jsonl"))
    )


def write_pipeline(
    tmp_path: Path, url: str, n: int, max_concurrency: int, concurrency: int, cache: str | None = None
) -> Path:
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "input": f"question {i}"}) + "\n" for i in range(n)), "utf-8"
    )
    (tmp_path / "models.yaml").write_text(
        f"models:\n  mock:\n    backend: openai\n    model: mock\n    base_url: {url}\n"
        f"    max_concurrency: {max_concurrency}\n",
        "utf-8",
    )
    (tmp_path / "pipeline.yaml").write_text(
        "input: {path: in.jsonl}\nmodels: models.yaml\n"
        "steps:\n  - generate: {model: mock, prompt: en/answer}\n"
        f"output: {{dir: out}}\nrun: {{concurrency: {concurrency}, cache: {cache or 'null'}, executor: ray}}\n",
        "utf-8",
    )
    return tmp_path / "pipeline.yaml"


def test_model_concurrency_limit_holds_across_the_cluster(ray_cluster, mock_server_factory, tmp_path):
    from joydataforge.config.pipeline import Pipeline
    from joydataforge.engine.ray_executor import RayExecutor

    server = mock_server_factory(latency=0.05, hold_after=0)  # held until the cluster's 3 are in flight
    pipeline = Pipeline.from_yaml(write_pipeline(tmp_path, server.url, n=60, max_concurrency=3, concurrency=16))
    executor = RayExecutor(pipeline, progress=False, workers=2)
    nodes: set[str] = set()
    stop_workers = executor._stop_workers

    async def stop_workers_asking_their_nodes(ray_module: Any) -> None:
        # Asked as the run ends, when its workers are sure to be up (a loaded machine may take longer to start
        # them than the run takes once they are).
        nodes.update(await asyncio.gather(*(w.node.remote() for w in executor.workers)))
        await stop_workers(ray_module)

    executor._stop_workers = stop_workers_asking_their_nodes  # type: ignore[method-assign]
    thread = threading.Thread(target=executor.run_sync, daemon=True)
    thread.start()
    wait_for(lambda: server.stats()["held"] >= 3, "3 requests in flight", timeout=120)
    time.sleep(0.2)  # a fourth, were the limit not shared, would be held too
    server.configure(hold_after=-1)
    thread.join(180)
    assert not thread.is_alive()
    summary = executor.summary
    assert len(nodes) == 2  # the two workers were spread over the two nodes
    assert summary.records_out == 60 and summary.failed == 0
    # 2 workers x 8 records in flight each, but the model allows 3 at once: the server never saw more
    assert server.stats()["max_in_flight"] == 3


def test_worker_killed_mid_run_every_record_exactly_once(ray_cluster, mock_server_factory, tmp_path):
    from joydataforge.config.pipeline import Pipeline
    from joydataforge.engine.ray_executor import RayExecutor

    n = 200
    server = mock_server_factory(latency=0.01, hold_after=60)  # the run cannot end before the kill
    # One slot for the whole cluster: had the killed worker's slot not come back, the run would hang.
    pipeline = Pipeline.from_yaml(write_pipeline(tmp_path, server.url, n=n, max_concurrency=1, concurrency=8))
    executor = RayExecutor(pipeline, progress=False, workers=2)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(summary=executor.run_sync()), daemon=True)
    thread.start()
    data = tmp_path / "out" / "data.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (data.exists() and len(data.read_bytes().splitlines()) >= 30):
        time.sleep(0.02)
    victim = ray.get(executor.workers[0].pid.remote())
    os.kill(victim, signal.SIGKILL)
    at_kill = len(data.read_bytes().splitlines())
    server.configure(hold_after=-1)
    thread.join(180)
    assert not thread.is_alive()
    assert 0 < at_kill < n, "the kill must land mid-run for this test to mean anything"
    summary = result["summary"]
    ids = [r["id"] for r in lines(data)]
    assert ids == [f"r{i}" for i in range(n)]  # every record, once, in input order
    assert summary.failed == 0 and not lines(tmp_path / "out" / "failures.jsonl")
    ledger = [e["id"] for e in lines(tmp_path / "out" / "ledger.jsonl")]
    assert sorted(ledger) == sorted(ids) and len(ledger) == n


def near_duplicate_corpus(n: int = 400) -> list[dict]:
    """Records with planted near-duplicates: families of one text with a word changed, a boilerplate text
    repeated 40 times (more than the LSH window, so big-group linking is exercised), empty texts."""
    import random

    rng = random.Random(7)
    words = [f"w{i}" for i in range(300)]
    bases = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(n // 8)]
    records = []
    for i in range(n):
        if i % 10 == 9:
            text = "the same boilerplate disclaimer text repeated here again and again for every record"
        elif i % 37 == 0:
            text = ""
        else:
            tokens = bases[rng.randrange(len(bases))].split()
            tokens[rng.randrange(len(tokens))] = rng.choice(words)
            text = " ".join(tokens)
        records.append({"id": f"d{i}", "input": text})
    return records


def test_dedup_same_result_on_ray_across_blocks(ray_cluster, tmp_path):
    from joydataforge.engine.ray_dedup import ray_deduplicate
    from joydataforge.text.minhash_dedup import deduplicate

    records = near_duplicate_corpus()
    reference, data = records[:60], records[60:]
    for policy in ("first", "longest", "tag"):
        local = deduplicate(data, threshold=0.7, policy=policy, reference=reference)
        # 45 texts a block: 8 blocks, so most near-duplicate pairs cross blocks; 3 band groups
        distributed = ray_deduplicate(data, threshold=0.7, policy=policy, reference=reference, chunk_size=45)
        assert distributed.kept == local.kept and distributed.removed == local.removed, policy
        assert distributed.clusters == local.clusters
        assert {k: v for k, v in distributed.stats.items() if k not in ("seconds", "docs_per_second")} == {
            k: v for k, v in local.stats.items() if k not in ("seconds", "docs_per_second")
        }
    assert local.stats["clusters"] > 10 and local.stats["largest_cluster"] >= 30  # the corpus has real duplicates


def test_joyforge_dedup_cli_same_output_on_both_executors(ray_cluster, tmp_path):
    from click.testing import CliRunner

    from joydataforge.cli import cli

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in near_duplicate_corpus(200)), "utf-8")
    outputs = {}
    for executor in ("local", "ray"):
        kept, removed = tmp_path / f"kept-{executor}.jsonl", tmp_path / f"removed-{executor}.jsonl"
        result = CliRunner().invoke(
            cli,
            [
                "dedup",
                str(data),
                "-o",
                str(kept),
                "--removed",
                str(removed),
                "--threshold",
                "0.7",
                "--executor",
                executor,
            ],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        outputs[executor] = (kept.read_text("utf-8"), removed.read_text("utf-8"))
    assert outputs["local"] == outputs["ray"]
    assert outputs["local"][1].count("\n") > 20


def test_vendi_from_partition_sums_is_exact(ray_cluster):
    from joydataforge.engine.ray_dedup import ray_vendi_scores
    from joydataforge.text.vendi import vendi_scores

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(300, 12)) + rng.normal(size=(1, 12))
    parts = [vectors[:70], vectors[70:200], ray.put(vectors[200:])]
    assert ray_vendi_scores(parts) == pytest.approx(vendi_scores(vectors), rel=1e-10)

    def embed(texts):  # embeddings computed in the task, where the block lies
        import numpy

        return numpy.array([[len(t), t.count("a") + 1.0, t.count("e") + 0.5] for t in texts])

    texts = [f"{'a' * (i % 7)} text {'e' * (i % 5)} {i}" for i in range(120)]
    blocks = [texts[:50], texts[50:]]
    assert ray_vendi_scores(blocks, embed=embed) == pytest.approx(vendi_scores(embed(texts)), rel=1e-10)
