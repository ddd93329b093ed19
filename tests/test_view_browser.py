"""``joyforge view`` in a real browser: headless Chromium drives the page over the DevTools protocol.

The records are real example outputs (tests/fixtures/golden: what the example pipelines wrote on the
mock server and on the vLLM test double), served by the real server on a thread. The tests filter the
table, open a record, accept it, reload and find the review kept (in the page and in review.jsonl);
they check that the DPO view shows a pair side by side with its judge in both orders and that the Evol
tree and the rewrite lineage render; and that the page loads nothing but itself from the server
(no CDN), throws nothing and logs no error.

Needs Debian's ``chromium`` (``make browser``); skipped without it, like tests/test_report_browser.py whose
DevTools client this reuses. ``JOYFORGE_VIEW_SCREENSHOT_DIR`` keeps a screenshot of each page looked at.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.view_runs import EXAMPLES, ServerThread, built_index, read_lines, run_folder
from tests.test_report_browser import CHROMIUM, DevTools
from tests.test_view_server import eval_report

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="headless Chromium is not installed (apt-get install -y chromium fonts-noto-cjk)"
    ),
]


class Browser:
    """One headless Chromium with one page, driven over DevTools; records requests, exceptions, errors."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="joyforge-view-chromium-")
        self.process: subprocess.Popen | None = None
        self.tools: DevTools | None = None
        self.session = ""
        self._http: Any = None
        self._ws: Any = None

    async def __aenter__(self) -> Browser:
        import aiohttp

        assert CHROMIUM is not None
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self.profile) / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and len(port_file.read_text().splitlines()) >= 2:
                break
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            await asyncio.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self.tools = DevTools(self._ws)
        target = await self.tools.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.tools.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        self.session = attached["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            await self.tools.send(f"{domain}.enable", session=self.session)
        await self.tools.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            self.session,
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            if self.tools is not None:
                try:
                    await self.tools.send("Browser.close", timeout=5)
                except Exception:
                    pass
                self.tools.reader.cancel()
            if self._ws is not None:
                await self._ws.close()
            if self._http is not None:
                await self._http.close()
        finally:
            if self.process is not None:
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    async def goto(self, url: str) -> None:
        """Load ``url``; on the page already loaded, only its hash changes (no load event: the page routes)."""
        assert self.tools is not None
        base, _, fragment = url.partition("#")
        if self.session and await self.js("location.href.split('#')[0]") == base:
            await self.js(f"location.hash = {json.dumps('#' + fragment)}")
            return
        self.tools.events = [e for e in self.tools.events if e.get("method") != "Page.loadEventFired"]
        await self.tools.send("Page.navigate", {"url": url}, self.session)
        await self.tools.wait_event("Page.loadEventFired")

    async def reload(self) -> None:
        assert self.tools is not None
        self.tools.events = [e for e in self.tools.events if e.get("method") != "Page.loadEventFired"]
        await self.tools.send("Page.reload", {"ignoreCache": True}, self.session)
        await self.tools.wait_event("Page.loadEventFired")

    async def js(self, expression: str) -> Any:
        assert self.tools is not None
        return await self.tools.evaluate(expression, self.session)

    async def until(self, expression: str, timeout: float = 20) -> Any:
        """Poll ``expression`` until it is truthy; its value. Fails with the page's text when it never is."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.js(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                text = await self.js("document.body.innerText.slice(0, 2000)")
                raise AssertionError(f"never true: {expression}\n--- page text:\n{text}")
            await asyncio.sleep(0.1)

    async def frame_js(self, url_part: str, expression: str) -> Any:
        """Evaluate in the iframe whose URL contains ``url_part``: a sandboxed frame is a target of its own."""
        assert self.tools is not None
        targets = (await self.tools.send("Target.getTargets", {}))["targetInfos"]
        frame = next(t for t in targets if t["type"] == "iframe" and url_part in t["url"])
        attached = await self.tools.send("Target.attachToTarget", {"targetId": frame["targetId"], "flatten": True})
        return await self.tools.evaluate(expression, attached["sessionId"])

    async def click(self, selector: str) -> None:
        await self.until(f"!!document.querySelector({json.dumps(selector)})")
        await self.js(f"document.querySelector({json.dumps(selector)}).click()")

    async def type_enter(self, selector: str, text: str) -> None:
        await self.until(f"!!document.querySelector({json.dumps(selector)})")
        await self.js(
            f"""(() => {{ const el = document.querySelector({json.dumps(selector)}); el.value = {json.dumps(text)};
            el.dispatchEvent(new KeyboardEvent('keydown', {{key: 'Enter', bubbles: true}})); }})()"""
        )

    async def screenshot(self, name: str) -> None:
        folder = os.environ.get("JOYFORGE_VIEW_SCREENSHOT_DIR")
        if not folder:
            return
        assert self.tools is not None
        shot = await self.tools.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": 1280, "height": 1800, "scale": 1},
            },
            self.session,
            timeout=60,
        )
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(base64.b64decode(shot["data"]))

    def problems(self) -> dict[str, list[Any]]:
        """Exceptions, console errors and warnings, and log errors the page produced."""
        assert self.tools is not None
        events = [e for e in self.tools.events if e.get("sessionId") == self.session]
        return {
            "exceptions": [e["params"] for e in events if e["method"] == "Runtime.exceptionThrown"],
            "console": [
                e["params"]
                for e in events
                if e["method"] == "Runtime.consoleAPICalled"
                and e["params"].get("type") in ("error", "assert", "warning")
            ],
            "log": [
                e["params"]["entry"]
                for e in events
                if e["method"] == "Log.entryAdded" and e["params"]["entry"].get("level") in ("error", "warning")
            ],
        }

    def requests(self) -> list[str]:
        assert self.tools is not None
        return [
            e["params"]["request"]["url"]
            for e in self.tools.events
            if e.get("sessionId") == self.session and e["method"] == "Network.requestWillBeSent"
        ]


def browse(scenario: Any) -> Any:
    async def main() -> Any:
        async with Browser() as browser:
            return await scenario(browser)

    return asyncio.run(main())


ROWS = "document.querySelectorAll('#records tbody tr').length"


def _assert_clean(browser: Browser, url: str) -> None:
    problems = browser.problems()
    assert problems == {"exceptions": [], "console": [], "log": []}, problems
    foreign = [u for u in browser.requests() if not u.startswith(url) and not u.startswith("data:")]
    assert foreign == [], f"the page asked for something besides its own server: {foreign}"


# ---------------------------------------------------------------------- filter, open, accept, reload


def test_filter_open_accept_reload_keeps_the_review(tmp_path: Path) -> None:
    folder = run_folder(tmp_path / "run", "fake_vllm/vote", "fake_vllm/joint")
    eval_report(folder)
    records = read_lines(folder / "data.jsonl")
    failed = read_lines(folder / "failures.jsonl")
    majority = [r for r in records if (r.get("vote") or {}).get("outcome") == "majority"]
    assert 0 < len(majority) < len(records)
    index = built_index(folder)
    with ServerThread(index) as server:

        async def scenario(browser: Browser) -> dict[str, Any]:
            await browser.goto(server.url)
            await browser.until(f"{ROWS} === {len(records) + len(failed)}")  # kept + failed (joint)
            await browser.screenshot("records.png")
            # filter by typing one, then by the status chip
            await browser.type_enter("#filter-text", "vote.outcome=majority")
            await browser.until(f"{ROWS} === {len(majority)} && location.hash.includes('majority')")
            shown = await browser.js("[...document.querySelectorAll('#records tbody tr')].map(tr => tr.dataset.rid)")
            await browser.click('[data-status="failed"]')
            await browser.until(f"{ROWS} === 0 && !!document.getElementById('no-records')")
            await browser.click('[data-status="all"]')
            await browser.until(f"{ROWS} === {len(majority)}")
            # open the first majority record and accept it
            await browser.click("#records tbody tr")
            await browser.until("!!document.getElementById('review-accept')")
            rid = await browser.js("Number(location.hash.split('/')[2].split('?')[0])")
            panels = await browser.js("[...document.querySelectorAll('.panel')].map(p => p.dataset.type)")
            voters = await browser.js("document.querySelectorAll('.panel[data-type=vote] tr[data-voter]').length")
            await browser.js("document.getElementById('review-note').value = '标签正确 — checked by hand'")
            await browser.click("#review-accept")
            await browser.until("document.getElementById('review-state').dataset.status === 'accepted'")
            await browser.screenshot("record.png")
            await browser.reload()
            await browser.until(
                "document.getElementById('review-state') && document.getElementById('review-state').dataset.status === 'accepted'"
            )
            note = await browser.js("document.getElementById('review-note').value")
            # back to the filtered list: the row shows its review; the review filter finds it
            await browser.click("#back")
            await browser.until(f"{ROWS} === {len(majority)}")
            badge = await browser.js(f"document.querySelector('tr[data-rid=\"{rid}\"] .review-cell').innerText")
            await browser.goto(server.url + "#/?f=review%3Daccepted")
            await browser.until(f"{ROWS} === 1")
            accepted_rid = await browser.js("Number(document.querySelector('#records tbody tr').dataset.rid)")
            # the run summary and the eval report saved in the folder
            await browser.click("#nav-summary")
            await browser.until("!!document.querySelector('.panel[data-type=eval] iframe.report')")
            await browser.screenshot("summary.png")
            summary = await browser.js(
                """(() => ({panels: [...document.querySelectorAll('.panel')].map(p => p.dataset.type),
                  text: document.getElementById('main').innerText}))()"""
            )
            # The report in its sandboxed frame, its charts drawn by its own script. The frame's target can be
            # found before its document has loaded (an empty title, no charts), so wait for the drawn page.
            for _ in range(300):
                try:
                    summary["report"] = await browser.frame_js(
                        "/eval/0",
                        "({title: document.title, charts: document.querySelectorAll('svg.chart').length,"
                        " ready: document.readyState})",
                    )
                except (StopIteration, RuntimeError):
                    summary["report"] = None
                if summary["report"] and summary["report"]["ready"] == "complete" and summary["report"]["charts"]:
                    break
                await asyncio.sleep(0.1)
            _assert_clean(browser, server.url)
            return {
                "shown": shown,
                "rid": rid,
                "panels": panels,
                "voters": voters,
                "note": note,
                "badge": badge,
                "accepted_rid": accepted_rid,
                "summary": summary,
            }

        seen = browse(scenario)
    index.close()
    assert seen["rid"] == int(seen["shown"][0]) and seen["accepted_rid"] == seen["rid"]
    assert seen["panels"][:2] == ["review", "vote"] and seen["voters"] == 3
    assert seen["note"] == "标签正确 — checked by hand" and "accepted" in seen["badge"]
    lines = read_lines(folder / "review.jsonl")
    assert len(lines) == 1 and lines[0]["status"] == "accepted" and lines[0]["note"] == "标签正确 — checked by hand"
    assert lines[0]["id"] == majority[0]["id"]
    summary = seen["summary"]
    assert summary["panels"] == ["summary", "models", "steps", "eval"]
    assert "outcome:majority" in summary["text"] and "smollm2-cool" in summary["text"]
    assert "Evaluation: report.html" in summary["text"] and "near-duplicates" in summary["text"]
    assert summary["report"] and summary["report"]["title"] == "vote eval" and summary["report"]["charts"] > 0


# ---------------------------------------------------------------------- DPO pairs


def test_dpo_pairs_show_both_answers_and_each_judge_in_both_orders(tmp_path: Path) -> None:
    folder = run_folder(tmp_path / "dpo", "fake_vllm/dpo_pairwise", "fake_vllm/dpo")
    records = read_lines(folder / "data.jsonl")
    pairwise, pointwise = records[0], records[-1]
    assert pairwise["dpo"]["scorer"] == "pairwise" and pointwise["dpo"]["scorer"] == "pointwise"
    index = built_index(folder)
    with ServerThread(index) as server:

        async def scenario(browser: Browser) -> dict[str, Any]:
            out = {}
            for name, rid in (("pairwise", 1), ("pointwise", len(records))):
                await browser.goto(f"{server.url}#/record/{rid}")
                await browser.until(f"!!document.querySelector('#record-head[data-rid=\"{rid}\"]')")
                await browser.until("!!document.querySelector('.panel[data-type=dpo] .side.rejected')")
                await browser.screenshot(f"dpo-{name}.png")
                out[name] = await browser.js(
                    """(() => {
                      const panel = document.querySelector('.panel[data-type=dpo]');
                      const side = s => panel.querySelector(`.side.${s} pre.answer`).textContent;
                      const box = s => panel.querySelector(`.side.${s}`).getBoundingClientRect();
                      return {chosen: side('chosen'), rejected: side('rejected'),
                              sideBySide: box('chosen').top === box('rejected').top && box('chosen').right <= box('rejected').left,
                              judges: [...panel.querySelectorAll('.judge')].map(j => j.dataset.judge),
                              orders: [...panel.querySelectorAll('.judge .order')].map(o => o.innerText),
                              rationales: [...panel.querySelectorAll('.judge .rationale')].map(r => r.textContent),
                              aspects: panel.querySelectorAll('table.aspects tr').length,
                              prompt: panel.querySelectorAll('.msg').length};
                    })()"""
                )
            _assert_clean(browser, server.url)
            return out

        seen = browse(scenario)
    index.close()
    pair = seen["pairwise"]
    assert pair["chosen"] == pairwise["chosen"][0]["content"] and pair["rejected"] == pairwise["rejected"][0]["content"]
    assert pair["sideBySide"] and pair["prompt"] == len(pairwise["prompt"])
    judged = pairwise["rationale_chosen"]
    assert pair["judges"] == [j["judge"] for j in judged]
    assert len(pair["orders"]) == 2 * len(judged)  # every judge, both orders
    assert any("chosen shown first" in o for o in pair["orders"]) and any(
        "rejected shown first" in o for o in pair["orders"]
    )
    assert pair["rationales"] == [j[o]["rationale"] for j in judged for o in ("ij", "ji")]
    point = seen["pointwise"]
    assert point["chosen"] == pointwise["chosen"][0]["content"] and point["sideBySide"]
    assert point["judges"] == [j["judge"] for j in pointwise["rationale_chosen"]]
    aspects = pointwise["rationale_chosen"][0]["aspects"]
    assert point["aspects"] == len(pointwise["rationale_chosen"]) * (len(aspects) + 1)  # header + one row per aspect


# ---------------------------------------------------------------------- lineage: Evol tree, rewrite parent, Magpie sample


def test_lineage_views_render_the_evol_tree_rewrite_parent_and_magpie_sample(tmp_path: Path) -> None:
    folder = run_folder(tmp_path / "lineage", "fake_vllm/evol", "fake_vllm/rewrite", "fake_vllm/magpie")
    records = read_lines(folder / "data.jsonl")
    evol_rid = 1
    evol = records[evol_rid - 1]
    children = sum(
        len(r["l_depth_instructions"]) + len(r["l_breadth_instructions"]) + len(r["l_eliminated_instructions"])
        for r in evol["wizard_llm_querys"]
    )
    rewrite_rid = next(i for i, r in enumerate(records, 1) if "rewrite_type" in r)
    magpie_rid = next(i for i, r in enumerate(records, 1) if "magpie" in r)
    seed = EXAMPLES / "wizard_seed.jsonl"
    index = built_index(folder, input_path=seed)
    with ServerThread(index) as server:

        async def scenario(browser: Browser) -> dict[str, Any]:
            out: dict[str, Any] = {}
            await browser.goto(f"{server.url}#/record/{evol_rid}")
            await browser.until(f"!!document.querySelector('#record-head[data-rid=\"{evol_rid}\"]')")
            await browser.until("!!document.querySelector('.panel[data-type=evol] .evol-node')")
            await browser.screenshot("evol.png")
            out["evol"] = await browser.js(
                """(() => { const p = document.querySelector('.panel[data-type=evol]');
                  const root = p.querySelector('ul.tree > li');
                  return {nodes: p.querySelectorAll('.evol-node').length,
                          root: root.querySelector(':scope > .evol-node .evol-text').textContent,
                          children: root.querySelectorAll(':scope > ul > li').length,
                          eliminated: p.querySelectorAll('.evol-node.state-eliminated').length}; })()"""
            )
            await browser.goto(f"{server.url}#/record/{rewrite_rid}")
            await browser.until(f"!!document.querySelector('#record-head[data-rid=\"{rewrite_rid}\"]')")
            await browser.until("!!document.querySelector('.panel[data-type=rewrite]')")
            await browser.screenshot("rewrite.png")
            out["rewrite"] = await browser.js(
                """(() => { const p = document.querySelector('.panel[data-type=rewrite]');
                  return {title: p.querySelector('h3').textContent, parent: !!p.querySelector('details pre.json'),
                          changed: [...p.querySelectorAll('.change')].map(c => c.dataset.field),
                          marked: p.querySelectorAll('.seg-changed').length,
                          siblings: p.querySelectorAll('.links a').length}; })()"""
            )
            await browser.goto(f"{server.url}#/record/{magpie_rid}")
            await browser.until(f"!!document.querySelector('#record-head[data-rid=\"{magpie_rid}\"]')")
            await browser.until("!!document.querySelector('.panel[data-type=magpie]')")
            out["magpie"] = await browser.js(
                """(() => { const p = document.querySelector('.panel[data-type=magpie]');
                  return {raw: p.querySelector('.magpie-raw').textContent,
                          instruction: p.querySelector('.magpie-instruction').textContent,
                          text: p.innerText}; })()"""
            )
            _assert_clean(browser, server.url)
            return out

        seen = browse(scenario)
    index.close()
    evol_seen = seen["evol"]
    assert evol_seen["nodes"] == 1 + children
    assert evol_seen["root"] == evol["wizard_root"]["instruction"]
    assert evol_seen["eliminated"] == sum(len(r["l_eliminated_instructions"]) for r in evol["wizard_llm_querys"])
    rewrite = records[rewrite_rid - 1]
    parent = next(r for r in read_lines(seed) if r["id"] == rewrite["parent_id"])
    assert rewrite["parent_id"] in seen["rewrite"]["title"] and seen["rewrite"]["parent"]
    assert "input" in seen["rewrite"]["changed"] and parent["input"] != rewrite["input"]
    assert seen["rewrite"]["marked"] > 0
    magpie = records[magpie_rid - 1]
    assert seen["magpie"]["raw"] == magpie["magpie"]["raw"] and seen["magpie"]["instruction"] == magpie["input"]
    assert magpie["task_category"] in seen["magpie"]["text"]
