"""The HTML report in a real browser: headless Chromium loads it, runs its script, draws its figures.

We drive Chromium over the DevTools protocol with aiohttp's websocket client (no Playwright or
Selenium download): every console error, uncaught exception and network request the page makes is
recorded, the figures are measured in the rendered layout, the legend is clicked, and a full-page
screenshot is taken and checked for content.

Needs Debian's ``chromium`` (``apt-get install -y chromium fonts-noto-cjk``); skipped without it.
Set ``JOYFORGE_REPORT_SCREENSHOT_DIR`` to keep the screenshots for a look.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from joydataforge.cli.evaluate import read_dataset
from joydataforge.evaluate.embeddings import vectors_from_records
from joydataforge.evaluate.metrics import EvalOptions, evaluate_records
from joydataforge.evaluate.report import write_report

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = _chromium()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="headless Chromium is not installed (apt-get install -y chromium fonts-noto-cjk)"
    ),
]


class DevTools:
    """A minimal DevTools-protocol client over one websocket: commands with ids, events in a list."""

    def __init__(self, ws: Any):
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.pending: dict[int, asyncio.Future] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            else:
                self.events.append(data)

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        self.next_id += 1
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self.ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for event in self.events:
                if event.get("method") == method:
                    return event
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {method} event")

    async def evaluate(self, expression: str, session: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


FIGURES_JS = """
(() => {
  const charts = [...document.querySelectorAll('svg.chart')].map(svg => {
    const box = svg.getBoundingClientRect();
    return {kind: svg.getAttribute('class'), width: box.width, height: box.height,
            marks: svg.querySelectorAll('rect.bar, circle.pt').length};
  });
  const metrics = JSON.parse(document.getElementById('metrics-data').textContent);
  return {charts, records: metrics.records, title: document.title,
          sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
          clusters: document.querySelectorAll('.cluster').length,
          font: getComputedStyle(document.body).fontFamily};
})()
"""

LEGEND_JS = """
(() => {
  const button = document.querySelector('.legend button');
  const group = button.getAttribute('data-group');
  const points = [...document.querySelectorAll('#embedding-map .pt')].filter(p => p.getAttribute('data-group') === group);
  button.click();
  const hidden = points.filter(p => getComputedStyle(p).display === 'none').length;
  button.click();
  const shown = points.filter(p => getComputedStyle(p).display !== 'none').length;
  return {group, points: points.length, hidden, shown};
})()
"""

# Decode the screenshot in the page itself (no image library needed in Python): the share of pixels
# that differ from the top-left pixel, and how many distinct colours a coarse grid sees.
PIXELS_JS = """
(async () => {
  const img = new Image();
  img.src = 'data:image/png;base64,%s';
  await img.decode();
  const canvas = document.createElement('canvas');
  canvas.width = img.width; canvas.height = img.height;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, img.width, img.height).data;
  const [r0, g0, b0] = [data[0], data[1], data[2]];
  let differ = 0, total = 0; const colours = new Set();
  for (let i = 0; i < data.length; i += 4 * 7) {
    total++;
    if (Math.abs(data[i] - r0) + Math.abs(data[i + 1] - g0) + Math.abs(data[i + 2] - b0) > 24) differ++;
    colours.add((data[i] >> 4) + ',' + (data[i + 1] >> 4) + ',' + (data[i + 2] >> 4));
  }
  return {width: img.width, height: img.height, differ: differ / total, colours: colours.size};
})()
"""


async def _inspect(
    html: Path, *, legend: bool = True, screenshot: bool = True, probe: str | None = None
) -> dict[str, Any]:
    """Load ``html`` in headless Chromium and report console errors, requests, figures and a screenshot.

    ``probe``: one more expression evaluated in the page, its value returned as ``out["probe"]``.
    """
    import aiohttp

    profile = tempfile.mkdtemp(prefix="joyforge-chromium-")
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and len(port_file.read_text().splitlines()) >= 2:
                break
            if process.poll() is not None:
                raise RuntimeError(f"chromium exited with {process.returncode}")
            await asyncio.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0) as ws:
                tools = DevTools(ws)
                target = await tools.send("Target.createTarget", {"url": "about:blank"})
                attached = await tools.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
                session = attached["sessionId"]
                for domain in ("Runtime", "Log", "Page", "Network"):
                    await tools.send(f"{domain}.enable", session=session)
                await tools.send(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                    session,
                )
                uri = html.resolve().as_uri()
                tools.events.clear()  # a late load event of the blank tab must not pass for the report's
                await tools.send("Page.navigate", {"url": uri}, session)
                await tools.wait_event("Page.loadEventFired")
                for _ in range(300):
                    if await tools.evaluate(
                        f"document.readyState === 'complete' && location.href === {json.dumps(uri)}", session
                    ):
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.2)  # late console messages
                out: dict[str, Any] = {
                    "requests": [  # before our own probes add data: URLs
                        e["params"]["request"]["url"]
                        for e in tools.events
                        if e.get("sessionId") == session and e["method"] == "Network.requestWillBeSent"
                    ]
                }
                out["figures"] = await tools.evaluate(FIGURES_JS, session)
                if legend:
                    out["legend"] = await tools.evaluate(LEGEND_JS, session)
                if probe:
                    out["probe"] = await tools.evaluate(probe, session)
                if screenshot:
                    layout = await tools.send("Page.getLayoutMetrics", session=session)
                    size = layout.get("cssContentSize") or layout["contentSize"]
                    shot = await tools.send(
                        "Page.captureScreenshot",
                        {
                            "format": "png",
                            "captureBeyondViewport": True,
                            "clip": {
                                "x": 0,
                                "y": 0,
                                "width": 1280,
                                "height": min(int(size["height"]), 16000),
                                "scale": 1,
                            },
                        },
                        session,
                        timeout=60,
                    )
                    out["png"] = base64.b64decode(shot["data"])
                    out["pixels"] = await tools.evaluate(PIXELS_JS % shot["data"], session)
                page_events = [e for e in tools.events if e.get("sessionId") == session]
                out["exceptions"] = [e["params"] for e in page_events if e["method"] == "Runtime.exceptionThrown"]
                out["console_errors"] = [
                    e["params"]
                    for e in page_events
                    if e["method"] == "Runtime.consoleAPICalled"
                    and e["params"].get("type") in ("error", "assert", "warning")
                ]
                out["log_errors"] = [
                    e["params"]["entry"]
                    for e in page_events
                    if e["method"] == "Log.entryAdded" and e["params"]["entry"].get("level") in ("error", "warning")
                ]
                try:
                    await tools.send("Browser.close", timeout=5)
                except Exception:
                    pass
                tools.reader.cancel()
    finally:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return out


def inspect(html: Path, **options: Any) -> dict[str, Any]:
    return asyncio.run(_inspect(html, **options))


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _keep(name: str, png: bytes) -> None:
    folder = os.environ.get("JOYFORGE_REPORT_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(png)


def _agent_intent_report(tmp_path: Path) -> Path:
    records, _ = read_dataset(str(FIXTURES / "agent_intent.jsonl"), skip_bad=False)
    evaluation = evaluate_records(
        records,
        EvalOptions(text_fields=("query",)),
        vectors=vectors_from_records(records, "embedding"),
        embedder="precomputed:embedding",
    )
    return write_report(
        tmp_path / "agent_intent.html", evaluation, title="agent_intent 数据集报告", source="agent_intent.jsonl"
    )


def _instructions_report(tmp_path: Path) -> Path:
    import numpy as np

    records, _ = read_dataset(str(FIXTURES / "instructions.jsonl"), skip_bad=False)
    vectors = np.random.default_rng(3).normal(size=(len(records), 24))
    evaluation = evaluate_records(
        records, EvalOptions(text_fields=("input", "history")), vectors=vectors, embedder="random test vectors"
    )
    return write_report(tmp_path / "instructions.html", evaluation, title="instructions", source="instructions.jsonl")


def test_report_loads_without_errors_and_draws_its_figures(tmp_path: Path) -> None:
    html = _agent_intent_report(tmp_path)
    seen = inspect(html)
    assert seen["exceptions"] == [] and seen["console_errors"] == [] and seen["log_errors"] == [], seen
    assert seen["requests"] == [html.resolve().as_uri()], "the page must load nothing but itself"
    figures = seen["figures"]
    assert figures["records"] == 10 and figures["title"] == "agent_intent 数据集报告"
    assert {"metrics", "lengths", "labels", "duplicates", "entities", "map"} <= set(figures["sections"])
    kinds = [c["kind"] for c in figures["charts"]]
    assert kinds.count("chart scatter") == 1 and kinds.count("chart histogram") >= 2 and kinds.count("chart bars") >= 3
    for chart in figures["charts"]:  # laid out with a real size, and with something drawn in it
        assert chart["width"] > 200 and chart["height"] > 20 and chart["marks"] > 0, chart
    scatter = next(c for c in figures["charts"] if c["kind"] == "chart scatter")
    assert scatter["marks"] == 10
    assert "Noto Sans CJK SC" in figures["font"]
    legend = seen["legend"]
    assert legend["points"] > 0 and legend["hidden"] == legend["points"] and legend["shown"] == legend["points"]


def test_report_screenshot_is_a_full_non_blank_page(tmp_path: Path) -> None:
    seen = inspect(_instructions_report(tmp_path), legend=False)
    png = seen["png"]
    _keep("instructions.png", png)
    width, height = _png_size(png)
    assert width == 1280 and height > 2000  # the whole page, not just the first screen
    pixels = seen["pixels"]
    assert (pixels["width"], pixels["height"]) == (width, height)
    assert pixels["differ"] > 0.05 and pixels["colours"] > 20, pixels
    assert seen["figures"]["clusters"] == 3  # the planted near-duplicates
    assert seen["exceptions"] == [] and seen["console_errors"] == []


DUPLICATES_JS = """
(() => {
  const card = [...document.querySelectorAll('.card')].find(c => c.querySelector('.k').textContent === 'Near-duplicates');
  const texts = [...document.querySelectorAll('.cluster .member .text')];
  return {card: card ? card.querySelector('.d').innerText : null,
          clusters: document.querySelectorAll('.cluster').length,
          members: texts.length,
          marked: texts.flatMap(t => [...t.querySelectorAll('mark')].map(m => m.innerText)),
          gone: texts.reduce((n, t) => n + t.querySelectorAll('.gone').length, 0),
          markHeights: texts.flatMap(t => [...t.querySelectorAll('mark')].map(m => m.getBoundingClientRect().height))};
})()
"""


def test_near_duplicate_card_and_diffs_as_rendered(tmp_path: Path) -> None:
    """Five pairs (10 records): the card counts 10 records in 5 clusters, and only the changed words are marked,
    not the case, punctuation, spacing and full-width letters that dedup ignores."""
    records, _ = read_dataset(str(FIXTURES / "pairs.jsonl"), skip_bad=False)
    evaluation = evaluate_records(records, EvalOptions())
    html = write_report(tmp_path / "pairs.html", evaluation, title="pairs")
    seen = inspect(html, legend=False, screenshot=False, probe=DUPLICATES_JS)
    assert seen["exceptions"] == [] and seen["console_errors"] == [], seen
    shown = seen["probe"]
    assert shown["card"].startswith("10 records in 5 clusters"), shown["card"]
    assert shown["clusters"] == 5 and shown["members"] == 10
    assert sorted(shown["marked"]) == sorted(["tea", "after", "事项", "方", "three"]), shown["marked"]
    assert shown["gone"] == 0
    assert all(height > 0 for height in shown["markHeights"])  # drawn, not just present


def test_the_harness_sees_script_errors_and_blank_pages(tmp_path: Path) -> None:
    """The checks above can fail: a page that throws, logs an error and is blank is caught."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"><title>x</title></head><body>'
        '<script type="application/json" id="metrics-data">{"records": 0}</script>'
        '<script>console.error("bad things"); throw new Error("boom");</script></body></html>',
        encoding="utf-8",
    )
    seen = inspect(page, legend=False)
    assert any("boom" in json.dumps(e) for e in seen["exceptions"])
    assert any("bad things" in json.dumps(e) for e in seen["console_errors"])
    assert seen["figures"]["charts"] == []
    assert seen["pixels"]["differ"] < 0.01
