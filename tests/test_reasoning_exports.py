"""Exports of reasoning traces (issue 17): SFT and preference data with or without the trace, in the shapes
LLaMA-Factory (``<think>`` blocks in the assistant turn) and TRL (``reasoning_content`` on the assistant message)
read; every file is loaded back with ``datasets``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from joydataforge.cli import cli
from joydataforge.io.exports import export_file
from tests.support.harness import write_jsonl

datasets = pytest.importorskip("datasets")

SFT = [
    {"id": "a", "input": "What is 2+2?", "target": "4", "target_reasoning": "Two and two make four."},
    {"id": "b", "input": "Capital of France?", "target": "Paris"},  # a model that did not think
]
PAIRS = [
    {
        "prompt": "Pick a prime",
        "input": "Pick a prime",
        "chosen": "7",
        "rejected": "9",
        "chosen_reasoning": "7 has no divisors but 1 and 7.",
        "rejected_reasoning": "9 looked odd enough.",
    }
]


def load(path: Path) -> list[dict]:
    return list(datasets.load_dataset("json", data_files=str(path), split="train"))


@pytest.mark.parametrize("fmt", ["sharegpt", "openai", "alpaca", "trl-sft"])
@pytest.mark.parametrize("reasoning", [False, True])
def test_sft_exports_load_with_datasets(tmp_path: Path, fmt: str, reasoning: bool) -> None:
    src = write_jsonl(tmp_path / "data.jsonl", SFT)
    dst = tmp_path / f"{fmt}.jsonl"
    report = export_file(src, dst, fmt, reasoning=reasoning, keep_fields=("id",))
    assert report.written == 2
    rows = {row["id"]: row for row in load(dst)}
    if fmt == "sharegpt":
        answer = rows["a"]["conversations"][-1]["value"]
    elif fmt == "alpaca":
        answer = rows["a"]["output"]
    else:
        answer = rows["a"]["messages"][-1]["content"]
    if fmt == "trl-sft":
        assert answer == "4"  # TRL: the trace rides beside the answer, never inside it
        trace = rows["a"]["messages"][-1].get("reasoning_content")
        assert trace == ("Two and two make four." if reasoning else None)
        assert rows["b"]["messages"][-1].get("reasoning_content") is None
    elif reasoning:
        assert answer == "<think>\nTwo and two make four.\n</think>\n\n4"  # LLaMA-Factory's reasoning templates
    else:
        assert answer == "4"
    text = json.dumps(rows["b"], ensure_ascii=False)
    assert "<think>" not in text  # no trace, no empty block


@pytest.mark.parametrize("reasoning", [False, True])
def test_trl_preference_export_carries_each_sides_trace(tmp_path: Path, reasoning: bool) -> None:
    src = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    dst = tmp_path / "trl.jsonl"
    assert export_file(src, dst, "trl", reasoning=reasoning).written == 1
    (row,) = load(dst)
    assert row["chosen"][0]["content"] == "7" and row["rejected"][0]["content"] == "9"
    if reasoning:
        assert row["chosen"][0]["reasoning_content"] == "7 has no divisors but 1 and 7."
        assert row["rejected"][0]["reasoning_content"] == "9 looked odd enough."
    else:
        assert "reasoning_content" not in row["chosen"][0] or row["chosen"][0]["reasoning_content"] is None


def test_cli_flag(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "data.jsonl", SFT)
    dst = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["export", str(src), str(dst), "--format", "sharegpt", "--reasoning"])
    assert result.exit_code == 0, result.output
    first = json.loads(dst.read_text("utf-8").splitlines()[0])
    assert first["conversations"][-1]["value"].startswith("<think>\nTwo and two")
