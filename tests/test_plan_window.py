"""Prompts that fill most of a llama.cpp model's context window: the reply is cut where the window ends.

A JSON reply cut short does not parse and is asked again (up to ``json_retries``), each attempt cut the same way,
so such a record costs more calls than the others and writes only as far as the room allows. Without a pilot the
plan's reply length (``max_tokens`` x ``completion.fill``) says whether a reply outgrows the room; with one, the
share of the pilot's measured replies that are longer. The models here are llama.cpp configs whose GGUF does not
exist: their prompts are counted with the stated estimate, and scripted backends answer the pilot and the run.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.fanout import Assumptions
from joydataforge.engine.plan import known_assumptions, make_plan, pilot_positions
from joydataforge.models.config import ModelRegistry
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, write_jsonl
from tests.test_plan import run_metered

WINDOW, BOUND = 230, 50


def registry(tmp_path: Path) -> ModelRegistry:
    body = {
        "backend": "llamacpp",
        "model_path": str(tmp_path / "missing.gguf"),  # no tokenizer: the estimate counts the prompts
        "n_ctx": WINDOW,
        "json_retries": 2,
        "max_retries": 0,
        "params": {"max_tokens": BOUND},
    }
    return ModelRegistry.from_dict({"models": {"tiny": body}}, "test")


def pipeline_of(tmp_path: Path, records: list[dict], kind: str) -> Pipeline:
    write_jsonl(tmp_path / "in.jsonl", records)
    step = {"model": "tiny", "prompt": "answer"} if kind == "generate" else {"model": "tiny", "prompt": "label"}
    if kind == "label":
        step["options"] = {"labels": ["x", "y"]}
    return make_pipeline(tmp_path, [{kind: step}], run={"cache": str(tmp_path / "cache.sqlite")})


SHORT = {"id": "short", "input": "Is it red?"}
NEAR = {"id": "near", "input": "word " * 120}  # the prompt fits, with less room than the reply bound
OVER = {"id": "over", "input": "word " * 400}  # the prompt alone fills the window


def plan_of(tmp_path: Path, records: list[dict], kind: str = "label", **assumed: float):
    assume = Assumptions(known_assumptions(), assumed)
    return asyncio.run(make_plan(pipeline_of(tmp_path, records, kind), registry(tmp_path), assume))


def test_a_json_reply_cut_by_the_window_is_asked_again_and_writes_only_the_room(tmp_path):
    near = plan_of(tmp_path, [NEAR]).lines[0]
    prompt = near.prompt_tokens / near.calls  # every attempt sends the same prompt
    room = WINDOW - prompt
    assert 0 < room < BOUND
    assert near.calls == 3 and near.re_asks == 2  # the first attempt and json_retries re-asks, all cut
    assert near.completion_tokens == pytest.approx(3 * room)

    line = plan_of(tmp_path, [SHORT, NEAR, OVER]).lines[0]
    assert line.calls == pytest.approx(1 + 3 + 1) and line.re_asks == pytest.approx(2)  # OVER fails once
    assert line.completion_tokens == pytest.approx(BOUND + 3 * room)


def test_a_reply_that_fits_the_room_is_not_cut(tmp_path):
    # Replies planned at 40% of max_tokens (20 tokens) fit the room: no re-ask.
    line = plan_of(tmp_path, [NEAR], **{"completion.fill": 0.4}).lines[0]
    assert line.calls == 1 and line.re_asks == 0
    assert line.completion_tokens == pytest.approx(0.4 * BOUND)


def test_a_free_text_reply_is_cut_but_not_asked_again(tmp_path):
    near = plan_of(tmp_path, [NEAR], "generate").lines[0]
    assert near.calls == 1 and near.re_asks == 0
    assert near.completion_tokens == pytest.approx(WINDOW - near.prompt_tokens)


def test_a_pilot_whose_replies_are_short_predicts_no_cut(tmp_path):
    """The pilot's replies (about 8 tokens) fit the room the long prompt leaves: the plan predicts no re-ask for
    it, as the run then makes none."""
    records = [{"id": f"r{i}", "input": f"Is {i} red?"} for i in range(6)]
    chosen = pilot_positions(len(records), 2, seed=0)
    position = next(k for k in range(len(records)) if k not in chosen)
    records[position] = {**NEAR, "id": "near"}  # a record the pilot does not run

    def short(messages, schema):
        return json.dumps({"label": "x", "reason": "r"})

    static = plan_of(tmp_path, records)
    assert static.totals()["re_asks"] == pytest.approx(2)
    piloted = asyncio.run(
        make_plan(
            pipeline_of(tmp_path, records, "label"),
            registry(tmp_path),
            pilot=2,
            backends={"tiny": ScriptedBackend(short)},
        )
    )
    assert piloted.totals()["re_asks"] == 0 and piloted.totals()["calls"] == pytest.approx(6)
    meter = run_metered(pipeline_of(tmp_path, records, "label"), registry(tmp_path), {"tiny": ScriptedBackend(short)})
    assert sum(t.requests for t in meter.totals.values()) == 6
