"""``run.budget`` on the Ray executor: the ledger lives in the cluster's limits actor, so two workers with
eight records in flight together still make exactly the calls the budget pays for, and a resume counts
what the earlier run spent (see tests/test_budget.py for the pipeline and its exact prices)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.errors import BudgetExceeded
from tests.test_budget import lines, project, requests, spend

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def ray_local() -> Any:
    """A local Ray instance with two CPUs (one per worker), unless one is running already."""
    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_two_workers_together_make_exactly_the_calls_the_budget_pays_for(ray_local, mock_server_factory, tmp_path):
    from joydataforge.engine.ray_executor import RayExecutor

    server = mock_server_factory(latency=0.02)
    path = project(tmp_path, server.url, n=40, run=", concurrency: 8, executor: ray, progress: false")
    pipeline = Pipeline.from_yaml(path)
    pipeline.run.budget = pipeline.run.budget.model_copy(update={"cost": 40.0})  # 10 calls of 4
    with pytest.raises(BudgetExceeded) as caught:
        RayExecutor(pipeline, workers=2).run_sync()
    assert caught.value.limit == 40.0 and caught.value.measure == "cost"
    out = tmp_path / "out"
    assert requests(server) == 10
    assert spend(out)["cost"] == 40.0
    assert len(lines(out / "ledger.jsonl")) == len(lines(out / "data.jsonl")) == 10
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    assert summary["exit_status"] == 5 and summary["models"]["a"]["calls"] == 10

    # A resume with a larger budget goes on from the 40 spent: 5 more calls.
    pipeline = Pipeline.from_yaml(path)
    pipeline.run.budget = pipeline.run.budget.model_copy(update={"cost": 60.0})
    with pytest.raises(BudgetExceeded):
        RayExecutor(pipeline, workers=2).run_sync()
    assert requests(server) == 15
    assert spend(out)["cost"] == 60.0 and spend(out)["models"]["a"]["calls"] == 15
    assert len(lines(Path(out) / "data.jsonl")) == 15


def test_without_a_budget_the_workers_count_the_spend_too(ray_local, mock_server_factory, tmp_path):
    from joydataforge.engine.ray_executor import RayExecutor

    server = mock_server_factory()
    pipeline = Pipeline.from_yaml(project(tmp_path, server.url, n=6, run=", executor: ray, progress: false"))
    summary = RayExecutor(pipeline, workers=2).run_sync()
    assert summary.records_out == 6
    assert spend(tmp_path / "out")["models"]["a"]["calls"] == requests(server) == 6
