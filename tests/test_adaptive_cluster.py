"""Adaptive concurrency on Ray: one controller per model in the cluster's limits actor (issue 16).

The actor is a plain class, so its logic is tested in this process first; then a real Ray run checks that
the limit holds cluster-wide, that the summary keeps it, and that a quota's 429s do not stall the cluster.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from joydataforge.engine.ray_limits import LimitsActor, limits_of
from joydataforge.models.adaptive import OK, RATE_LIMITED
from joydataforge.models.config import ModelRegistry

pytestmark = pytest.mark.timeout(180)


async def test_the_actor_grants_the_adaptive_limit_and_cuts_on_feedback():
    actor = LimitsActor({"m": (64, None, None, True, 300.0)})
    granted, _ = await actor.acquire("m", "w#1", want=10)
    assert granted == 2  # adaptive starts low; the ceiling is 64
    now = time.time()
    await actor.feedback("m", [(now, 0.01, OK, None), (now, 0.01, OK, None)])
    assert actor.stats()["limit"]["m"] == 8  # a full window at a flat latency: x4
    await actor.feedback("m", [(time.time(), 0.01, RATE_LIMITED, 0.05)])
    assert actor.stats()["limit"]["m"] == 5  # x0.7
    assert actor.contended("m")  # a hold is on: workers give their slots back
    await actor.release("m", "w#1", 2)
    started = time.monotonic()
    granted, _ = await actor.acquire("m", "w#1")  # waits out the hold, then grants: never stalls
    assert granted == 1 and time.monotonic() >= started
    report = actor.reports()["m"]
    assert report["mode"] == "adaptive" and report["rate_limited"] == 1 and report["limit"] == 5


async def test_on_ray_a_server_of_ones_own_starts_wide_and_the_samples_pick_the_scouts():
    registry = ModelRegistry.from_dict(
        {
            "models": {
                "own": {"backend": "openai", "base_url": "http://127.0.0.1:8000/v1"},
                "hosted": {"backend": "openai", "base_url": "https://api.example.com/v1"},
            }
        },
        "test",
    )
    actor = LimitsActor(limits_of(registry))
    assert (await actor.acquire("own", "w#1", want=100))[0] == 64  # as a local run against it
    assert (await actor.acquire("hosted", "w#1", want=100))[0] == 2
    # Samples come back out of order: the last sent first and fast. The scouts are the four sent first
    # (by their start times), served before any queue: 1 s, not the 0.1 s of the fastest replies.
    base = time.time()
    samples = [(base + 0.001 * i, 1.0 if i < 4 else 0.1, OK, None) for i in range(64)]
    await actor.feedback("own", list(reversed(samples)))
    assert actor._model("own").controller._means[0] == pytest.approx(1.0)


async def test_a_pinned_model_keeps_its_slots_and_old_specs_still_work():
    registry = ModelRegistry.from_dict(
        {
            "models": {
                "f": {"backend": "openai", "base_url": "http://h/v1", "concurrency": "fixed", "max_concurrency": 3}
            }
        },
        "test",
    )
    actor = LimitsActor(limits_of(registry))
    granted, _ = await actor.acquire("f", "w#1", want=5)
    assert granted == 3
    await actor.feedback("f", [(time.time(), 0.01, RATE_LIMITED, 1.0)])
    assert actor.stats()["limit"]["f"] == 3 and not actor.contended("f")
    legacy = LimitsActor({"old": (2, None, None)})  # (max_concurrency, rpm, tpm): pinned, as before
    assert (await legacy.acquire("old", "w#1", want=5))[0] == 2


async def test_the_actor_mirrors_a_servers_budget():
    from joydataforge.models.rate_headers import Budget, RateLimitInfo

    actor = LimitsActor({"m": (64, None, None, True, 300.0)})
    marks = await actor.before_call("m", 10)
    assert marks is not None and marks[0] == 1  # one request sent through the mirror
    actor.observe("m", RateLimitInfo(Budget(10, 0, 1.0), None), marks)  # empty, 10 a second
    waited = asyncio.ensure_future(actor.before_call("m", 10))
    await asyncio.sleep(0)
    assert not waited.done()  # paced: the budget is empty until it refills
    await asyncio.wait_for(waited, 5)


def test_cluster_run_keeps_the_limit_and_reports_it(mock_server_factory, tmp_path: Path):
    ray = pytest.importorskip("ray")
    from joydataforge.config.pipeline import Pipeline
    from joydataforge.engine.ray_executor import RayExecutor

    server = mock_server_factory(latency=0.02, capacity=4, quota_rps=100, quota_burst=8)
    n = 120
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"input": f"q{i}"}) + "\n" for i in range(n)), "utf-8")
    (tmp_path / "models.yaml").write_text(
        f"models:\n  mock:\n    backend: openai\n    model: mock\n    base_url: {server.url}\n"
        "    max_concurrency: 6\n    max_retries: 30\n",
        "utf-8",
    )
    (tmp_path / "p.yaml").write_text(
        "input: {path: in.jsonl}\nmodels: models.yaml\nsteps:\n  - generate: {model: mock, prompt: en/answer}\n"
        "output: {dir: out}\nrun: {concurrency: 32, executor: ray}\n",
        "utf-8",
    )
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        summary = RayExecutor(Pipeline.from_yaml(tmp_path / "p.yaml"), progress=False, workers=2).run_sync()
    finally:
        if started_here:
            ray.shutdown()
    assert summary.records_out == n and summary.failed == 0  # 429s included: nothing stalled, nothing lost
    assert server.stats()["max_in_flight"] <= 6  # the ceiling held across both workers
    concurrency = summary.models["mock"]["concurrency"]
    assert concurrency["mode"] == "adaptive" and concurrency["ceiling"] == 6
    assert concurrency["requests"] >= n
    written = json.loads((tmp_path / "out" / "summary.json").read_text("utf-8"))
    assert written["models"]["mock"]["concurrency"]["limit"] == concurrency["limit"]
