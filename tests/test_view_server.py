"""The viewer's HTTP side: the API over a real run folder, the guard (Host, origin, JSON only), the page's CSP,
the eval report, and ``joyforge view`` started as a user starts it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from joydataforge.evaluate.embeddings import vectors_from_records
from joydataforge.evaluate.metrics import EvalOptions, evaluate_records
from joydataforge.evaluate.report import write_report
from joydataforge.view.dataset import open_dataset
from joydataforge.view.server import PAGE_CSP, REPORT_CSP, create_app, set_address
from tests.support.view_runs import GOLDEN, built_index, read_lines, run_folder


def eval_report(folder: Path) -> None:
    """A real ``joyforge eval`` report of the folder's records, saved in it as users do (precomputed vectors)."""
    records = read_lines(folder / "data.jsonl")
    for k, record in enumerate(records):
        record["embedding"] = [1.0, float(k), float(k % 2)]
    evaluation = evaluate_records(
        records,
        EvalOptions(text_fields=("input",)),
        vectors=vectors_from_records(records, "embedding"),
        embedder="test",
    )
    write_report(folder / "report.html", evaluation, title="vote eval", source="data.jsonl")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    folder = run_folder(tmp_path / "run", "fake_vllm/vote", "fake_vllm/joint")
    eval_report(folder)
    index = built_index(folder)
    app = create_app(index)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    set_address(app, "127.0.0.1", server.port)
    async with TestClient(server) as test_client:
        yield test_client
    index.close()


async def test_page_and_static_files_forbid_loading_anything_else(client: TestClient) -> None:
    page = await client.get("/")
    assert page.status == 200 and '<script src="/static/app.js">' in await page.text()
    assert page.headers["Content-Security-Policy"] == PAGE_CSP and "default-src 'none'" in PAGE_CSP
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        response = await client.get(f"/static/{name}")
        assert response.status == 200 and response.content_type == kind
        text = await response.text()
        assert "http://" not in text and "https://" not in text  # nothing fetched from elsewhere
    assert (await client.get("/static/../server.py")).status == 404


async def test_info_records_and_record(client: TestClient) -> None:
    info = await (await client.get("/api/info")).json()
    folder = Path(info["path"])
    data, failures = read_lines(folder / "data.jsonl"), read_lines(folder / "failures.jsonl")
    assert info["counts"] == {"kept": len(data), "failed": len(failures), "dropped": 0, "bad": 0}
    assert info["progress"]["phase"] == "done" and info["summary"] and info["reports"] == 1
    assert info["columns"][:2] == ["vote.outcome", "vote.label"]
    page = await (await client.get("/api/records", params=[("f", "vote.outcome=majority"), ("limit", "2")])).json()
    majority = [r for r in data if r.get("vote", {}).get("outcome") == "majority"]
    assert page["total"] == len(majority) and [r["id"] for r in page["rows"]] == [r["id"] for r in majority[:2]]
    assert page["rows"][0]["cells"]["vote.outcome"] == "majority" and page["rows"][0]["input"] == majority[0]["input"]
    bad = await client.get("/api/records", params={"f": "vote.outcom=majority"})
    assert bad.status == 400 and "no field" in (await bad.json())["error"]
    record = await (await client.get("/api/record/1", params={"f": "vote.outcome=majority"})).json()
    assert record["record"] == data[0] and record["reviewable"] and record["previous"] is None
    assert record["next"] == data.index(majority[1]) + 1
    assert [p["type"] for p in record["panels"]][:1] == ["vote"]
    failed = await (await client.get(f"/api/record/{len(data) + 1}")).json()
    assert failed["status"] == "failed" and not failed["reviewable"] and failed["panels"][0]["type"] == "failure"
    assert (await client.get("/api/record/9999")).status == 404
    values = await (await client.get("/api/values", params={"field": "vote.outcome"})).json()
    assert dict(values["values"]) == {
        "majority": len(majority),
        "no_quorum": len([r for r in data if r.get("vote", {}).get("outcome") == "no_quorum"]),
    }
    fields = {f["path"]: f for f in (await (await client.get("/api/fields")).json())["fields"]}
    assert fields["score"]["kind"] == "number" and fields["model"]["kind"] == "list"


