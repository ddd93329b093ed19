"""A run killed with SIGKILL mid-way, then re-run: every record comes out exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.mock_openai.server import spawn_mock_server


def test_sigkill_then_resume_gives_every_record_once(tmp_path: Path):
    server = spawn_mock_server(latency=0.02, hold_after=60)  # the run cannot end before the kill
    try:
        n = 400
        (tmp_path / "in.jsonl").write_text(
            "".join(json.dumps({"id": f"r{i}", "input": f"question {i}"}) + "\n" for i in range(n)), "utf-8"
        )
        (tmp_path / "models.yaml").write_text(
            f"models:\n  mock:\n    backend: openai\n    model: mock\n    base_url: {server.url}\n"
            "    max_concurrency: 8\n",
            "utf-8",
        )
        (tmp_path / "pipeline.yaml").write_text(
            "input: {path: in.jsonl}\nmodels: models.yaml\n"
            "steps:\n  - generate: {model: mock, prompt: en/answer}\n"
            "output: {dir: out}\nrun: {concurrency: 8, cache: null}\n",
            "utf-8",
        )
        command = [sys.executable, "-m", "joydataforge", "run", str(tmp_path / "pipeline.yaml"), "--no-progress"]
        data = tmp_path / "out" / "data.jsonl"
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until part of the output exists, then kill hard
            if data.exists() and data.stat().st_size > 0 and len(data.read_bytes().splitlines()) >= 40:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        first = len(data.read_bytes().splitlines())
        assert 40 <= first <= 60, "the kill must land mid-run for this test to mean anything"
        server.configure(hold_after=-1)
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        ids = [json.loads(line)["id"] for line in data.read_text("utf-8").splitlines()]
        assert sorted(ids) == sorted(f"r{i}" for i in range(n))
        assert len(ids) == len(set(ids))
        assert ids == [f"r{i}" for i in range(n)]  # input order survives the crash too
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["skipped"] > 0 and summary["records_out"] + summary["skipped"] >= n
    finally:
        server.close()
