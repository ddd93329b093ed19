"""Adaptive concurrency from a cold start (issue 16): how fast the limit finds a large server, and that the
fast start neither floods a small one for long nor fills a small pipeline's records in flight too few.

The controller runs on the virtual-time server simulation of ``tests/test_adaptive.py`` (latency flat up
to the capacity, FIFO queueing past it), here with a random spread of latencies too: exact, fast, no
wall-clock assertion. Convergence is counted in completed requests.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import ADAPTIVE_RECORDS_CAP, LocalExecutor
from joydataforge.models.adaptive import (
    INITIAL_LIMIT,
    OK,
    SCOUTS,
    SELF_HOSTED_INITIAL,
    ConcurrencyController,
    initial_limit,
    initial_limit_of,
)
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from tests.support.harness import CLOSED_PORT_URL, read_jsonl, write_jsonl
from tests.test_adaptive import FiniteBackend, VirtualClock, simulate

pytestmark = pytest.mark.timeout(60)


def simulate_from_cold(
    controller: ConcurrencyController,
    clock: VirtualClock,
    *,
    capacity: int,
    latency: float,
    requests: int,
    spread: float = 0.0,
) -> tuple[float, list[int], int]:
    """:func:`tests.test_adaptive.simulate` with endless demand, its rate given over the ideal (capacity over
    the mean latency, log-normal spread included)."""
    rate, limits, most = simulate(
        controller, clock, capacity=capacity, latency=latency, requests=requests, spread=spread
    )
    return rate / (capacity / (latency * math.exp(spread**2 / 2))), limits, most


def first_reaching(limits: list[int], level: int) -> int | None:
    """Completions until the limit first reached ``level`` (None: never)."""
    return next((i + 1 for i, limit in enumerate(limits) if limit >= level), None)


# ---- where it starts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "http://localhost:8000/v1",
        "http://[::1]:8000/v1",
        "http://10.0.3.7:8000/v1",
        "http://192.168.1.20/v1",
        "http://vllm:8000/v1",  # a compose or Kubernetes service
        "http://gpu-box.local:8000/v1",
        "https://llm.corp.internal/v1",
    ],
)
def test_a_server_of_ones_own_starts_wide(url):
    assert initial_limit(url) == SELF_HOSTED_INITIAL


@pytest.mark.parametrize(
    "url", ["https://api.openai.com/v1", "https://api.deepseek.com", "http://8.8.8.8/v1", None, "not a url"]
)
def test_a_hosted_api_starts_narrow(url):
    assert initial_limit(url) == INITIAL_LIMIT  # None: the openai backend's own default, a hosted API


def test_vllm_in_process_starts_wide_and_the_one_at_a_time_engines_narrow():
    registry = ModelRegistry.from_dict(
        {
            "models": {
                "vllm": {"backend": "vllm", "model": "org/x"},
                "llamacpp": {"backend": "llamacpp", "model_path": "x.gguf"},
                "transformers": {"backend": "transformers", "model_path": "x"},
            }
        },
        "test",
    )

    def start(name: str) -> int:
        return initial_limit_of(registry.get(name))

    assert start("vllm") == SELF_HOSTED_INITIAL
    assert start("llamacpp") == start("transformers") == INITIAL_LIMIT


# ---- convergence from cold ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spread", [0.0, 0.3])
def test_a_wide_start_reaches_a_large_server_within_two_rounds(spread):
    """Capacity 512 from 64: x8 once the first round came back with no queue: the limit is at the capacity
    after the first 64 completions, and the run has gone at full speed since."""
    clock = VirtualClock()
    controller = ConcurrencyController(1024, initial=SELF_HOSTED_INITIAL, clock=clock)
    rate, limits, _ = simulate_from_cold(controller, clock, capacity=512, latency=1.0, requests=512 * 40, spread=spread)
    reached = first_reaching(limits, 512)
    assert reached is not None and reached <= SELF_HOSTED_INITIAL + 8
    assert rate >= 0.95  # forty round trips' job, ramp-up included
    settled = limits[len(limits) // 2 :]
    assert min(settled) >= 0.9 * 512 and max(settled) <= 2 * 512


@pytest.mark.parametrize("spread", [0.0, 0.3])
def test_a_narrow_start_reaches_a_large_server_within_four_rounds(spread):
    """From 2 (a hosted API's start): x4 on the first round, then x8 a round while throughput scales
    linearly: 2 -> 8 -> 64 -> 512 within the completions of those rounds (about 80), where the earlier
    slow start (x4 a round, each round waiting for every slot of the limit) needed about 170."""
    clock = VirtualClock()
    controller = ConcurrencyController(1024, clock=clock)
    rate, limits, _ = simulate_from_cold(controller, clock, capacity=512, latency=1.0, requests=512 * 40, spread=spread)
    reached = first_reaching(limits, 512)
    assert reached is not None and reached <= 2 + 8 + 64 + 16
    assert rate >= 0.9


@pytest.mark.parametrize("capacity", [1, 2, 8])
def test_a_wide_start_on_a_small_server_is_cut_within_the_first_round(capacity):
    """64 requests to a server of 8 (or 1): the first round does not wait for all 64 to come back (eight
    round trips of queueing, or 64): once it has been out three no-load latencies (the scouts' mean: the
    first 4 requests sent, served before any queue; on a server smaller than 4 they queue too, so it takes
    a little longer), the limit goes to the completion rate's capacity plus a small queue. It never goes
    above the start, and settles near the capacity."""
    clock = VirtualClock()
    controller = ConcurrencyController(1024, initial=SELF_HOSTED_INITIAL, clock=clock)
    rate, limits, most = simulate_from_cold(
        controller, clock, capacity=capacity, latency=1.0, requests=capacity * 150 + 200
    )
    cut = next(i + 1 for i, limit in enumerate(limits) if limit < SELF_HOSTED_INITIAL)
    assert cut <= max(4 * capacity + 1, 16)  # after about three no-load latencies' completions, not 64
    assert limits[cut - 1] <= 2 * capacity + 4  # not overshooting by much
    assert most == SELF_HOSTED_INITIAL and controller.highest == SELF_HOSTED_INITIAL  # the start, never more
    settled = limits[len(limits) // 2 :]
    assert max(settled) <= 2 * capacity + 4
    assert rate >= 0.95  # the server never idled: the queue only delayed


def test_a_wide_start_that_queues_moderately_is_settled_by_the_first_raise():
    """Capacity 32 from 64: the first round queues only half its requests (mean latency 1.5x the scouts':
    not evidence enough against a spread of latencies), so slow start goes on, x8; that raise's round is
    overdue, and the limit goes to the completion rate's capacity: near 32, not 512."""
    clock = VirtualClock()
    controller = ConcurrencyController(1024, initial=SELF_HOSTED_INITIAL, clock=clock)
    rate, limits, _ = simulate_from_cold(controller, clock, capacity=32, latency=1.0, requests=32 * 150)
    assert controller.highest <= 8 * SELF_HOSTED_INITIAL
    settled = limits[len(limits) // 2 :]
    assert min(settled) >= 0.9 * 32 and max(settled) <= 2 * 32 + 4
    assert rate >= 0.95


@pytest.mark.parametrize("initial", [INITIAL_LIMIT, SELF_HOSTED_INITIAL])
def test_the_first_round_starts_with_the_first_request_not_with_the_client(initial):
    """A model's client is made before its first request, at times long before (a step's other model answers
    first, an in-process engine loads its weights). That wait is no round still out: a wide start on a large
    server still goes to its capacity at once, and is not cut to the few requests the wait would have shown
    it completing."""
    clock = VirtualClock()
    controller = ConcurrencyController(1024, initial=initial, clock=clock)
    clock.now = 100.0  # the client was made 100 round trips ago
    _, limits, _ = simulate_from_cold(controller, clock, capacity=512, latency=1.0, requests=512 * 10)
    assert min(limits) >= initial and controller.lowest == initial
    assert first_reaching(limits, 512) is not None


def test_scouts_are_the_first_requests_sent():
    """The no-load latency of a wide start comes from its first requests (the scouts) (a FIFO server serves them before
    any queue), not from the first replies (the fastest of the burst would understate it)."""
    clock = VirtualClock()
    controller = ConcurrencyController(1024, initial=SELF_HOSTED_INITIAL, clock=clock)
    tickets = [controller.start() for _ in range(SELF_HOSTED_INITIAL)]
    for i, ticket in enumerate(reversed(tickets)):  # the last sent come back first, and fast
        clock.now = 0.1 * (i + 1)
        controller.finish(ticket, OK)
    assert controller._scouts is None  # the window closed and used them
    # The scouts (the first sent) came back last, at 6.1-6.4 s: the baseline, not the 0.1 s of the fastest.
    scouts = [0.1 * (SELF_HOSTED_INITIAL - k) for k in range(SCOUTS)]
    assert controller._means[0] == pytest.approx(sum(scouts) / SCOUTS)


# ---- records in flight --------------------------------------------------------------------------------------


def _pipeline(tmp_path, run: dict[str, Any]) -> Pipeline:
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "input": f"q{i}"} for i in range(300)])
    return Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "in.jsonl")},
            "steps": [{"generate": {"model": "m", "prompt": "en/answer"}}],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False, **run},
        }
    )


