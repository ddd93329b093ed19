"""``minhash_dedup`` with ``reference:``: records already in earlier outputs are dropped (or tagged) and counted.

The reference is read by :mod:`joydataforge.io.reference`, the same code as ``joyforge dedup --reference``:
files or folders (JSONL, Parquet), an earlier run's output folder giving only its kept records. A run that is
killed and resumed ends with the output of an uninterrupted run; a reference that changed in between refuses
to resume.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from joydataforge.cli.evaluate import dedup_command
from joydataforge.config.pipeline import Pipeline
from joydataforge.engine import run_state
from joydataforge.engine.run_state import CRASH_ENV
from joydataforge.errors import ConfigError
from joydataforge.io import reference as io_reference
from joydataforge.io.reference import read_reference, reference_files
from joydataforge.io.writers import jsonl_to_parquet
from joydataforge.methods.dedup.step import MinHashDedupStep
from tests.support.harness import make_pipeline, read_jsonl, run_pipeline, run_records, step_context, write_jsonl

REPO = Path(__file__).resolve().parent.parent

TOPICS = [
    "how should a pregnant woman with a cold treat a sore throat without taking risky medicine at home",
    "write a python function that reads a large csv file in chunks and computes the mean of every column",
    "explain the difference between a process and a thread with an example from a web server",
    "请解释一下为什么孕妇在怀孕早期不能随便吃布洛芬，有哪些更安全的退烧方法",
    "give me a three day travel plan for kyoto in autumn with temples, gardens and local food",
    "宝宝发烧三十八度五，精神还可以，晚上需要马上去医院吗，还是先在家观察",
]


def earlier_records() -> list[dict]:
    return [{"id": f"old-{i}", "input": text} for i, text in enumerate(TOPICS[:3])]


def new_records() -> list[dict]:
    return [
        {"id": "new-0", "input": TOPICS[0].upper() + "?"},  # a copy of old-0, other case and punctuation
        {"id": "new-1", "input": TOPICS[3]},
        {"id": "new-2", "input": TOPICS[1].replace("mean", "median")},  # one word changed from old-1
        {"id": "new-3", "input": TOPICS[4]},
        {"id": "new-4", "input": TOPICS[3] + "。"},  # a copy of new-1: a duplicate within the run
        {"id": "new-5", "input": TOPICS[5]},
    ]


def dedup(**settings) -> dict:
    return {"minhash_dedup": {"threshold": 0.7, **settings}}


def test_reference_file_drops_and_counts_its_duplicates(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "earlier.jsonl", earlier_records())
    result = run_records(tmp_path, new_records(), [dedup(reference=str(tmp_path / "earlier.jsonl"))], {})
    assert [r["id"] for r in result.data] == ["new-1", "new-3", "new-5"]
    counters = result.summary.steps["minhash_dedup"]
    assert counters["reference_records"] == 3
    assert counters["reference_duplicates"] == 2  # new-0 and new-2; new-4 duplicates new-1 of this run
    assert counters["removed"] == 3 and counters["kept"] == 3
    assert result.summary.filtered == 3


def test_reference_with_policy_tag_names_the_reference_record(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "earlier.jsonl", earlier_records())
    result = run_records(tmp_path, new_records(), [dedup(reference=str(tmp_path / "earlier.jsonl"), policy="tag")], {})
    tags = {r["id"]: r["duplicate_of"] for r in result.data}
    assert tags == {"new-0": "old-0", "new-1": None, "new-2": "old-1", "new-3": None, "new-4": "new-1", "new-5": None}
    assert result.summary.steps["minhash_dedup"]["reference_duplicates"] == 2
    assert not any(r["id"].startswith("old-") for r in result.data)  # reference records are never output


def test_reference_paths_are_relative_to_the_pipeline_file(tmp_path: Path) -> None:
    (tmp_path / "project" / "old").mkdir(parents=True)
    write_jsonl(tmp_path / "project" / "old" / "part1.jsonl", earlier_records()[:1])
    jsonl_to_parquet(
        write_jsonl(tmp_path / "old2.jsonl", earlier_records()[1:]), tmp_path / "project" / "old" / "part2.parquet"
    )
    write_jsonl(tmp_path / "project" / "in.jsonl", new_records())
    (tmp_path / "project" / "pipeline.yaml").write_text(
        "input: {path: in.jsonl}\n"
        "steps:\n  - minhash_dedup: {threshold: 0.7, reference: old}\n"
        "output: {dir: out}\nrun: {cache: null, progress: false}\n",
        "utf-8",
    )
    result = run_pipeline(Pipeline.from_yaml(tmp_path / "project" / "pipeline.yaml"), {})
    assert [r["id"] for r in result.data] == ["new-1", "new-3", "new-5"]  # JSONL and Parquet both read
    assert result.summary.steps["minhash_dedup"]["reference_records"] == 3


def test_an_earlier_run_folder_gives_only_its_kept_records(tmp_path: Path) -> None:
    first = tmp_path / "first"
    write_jsonl(first / "in.jsonl", earlier_records() + [{"id": "old-bad", "input": TOPICS[5]}])
    pipeline = make_pipeline(first, [dedup()], output={"formats": ["jsonl", "parquet"]})
    run_pipeline(pipeline, {})
    # a failed record of the earlier run is not part of its dataset
    write_jsonl(first / "out" / "failures.jsonl", [{"id": "failed-0", "input": TOPICS[4]}])
    files = reference_files(first / "out")
    assert [f.name for f in files] == ["data.jsonl"]  # not data.parquet again, not ledger/run/summary/failures
    # a folder holding a plain file (first/in.jsonl) and a run folder (first/out: its data.jsonl only)
    records, bad = read_reference(tmp_path)
    assert bad == [] and sorted(r["id"] for r in records) == sorted(2 * ["old-0", "old-1", "old-2", "old-bad"])
    second = tmp_path / "second"
    result = run_records(second, new_records(), [dedup(reference=[str(first / "out")])], {})
    assert [r["id"] for r in result.data] == ["new-1", "new-3"]  # new-5 duplicates old-bad, kept there
    assert result.summary.steps["minhash_dedup"]["reference_records"] == 4


def test_run_folder_names_match_the_engine() -> None:
    assert io_reference.RUN_FOLDER_MARKERS == (run_state.RUN_INFO, run_state.LEDGER)
    assert io_reference.RUN_DATA_FILES[0] == run_state.DATA


def test_a_missing_reference_stops_before_any_record_in_one_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", new_records())
    pipeline = make_pipeline(tmp_path, [dedup(reference="nowhere/earlier.jsonl")])
    with pytest.raises(ConfigError) as caught:
        run_pipeline(pipeline, {})
    message = str(caught.value)
    assert "\n" not in message and "step 'minhash_dedup': reference:" in message
    assert "nowhere/earlier.jsonl: no such file or folder" in message
    assert not (tmp_path / "out" / "ledger.jsonl").exists()


def test_a_bad_reference_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "earlier.jsonl").write_text('{"id": "a", "input": "x"}\n{"id": broken\n', "utf-8")
    step = MinHashDedupStep(reference=str(tmp_path / "earlier.jsonl"))
    with pytest.raises(ConfigError, match=r"earlier\.jsonl:2"):
        step.check(step_context({}))


def test_reference_setting_errors() -> None:
    with pytest.raises(ConfigError, match="reference: must name at least one file or folder"):
        MinHashDedupStep(reference=[])
    with pytest.raises(ConfigError, match="reference"):
        MinHashDedupStep(reference=3)
    assert MinHashDedupStep(reference=Path("a.jsonl")).config.reference == ["a.jsonl"]


def test_cli_dedup_reads_the_same_references(tmp_path: Path) -> None:
    """``joyforge dedup --reference`` takes files and run folders, repeated, read by the same code."""
    write_jsonl(tmp_path / "earlier.jsonl", earlier_records()[:1])
    first = tmp_path / "first"
    write_jsonl(first / "in.jsonl", earlier_records()[1:])
    run_pipeline(make_pipeline(first, [dedup()]), {})
    write_jsonl(tmp_path / "new.jsonl", new_records())
    out = tmp_path / "clean.jsonl"
    result = CliRunner().invoke(
        dedup_command,
        [
            str(tmp_path / "new.jsonl"),
            "-o",
            str(out),
            "--threshold",
            "0.7",
            "--reference",
            str(tmp_path / "earlier.jsonl"),
            "--reference",
            str(first / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_jsonl(out)] == ["new-1", "new-3", "new-5"]
    missing = CliRunner().invoke(dedup_command, [str(tmp_path / "new.jsonl"), "-o", str(out), "--reference", "nope"])
    assert missing.exit_code == 2 and "--reference: nope: no such file or folder" in missing.output


# --- resume ------------------------------------------------------------------------------------------


def _many(n: int) -> list[dict]:
    """Records where every third one repeats an earlier record or a reference record."""
    out = []
    for i in range(n):
        if i % 3 == 2:
            source = TOPICS[i % len(TOPICS)] if i % 2 else out[i - 2]["input"]
            out.append({"id": f"r{i}", "input": source.upper()})
        else:
            out.append({"id": f"r{i}", "input": f"record number {i} talks about {i * 7919 % 1000} apples and pears"})
    return out


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _joyforge_run(work: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "joydataforge", "run", str(work / "pipeline.yaml"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(**extra),
        cwd=work,
    )


def _project(work: Path, records: list[dict], reference: list[dict]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "in.jsonl", records)
    write_jsonl(work / "earlier.jsonl", reference)
    (work / "pipeline.yaml").write_text(
        "input: {path: in.jsonl}\n"
        "steps:\n  - minhash_dedup: {threshold: 0.7, policy: tag, reference: earlier.jsonl}\n"
        "output: {dir: out}\nrun: {cache: null, concurrency: 2}\n",
        "utf-8",
    )


def test_killed_and_resumed_run_gives_the_uninterrupted_output(tmp_path: Path) -> None:
    records = _many(300)
    reference = [{"id": f"old-{i}", "input": text} for i, text in enumerate(TOPICS)]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for work in (whole, killed):
        _project(work, records, reference)
    assert _joyforge_run(whole).returncode == 0
    expected = read_jsonl(whole / "out" / "data.jsonl")
    assert sum(1 for r in expected if str(r["duplicate_of"]).startswith("old-")) >= 30

    crashed = _joyforge_run(killed, **{CRASH_ENV: "ledger-written:2"})
    assert crashed.returncode == -9, crashed.stderr  # SIGKILL after the second batch's ledger lines
    partial = read_jsonl(killed / "out" / "data.jsonl")
    assert 0 < len(partial) < len(records)
    resumed = _joyforge_run(killed)
    assert resumed.returncode == 0, resumed.stderr
    assert read_jsonl(killed / "out" / "data.jsonl") == expected

    # the reference changed since: the folder's results would mean something else, so it refuses
    write_jsonl(killed / "earlier.jsonl", reference[:2])
    refused = _joyforge_run(killed)
    assert refused.returncode == 2 and "different pipeline" in refused.stderr, refused.stderr


def test_reference_content_is_part_of_the_fingerprint(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", earlier_records())
    write_jsonl(tmp_path / "b.jsonl", earlier_records()[:2])
    digests = []
    for name in ("a.jsonl", "a.jsonl", "b.jsonl"):
        step = MinHashDedupStep(reference=str(tmp_path / name))
        assert "reference_content" not in step.settings()
        step.check(step_context({}))
        digests.append(step.settings()["reference_content"])
    assert digests[0] == digests[1] != digests[2]


async def test_python_api_reference_and_setting_add_up(tmp_path: Path) -> None:
    """Records handed to add_reference and the `reference:` files are both indexed, each read once."""
    write_jsonl(tmp_path / "earlier.jsonl", earlier_records()[:1])
    step = MinHashDedupStep(threshold=0.7, reference=str(tmp_path / "earlier.jsonl"))
    assert step.add_reference(earlier_records()[1:2]) == 1
    ctx = step_context({})
    step.check(ctx)
    step.check(ctx)  # a second check (validate, then run) does not index the files twice
    assert step.counters["reference_records"] == 2
    kept = [await step.run(record, ctx) for record in new_records()]
    assert [r["id"] for r in kept if r is not None] == ["new-1", "new-3", "new-5"]