async def test_review_is_posted_as_json_from_the_page_only(client: TestClient) -> None:
    url = "/api/review/1"
    state = {"status": "accepted", "note": "ok", "edited": None}
    assert (await client.post(url, data=json.dumps(state))).status == 415  # a form post from any page: refused
    foreign = await client.post(url, json=state, headers={"Origin": "http://evil.example"})
    assert foreign.status == 403
    rebound = await client.get("/api/info", headers={"Host": "evil.example:80"})
    assert rebound.status == 403  # DNS rebinding: another name for 127.0.0.1
    wrong = await client.post(url, json={"status": "maybe"})
    assert wrong.status == 400 and "status is one of" in (await wrong.json())["error"]
    origin = f"http://127.0.0.1:{client.server.port}"
    saved = await client.post(url, json=state, headers={"Origin": origin})
    assert saved.status == 200
    body = await saved.json()
    assert body["review"]["status"] == "accepted" and body["counts"]["accepted"] == 1
    info = await (await client.get("/api/info")).json()
    failed = await client.post(f"/api/review/{info['counts']['kept'] + 1}", json=state)
    assert failed.status == 400 and "only kept records" in (await failed.json())["error"]
    listed = await (await client.get("/api/records", params={"f": "review=accepted"})).json()
    assert [r["rid"] for r in listed["rows"]] == [1] and listed["rows"][0]["review"]["note"] == "ok"
    cleared = await (await client.post(url, json={"status": None, "note": "", "edited": None})).json()
    assert cleared["review"] is None
    assert (await (await client.get("/api/records", params={"f": "review=unreviewed"})).json())["total"] == info[
        "counts"
    ]["kept"] + info["counts"]["failed"]
    lines = read_lines(Path(info["review_file"]))
    assert [line["status"] for line in lines] == ["accepted", None]


async def test_summary_and_eval_report(client: TestClient) -> None:
    summary = (await (await client.get("/api/summary")).json())["summary"]
    assert summary["records_out"] == 5
    reports = (await (await client.get("/api/eval")).json())["reports"]
    assert [r["name"] for r in reports] == ["report.html"] and reports[0]["html"]
    pairs = dict(reports[0]["pairs"])
    kept = sum(len(read_lines(GOLDEN / f"fake_vllm/{name}/data.jsonl")) for name in ("vote", "joint"))
    assert pairs["records"] == str(kept) and reports[0]["metrics"]["records"] == kept  # the kept vote + joint records
    page = await client.get("/eval/0")
    assert page.status == 200 and page.headers["Content-Security-Policy"] == REPORT_CSP
    assert 'id="metrics-data"' in await page.text()
    assert (await client.get("/eval/5")).status == 404


def test_joyforge_view_starts_serves_and_refuses_what_it_cannot_show(tmp_path: Path) -> None:
    folder = run_folder(tmp_path / "run", "fake_vllm/dpo")
    process = subprocess.Popen(
        [sys.executable, "-m", "joydataforge", "view", str(folder), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "http://127.0.0.1:" not in line:
            process.kill()
            pytest.fail(f"joyforge view did not start: {line!r}\n{process.stderr.read() if process.stderr else ''}")
        url = line.split()[2]
        for _ in range(600):  # the index builds in the background: wait for it (a second at most here)
            with urllib.request.urlopen(url + "api/info", timeout=30) as response:
                if json.loads(response.read())["progress"]["phase"] == "done":
                    break
            time.sleep(0.05)
        with urllib.request.urlopen(url + "api/records", timeout=30) as response:
            assert json.loads(response.read())["rows"][0]["id"] == read_lines(folder / "data.jsonl")[0]["id"]
    finally:
        process.terminate()
        process.wait(10)
    assert (folder / ".joyforge-view" / "index.sqlite").exists()
    missing = subprocess.run(
        [sys.executable, "-m", "joydataforge", "view", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "no such file" in missing.stderr
    assert open_dataset(folder).run