def _registry(**settings: Any) -> ModelRegistry:
    body = {"backend": "openai", "model": "x", "base_url": CLOSED_PORT_URL, "max_retries": 0, **settings}
    return ModelRegistry.from_dict({"models": {"m": body}}, "test")


def test_an_adaptive_model_widens_the_records_in_flight(tmp_path):
    """``run.concurrency`` unset: as many records in flight as the adaptive model's ceiling, so the limit it
    finds is not capped at 32 by the records feeding it (the server here serves 256 at once)."""
    backend = FiniteBackend(capacity=256, latency=0.02)
    pipeline = _pipeline(tmp_path, {})
    registry = _registry()
    summary = LocalExecutor(pipeline, registry=registry, gateway=Gateway(registry, backends={"m": backend})).run_sync()
    assert pipeline.run.concurrency == min(1024, ADAPTIVE_RECORDS_CAP)
    assert summary.inputs_done == 300 and len(read_jsonl(tmp_path / "out" / "data.jsonl")) == 300
    assert backend.max_in_flight > 32  # the model was sent more than the old default of records in flight


@pytest.mark.parametrize(
    ("settings", "run", "expected"),
    [
        ({"max_concurrency": 100}, {}, 100),  # the ceiling the user set
        ({"max_concurrency": 5000}, {}, ADAPTIVE_RECORDS_CAP),  # capped
        ({"max_concurrency": 8}, {}, 32),  # never narrowed below the default
        ({"concurrency": "fixed", "max_concurrency": 100}, {}, 32),  # a pinned model: as before
        ({}, {"concurrency": 12}, 12),  # the user's run.concurrency wins
    ],
)
def test_records_in_flight_follow_an_adaptive_models_ceiling_unless_set(tmp_path, settings, run, expected):
    pipeline = _pipeline(tmp_path, run)
    registry = _registry(**settings)
    backend = FiniteBackend(capacity=64, latency=0.001)
    LocalExecutor(pipeline, registry=registry, gateway=Gateway(registry, backends={"m": backend})).run_sync()
    assert pipeline.run.concurrency == expected
