"""The batch width of the in-process vLLM backend follows the model's concurrency limit (issue 16).

On tests/fake_vllm a batch takes the same time whatever its width (a GPU far from full): adaptive
concurrency must keep widening the batches; a pinned limit gives that width from the first batch.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

from joydataforge.models.adaptive import SELF_HOSTED_INITIAL
from joydataforge.models.backends import vllm_offline
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from tests.support.waiting import eventually

FAKE = Path(__file__).parent / "fake_vllm"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE))
    sys.modules.pop("vllm", None)
    sys.modules.pop("vllm.sampling_params", None)
    import vllm

    vllm.CALLS.clear()
    monkeypatch.setattr(vllm_offline._Engine, "_engines", {})
    monkeypatch.setattr(vllm, "DELAY_S", 0.01)
    yield vllm
    sys.modules.pop("vllm", None)
    sys.modules.pop("vllm.sampling_params", None)


async def chats(settings: dict, n: int, *, first_batch: int = 0) -> tuple[list[int], dict]:
    """``n`` chats on the fake vLLM: (the widths of its batches, the concurrency report). ``first_batch``: the
    engine is kept busy until that many requests wait in its queue, so the first batch's width is the client's
    doing, not a matter of how fast this machine queues them within the batch window."""
    body = {"backend": "vllm", "model": "org/x", **settings}
    gateway = Gateway(ModelRegistry.from_dict({"models": {"v": body}}, "test"))
    client = gateway.model("v")
    engine = client.backend.engine
    try:
        gate = threading.Event()
        if first_batch:
            busy = engine.submit(vllm_offline._Request("call", lambda llm: gate.wait(30)))
            await eventually(busy.running, "the engine busy")
        sent = asyncio.ensure_future(
            asyncio.gather(*(client.chat([{"role": "user", "content": f"q{i}"}]) for i in range(n)))
        )
        if first_batch:
            await eventually(lambda: engine._queue.qsize() >= first_batch, f"{first_batch} queued requests")
            gate.set()
        await sent
        report = client.concurrency()
        widths = list(engine.batches)
    finally:
        await gateway.close()
    return widths, report


async def test_adaptive_widens_the_batches_while_they_pay(fake_vllm, monkeypatch):
    # A batch takes 0.1 s: long enough that even a slow machine queues a wide batch's requests meanwhile.
    monkeypatch.setattr(fake_vllm, "DELAY_S", 0.1)
    widths, report = await chats({}, 3000)
    assert widths[0] <= SELF_HOSTED_INITIAL  # a batch's worth first (a server of one's own)
    assert max(widths) >= 128 and report["highest"] >= 128  # a batch costs about the same however wide: widen
    assert max(widths) <= 256  # the ceiling, vLLM's default max_concurrency


def test_the_width_starts_at_a_batchs_worth():
    gateway = Gateway(ModelRegistry.from_dict({"models": {"v": {"backend": "vllm", "model": "org/x"}}}, "test"))
    assert gateway.model("v").concurrency()["limit"] == SELF_HOSTED_INITIAL  # set before any request


async def test_a_pinned_width_from_the_first_batch(fake_vllm):
    widths, report = await chats({"concurrency": "fixed", "max_concurrency": 32}, 320, first_batch=32)
    assert widths[0] == 32 and max(widths) == 32 and report["mode"] == "fixed"
