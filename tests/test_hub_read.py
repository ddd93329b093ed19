"""``hf://datasets/OWNER/NAME[@REV][/PATH]`` as an input path: the readers stream it from a stand-in of the Hub."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from joydataforge.cli.evaluate import dedup_command, eval_command
from joydataforge.errors import InputError
from joydataforge.io.readers import count_records, input_files, iter_records
from tests.hub_standin.fixtures import *  # noqa: F403  (hub_standin, hub_env)
from tests.hub_standin.fixtures import HubEnv
from tests.support.harness import read_jsonl


@pytest.fixture
def repo(tmp_path: Path, hub_env: HubEnv) -> str:
    """``me/inputs`` on the stand-in: JSONL (with a blank and a bad line), CSV, Parquet in row groups, YAML, a README."""
    from huggingface_hub import HfApi

    folder = tmp_path / "repo"
    (folder / "raw").mkdir(parents=True)
    (folder / "data").mkdir()
    (folder / "raw" / "chat.jsonl").write_text(
        '{"input": "你好"}\n\n{"input": "two"}\nnot json\n{"input": "four"}\n', "utf-8"
    )
    (folder / "raw" / "table.csv").write_text('input,n\nhello,1\n"multi\nline",2\n', "utf-8")
    (folder / "raw" / ".hidden.jsonl").write_text('{"input": "never read"}\n', "utf-8")
    rows = pa.table({"input": [f"row {i}" for i in range(2500)], "n": list(range(2500))})
    pq.write_table(rows, folder / "data" / "train-00000-of-00001.parquet", row_group_size=1000)
    (folder / "topics.yaml").write_text("topics:\n  - 用药\n  - topic: 问诊\n", "utf-8")
    (folder / "README.md").write_text("# inputs\n", "utf-8")
    api = HfApi()
    api.create_repo("me/inputs", repo_type="dataset")
    api.upload_folder(repo_id="me/inputs", repo_type="dataset", folder_path=str(folder))
    return "hf://datasets/me/inputs"


def records(path: str, **window: int) -> list[tuple[str, object]]:
    return [
        (str(item.location), item.record if item.error is None else str(item.error))
        for item in iter_records(path, **window)
    ]


def test_a_jsonl_file_streams_with_its_lines(repo: str, hub_env: HubEnv) -> None:
    url = f"{repo}/raw/chat.jsonl"
    assert records(url) == [
        (f"{url}:1", {"input": "你好"}),
        (f"{url}:3", {"input": "two"}),
        (f"{url}:4", f"{url}:4: not valid JSON: Expecting value at column 1"),
        (f"{url}:5", {"input": "four"}),
    ]
    assert records(url, start=3, limit=1) == [(f"{url}:5", {"input": "four"})]  # bad lines count as items
    reads = [r for r in hub_env.hub.requests("GET", "/resolve/") if r.path.endswith("chat.jsonl")]
    assert reads and all(r.range is None for r in reads)  # one plain GET per pass: streamed, not by ranges
    assert count_records(url) is None  # counting would read the whole file over the network


def test_parquet_reads_by_ranges_and_skips_row_groups(repo: str, hub_env: HubEnv) -> None:
    url = f"{repo}/data/train-00000-of-00001.parquet"
    assert count_records(url) == 2500
    got = records(url, start=2100, limit=2)
    assert got == [(f"{url}:2101", {"input": "row 2100", "n": 2100}), (f"{url}:2102", {"input": "row 2101", "n": 2101})]
    reads = [r for r in hub_env.hub.requests("GET", "/resolve/") if r.path.endswith(".parquet")]
    assert reads and all(r.range for r in reads)


def test_a_folder_a_glob_the_whole_repo_and_a_revision(repo: str, hub_env: HubEnv) -> None:
    assert [str(f) for f in input_files(repo)] == [
        f"{repo}/data/train-00000-of-00001.parquet",
        f"{repo}/raw/chat.jsonl",
        f"{repo}/raw/table.csv",
        f"{repo}/topics.yaml",
    ]
    assert [str(f) for f in input_files(f"{repo}/raw")] == [f"{repo}/raw/chat.jsonl", f"{repo}/raw/table.csv"]
    assert [str(f) for f in input_files(f"{repo}/raw/*.csv")] == [f"{repo}/raw/table.csv"]
    assert records(f"{repo}/raw/table.csv") == [
        (f"{repo}/raw/table.csv:2", {"input": "hello", "n": "1"}),
        (f"{repo}/raw/table.csv:3", {"input": "multi\nline", "n": "2"}),
    ]
    topics = records(f"{repo}/topics.yaml")
    assert [record["topic"] for _, record in topics] == ["用药", "问诊"]  # type: ignore[index]

    first = hub_env.hub.repos[("dataset", "me/inputs")].head.oid
    from huggingface_hub import HfApi

    HfApi().delete_file("raw/table.csv", repo_id="me/inputs", repo_type="dataset")
    pinned = f"hf://datasets/me/inputs@{first}/raw"
    assert [str(f) for f in input_files(pinned)] == [f"{pinned}/chat.jsonl", f"{pinned}/table.csv"]
    assert len(records(f"{pinned}/table.csv")) == 2
    assert [str(f) for f in input_files(f"{repo}/raw")] == [f"{repo}/raw/chat.jsonl"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("hf://datasets/me/nothing", "no such dataset on the Hub, or a private one: set HF_TOKEN"),
        ("hf://datasets/me/inputs/raw/missing.jsonl", "no such file or folder in the dataset"),
        ("hf://datasets/me/inputs@v9", "no such revision (branch, tag or commit) in the dataset"),
        ("hf://datasets/me/inputs/README.md", "unsupported file type '.md'"),
        ("hf://datasets/me/inputs/raw/*.xlsx", "no input files there"),
        ("hf://datasets/me", "not a Hub path"),
    ],
)
def test_what_is_not_there_is_one_line(repo: str, path: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        input_files(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_eval_and_dedup_read_hub_paths(repo: str, tmp_path: Path) -> None:
    url = f"{repo}/data/train-00000-of-00001.parquet"
    result = CliRunner().invoke(eval_command, [url, "--embedder", "none"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["data"] == url and metrics["records"] == 2500

    out = tmp_path / "kept.jsonl"
    result = CliRunner().invoke(
        dedup_command, [f"{repo}/raw/chat.jsonl", "-o", str(out), "--skip-bad"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert [r["input"] for r in read_jsonl(out)] == ["你好", "two", "four"]

    result = CliRunner().invoke(eval_command, ["hf://datasets/me/nothing", "--embedder", "none"])
    assert result.exit_code == 2 and "DATA: hf://datasets/me/nothing: no such dataset on the Hub" in result.output


def test_a_pipeline_reads_a_hub_input(repo: str, tmp_path: Path) -> None:
    """``input.path: hf://...`` through the engine: a Hub path is not joined to the pipeline's folder."""
    from joydataforge.io.hub_files import HubPath
    from tests.scripted_backend import ScriptedBackend
    from tests.support.harness import make_pipeline, run_pipeline

    steps = [{"generate": {"model": "m", "prompt": "en/answer", "output_field": "target"}}]
    pipeline = make_pipeline(tmp_path, steps, input={"path": f"{repo}/data/*.parquet", "start": 1000, "limit": 2})
    result = run_pipeline(pipeline, {"m": ScriptedBackend()})
    assert [(r["input"], r["target"]) for r in result.data] == [
        ("row 1000", "answer to: row 1000"),
        ("row 1001", "answer to: row 1001"),
    ]
    assert [r["_meta"]["from"] for r in result.data] == [
        "train-00000-of-00001.parquet:1001",
        "train-00000-of-00001.parquet:1002",
    ]
    assert HubPath(f"{repo}/data").exists() and not HubPath(f"{repo}/nothing").exists()
