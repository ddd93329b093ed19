"""How fast ``joyforge view`` opens a run folder of a million records, and how much memory its server holds.

A synthetic run folder is written once (default ``/tmp/joyforge-bench-view``, reused while it has the asked
number of records): records shaped like the example pipelines' real outputs (every kind recorded in
tests/fixtures/golden/fake_vllm: votes, DPO pairs pairwise and pointwise, Magpie samples, joint drafts,
critiques, rewrites, Evol trees, labels), each with its own id, prompt, labels, scores and vote outcome;
1% failures with their raw replies, 0.5% records dropped by a filter (in the ledger), a summary.json.

Then the real command, ``joyforge view FOLDER --port 0``, runs as a child process (its memory is its own):

1. cold: from process start with no index to the first page served (while the index builds), the time
   the table and filters need to be complete (``rows``), and the whole build (``search`` too);
2. warm: a new process on the built index: from process start to the first page, then each page request
   (first page, several filtered pages, a search, a page deep into the table), median of ``--repeat``;
3. the server's memory: resident (VmRSS) after the requests, and its peak (VmHWM) over the build.

Target: first page and filtered page under a second each, index already built.

    python bench/view.py [--records 1000000] [--folder /tmp/joyforge-bench-view] [--repeat 5] [--skip-cold]

Timings move with the machine's other load: the header prints the load average.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "fixtures" / "golden" / "fake_vllm"
KINDS = ("vote", "dpo_pairwise", "dpo", "magpie", "joint", "critique", "rewrite", "evol", "demo")
LABELS = ("药品", "BMI", "孕期孕周", "疾病", "症状", "用法用量", "禁忌", "其他")
TASK_LABELS = (
    "medicalknowledge",
    "pharmacologyknowledge",
    "commonsenseunderstanding",
    "diagnosisability",
    "advicegivingability",
)
WORDS = "river city history budget garden model planet engine poem language python data network energy recipe music market window protein theorem".split()
OUTCOMES = ("majority", "majority", "majority", "no_quorum", "tie")
TARGET_SECONDS = 1.0


# ---------------------------------------------------------------------- the synthetic run folder


def templates() -> dict[str, list[dict[str, Any]]]:
    found = {}
    for kind in KINDS:
        lines = (GOLDEN / kind / "data.jsonl").read_text("utf-8").splitlines()
        found[kind] = [json.loads(line) for line in lines if line.strip()]
    return found


def prompts() -> list[str]:
    seeds = [json.loads(line) for line in (REPO / "examples" / "wizard_seed.jsonl").read_text("utf-8").splitlines()]
    return [s["input"] for s in seeds if s.get("input")] + [s.get("rewrite_query") or s["input"] for s in seeds]


def synthetic(i: int, kind: str, template: dict[str, Any], rng: random.Random, pool: list[str]) -> dict[str, Any]:
    """One record of ``kind``: the template's shape and fields, with this record's own values."""
    record = copy.deepcopy(template)
    source = f"src-{i // 2:07d}" if kind == "dpo_pairwise" else f"src-{i:07d}"
    record["id"] = f"{source}:{i % 2}" if kind == "dpo_pairwise" else source
    meta = record.setdefault("_meta", {})
    meta["source_id"] = source
    text = f"{rng.choice(pool)} {' '.join(rng.choices(WORDS, k=4))} {i}"
    if "input" in record:
        record["input"] = text
    if isinstance(record.get("prompt"), list) and record["prompt"]:
        record["prompt"][-1] = {"role": "user", "content": text}
    if isinstance(record.get("target"), str) and record["target"]:
        record["target"] = " ".join(rng.choices(WORDS, k=rng.randint(6, 40)))
    if "score" in record:
        record["score"] = rng.randint(0, 100)
    if "task_label" in record:
        record["task_label"] = rng.sample(TASK_LABELS, rng.randint(1, len(TASK_LABELS)))
    if isinstance(record.get("vote"), dict):
        outcome = rng.choice(OUTCOMES)
        label = rng.choice(LABELS) if outcome == "majority" else None
        record["vote"].update(outcome=outcome, label=label, agreement=round(rng.random(), 3))
        for ballot in (record.get("votes") or {}).values():
            ballot["label"] = label or rng.choice(LABELS)
    if "label" in record:
        record["label"] = rng.choice(LABELS)
    for side in ("chosen", "rejected"):
        if isinstance(record.get(f"score_{side}"), (int, float)):
            record[f"score_{side}"] = round(rng.uniform(0, 5), 3)
    if "task_category" in record:
        record["task_category"] = rng.choice(("Information seeking", "Math", "Coding & Debugging", "Advice seeking"))
    return record


def write_folder(folder: Path, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    kinds = templates()
    pool = prompts()
    failures_template = [
        json.loads(line)
        for name in ("../dpo", "../dpo_pairwise", "joint")
        for line in (GOLDEN / name / "failures.jsonl").read_text("utf-8").splitlines()
        if line.strip()
    ]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    with (
        open(folder / "data.jsonl", "w", encoding="utf-8") as data,
        open(folder / "failures.jsonl", "w", encoding="utf-8") as failures,
        open(folder / "ledger.jsonl", "w", encoding="utf-8") as ledger,
    ):
        for i in range(count):
            roll = rng.random()
            if roll < 0.01:  # a failure: the input record, the step, the error, the raw reply
                failure = copy.deepcopy(rng.choice(failures_template))
                source = f"src-{i:07d}"
                failure["id"] = failure["source_id"] = source
                failure["record"]["input"] = f"{rng.choice(pool)} {i}"
                failures.write(json.dumps(failure, ensure_ascii=False) + "\n")
                ledger.write(json.dumps({"id": source, "status": "failed"}) + "\n")
                continue
            if roll < 0.015:  # dropped by a filter step: a ledger line only
                ledger.write(json.dumps({"id": f"src-{i:07d}", "status": "filtered"}) + "\n")
                continue
            kind = KINDS[i % len(KINDS)]
            record = synthetic(i, kind, rng.choice(kinds[kind]), rng, pool)
            data.write(json.dumps(record, ensure_ascii=False) + "\n")
            if kind != "dpo_pairwise" or i % 2 == 1:
                ledger.write(json.dumps({"id": record["_meta"]["source_id"], "status": "ok"}) + "\n")
    summary = json.loads((GOLDEN / "vote" / "summary.json").read_text("utf-8"))
    summary["records_in"] = summary["records_out"] = count
    (folder / "summary.json").write_text(json.dumps(summary, indent=2), "utf-8")
    (folder / ".bench-records").write_text(str(count))
    size = (folder / "data.jsonl").stat().st_size
    print(f"wrote {count:,} records ({size / 1e9:.2f} GB) to {folder} in {time.perf_counter() - started:.0f} s")


# ---------------------------------------------------------------------- the server


class Viewer:
    """``joyforge view FOLDER --port 0`` as a child process; the URL from its first line."""

    def __init__(self, folder: Path, *extra: str):
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "joydataforge", "view", str(folder), "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "http://" not in line:
            raise RuntimeError(f"joyforge view did not start: {line!r}")
        self.url = line.split()[2]

    def get(self, path: str, **query: Any) -> tuple[float, Any]:
        params = []
        for key, value in query.items():
            for item in value if isinstance(value, list) else [value]:
                params.append((key, item))
        url = self.url + path.lstrip("/") + ("?" + urllib.parse.urlencode(params) if params else "")
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=600) as response:
            body = json.loads(response.read())
        return time.perf_counter() - started, body

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (the build runs in it)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict[str, float]:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        values = {}
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) / 1024  # KiB -> MiB
        return values

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_built(viewer: Viewer, timeout: float = 3600) -> dict[str, Any]:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        _, info = viewer.get("/api/info")
        if info["progress"]["phase"] in ("done", "failed"):
            return info
        time.sleep(0.5)
    raise TimeoutError("the index did not finish")


# ---------------------------------------------------------------------- measuring


QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("first page", {}),
    ("label=BMI", {"f": "label=BMI"}),
    ("vote.outcome=majority", {"f": "vote.outcome=majority"}),
    ("score>=90", {"f": "score>=90"}),
    ("task_label=diagnosisability (list)", {"f": "task_label=diagnosisability"}),
    ("model=smollm2-judge-greedy", {"f": "model=smollm2-judge-greedy"}),
    ("status=failed", {"f": "status=failed"}),
    ("kind=dpo_pair & score_chosen>=4", {"f": ["kind=dpo_pair", "score_chosen>=4"]}),
    ("label=BMI & score<10 & model=smollm2-hot", {"f": ["label=BMI", "score<10", "model=smollm2-hot"]}),
    ("search 甲硝唑", {"q": "甲硝唑"}),
    ("search 'garden river'", {"q": "garden river"}),
    ("page in the middle of the table", {"offset": "MIDDLE"}),
]


def median_time(viewer: Viewer, repeat: int, **query: Any) -> tuple[float, float, int]:
    """(median seconds of the page alone, of page + total count, rows matched)."""
    pages, counted, total = [], [], 0
    for _ in range(repeat):
        seconds, _ = viewer.get("/api/records", limit=50, count=0, **query)
        pages.append(seconds)
        seconds, body = viewer.get("/api/records", limit=50, **query)
        counted.append(seconds)
        total = body["total"]
    return statistics.median(pages), statistics.median(counted), total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/joyforge-bench-view"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-cold", action="store_true", help="Reuse an index already built (no build timing).")
    args = parser.parse_args()

    print(
        f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}"
    )
    marker = args.folder / ".bench-records"
    if not marker.exists() or marker.read_text() != str(args.records):
        write_folder(args.folder, args.records)
    data_bytes = sum(p.stat().st_size for p in args.folder.glob("*.jsonl"))

    if not args.skip_cold:
        viewer = Viewer(args.folder, "--reindex")
        try:
            while True:  # the first page with records on it, while the index builds
                seconds, body = viewer.get("/api/records", limit=50, count=0)
                if body["rows"]:
                    break
                time.sleep(0.05)
            cold_first = time.perf_counter() - viewer.started
            info = wait_built(viewer)
            progress = info["progress"]
            peak = viewer.memory()
            cpu = viewer.cpu_seconds()
        finally:
            viewer.close()
        if progress["phase"] != "done":
            print(f"index build failed: {progress['error']}")
            return 1
        index_bytes = sum(p.stat().st_size for p in (args.folder / ".joyforge-view").glob("index.sqlite*"))
        print(
            f"cold: first page {cold_first:.2f} s after start ({len(body['rows'])} rows, the index still building); "
            f"table and filters complete in {progress['rows_seconds']:.1f} s, search index in {progress['seconds']:.1f} s "
            f"({progress['rows']:,} rows, {data_bytes / 1e9:.2f} GB of JSONL -> {index_bytes / 1e9:.2f} GB index); "
            f"{cpu:.0f} s of CPU; server peak RSS during the build {peak.get('VmHWM', 0):.0f} MiB"
        )

    viewer = Viewer(args.folder)
    try:
        seconds, body = viewer.get("/api/records", limit=50)
        warm_first = time.perf_counter() - viewer.started
        info = wait_built(viewer, timeout=60)
        print(f"warm: first page {warm_first:.2f} s after process start (index built; {body['total']:,} rows)")
        print(f"{'query':42} {'page s':>8} {'+count s':>9} {'matches':>10}  target < {TARGET_SECONDS:.0f} s")
        worst = 0.0
        for name, query in QUERIES:
            if query.get("offset") == "MIDDLE":
                query = {"offset": info["progress"]["rows"] // 2}
            page, counted, total = median_time(viewer, args.repeat, **query)
            worst = max(worst, page)
            mark = "ok" if page < TARGET_SECONDS else "SLOW"
            print(f"{name:42} {page:8.3f} {counted:9.3f} {total:10,}  {mark}")
        middle = max(1, info["progress"]["rows"] // 2)
        seconds, _ = viewer.get(f"/api/record/{middle}")
        print(f"{f'record page #{middle} (panels, lineage)':42} {seconds:8.3f}")
        memory = viewer.memory()
        print(
            f"server memory: RSS {memory['VmRSS']:.0f} MiB now, peak {memory['VmHWM']:.0f} MiB ({info['progress']['rows']:,} rows)"
        )
        print(
            f"slowest page {worst:.3f} s: {'under' if worst < TARGET_SECONDS else 'OVER'} the {TARGET_SECONDS:.0f} s target"
        )
    finally:
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
