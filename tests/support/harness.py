"""The one way tests run steps and pipelines against scripted models.

Tests of every method need the same few things: a model registry whose models never reach a network, a
:class:`StepContext` whose gateway answers from test backends, a step run on one record, a pipeline run on a
few records with its outputs read back. Written once here so a change to the engine changes one file of tests.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.local import LocalExecutor
from joydataforge.engine.step import Record, Step, StepContext
from joydataforge.engine.summary import RunSummary
from joydataforge.models.backends.base import Backend
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.prompts.renderer import PromptLibrary

CLOSED_PORT_URL = "http://127.0.0.1:1/v1"  # never reached: test backends answer instead


def registry_of(names: Iterable[str], **fields: Any) -> ModelRegistry:
    """Models that answer through test backends: no retries to wait out, one JSON retry."""
    body = {
        "backend": "openai",
        "base_url": CLOSED_PORT_URL,
        "max_concurrency": 4,
        "max_retries": 0,
        "json_retries": 1,
        **fields,
    }
    return ModelRegistry.from_dict({"models": {name: dict(body) for name in names}}, "test")


def step_context(
    backends: Mapping[str, Backend],
    *,
    registry: ModelRegistry | None = None,
    seed: int = 0,
    prompts: PromptLibrary | None = None,
) -> StepContext:
    registry = registry or registry_of(backends)
    return StepContext(Gateway(registry, backends=dict(backends)), prompts or PromptLibrary(), seed=seed)


def run_step(step: Step, record: Record, backends: Mapping[str, Backend], **context: Any) -> Any:
    """What ``step`` makes of one record, after the checks a run makes before its first record."""
    ctx = step_context(backends, **context)
    step.check(ctx)
    return asyncio.run(step.run(record, ctx))


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()] if path.exists() else []


@dataclass
class RunResult:
    summary: RunSummary
    data: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    out: Path


def make_pipeline(tmp_path: Path, steps: list[Any], **sections: Mapping[str, Any]) -> Pipeline:
    """A pipeline over ``tmp_path/in.jsonl`` writing to ``tmp_path/out``, no cache, no progress bar."""
    data: dict[str, Any] = {
        "input": {"path": str(tmp_path / "in.jsonl")},
        "steps": steps,
        "output": {"dir": str(tmp_path / "out")},
        "run": {"cache": None, "progress": False, "concurrency": 8},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return Pipeline.from_dict(data)


def run_pipeline(
    pipeline: Pipeline, backends: Mapping[str, Backend], *, registry: ModelRegistry | None = None, **executor: Any
) -> RunResult:
    registry = registry or registry_of(backends)
    gateway = Gateway(registry, backends=dict(backends))
    summary = LocalExecutor(pipeline, registry=registry, gateway=gateway, **executor).run_sync()
    out = pipeline.resolve(pipeline.output.dir)
    assert out is not None
    return RunResult(summary, read_jsonl(out / "data.jsonl"), read_jsonl(out / "failures.jsonl"), out)


def run_records(
    tmp_path: Path,
    records: Iterable[Mapping[str, Any]],
    steps: list[Any],
    backends: Mapping[str, Backend],
    **sections: Mapping[str, Any],
) -> RunResult:
    """Write ``records`` as the input, run ``steps`` over them, read the outputs back."""
    write_jsonl(tmp_path / "in.jsonl", records)
    return run_pipeline(make_pipeline(tmp_path, steps, **sections), backends)


def assert_run_finished(result: Any, out: Path) -> None:
    """A ``joyforge run`` on a real model ran to its end: its exit status is its summary's verdict, 0 (all done),
    3 (some records failed) or 4 (none succeeded: a 135M model's replies may all fail on a one-record run). What
    a test expects of the records it asserts itself."""
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    assert result.exit_code == summary["exit_status"] and result.exit_code in (0, 3, 4), result.output


def joyforge(monkeypatch, capsys, *argv: str) -> tuple[int, list[str]]:
    """``joyforge ARGV`` through the real entry point, in this process: (exit status, stderr lines)."""
    from joydataforge.cli import main

    monkeypatch.setattr(sys, "argv", ["joyforge", *argv])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.strip().splitlines()
