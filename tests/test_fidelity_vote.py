"""Issue 14, points 3 and 4: vote-then-cascade writes what the original JoyDataForge wrote.

The original's ``vote_and_pipeline`` output (``tests/fixtures/original/cdss_vote_post_labelling.jsonl``, a copy
of seed-data's ``results/cdss_datas_with_votes_post_processing``): three models vote on each record; a record
whose vote is one of the listed labels goes to a stronger model, whose ``label``/``reason`` become final; the
others get ``label: ""``, ``reason: ""``. Every voter leaves ``<model>_label``, ``_reason``, ``_scores``
(``[]``) and ``_res`` (``[]``); the vote leaves ``label_vote`` and ``reason_vote: "voted"``.

Here the same three voters and the stronger model answer what they answered then (scripted from the
original's own fields), our ``vote`` + ``cascade`` run with ``seed_fields: true``, and every one of those
fields must come out equal, record by record. Then ``gate: all``: every record goes to the stronger model,
which is what the original did when its list of labels was empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, registry_of, run_pipeline, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "original" / "cdss_vote_post_labelling.jsonl"
SHARED = ROOT.parent / "shared" / "seed-data" / "results" / "cdss_datas_with_votes_post_processing"
VOTERS = ["anthropic.claude-3-5-sonnet-20241022-v2:0", "gpt-4o-mini", "glm-4-flash"]
STRONG = "gpt-4o"
ORIGINAL = [json.loads(line) for line in FIXTURE.read_text("utf-8").splitlines()]
SEED_SUFFIXES = ("_label", "_reason", "_scores", "_res")
SEED_FIELDS = ["label", "reason", "label_vote", "reason_vote"]


def original_input(record: dict) -> dict:
    """The record as it was before the original's vote: its own fields, none of the vote's."""
    return {
        k: v
        for k, v in record.items()
        if k not in SEED_FIELDS and not any(k == f"{m}{s}" for m in VOTERS for s in SEED_SUFFIXES)
    }


def by_query(messages) -> dict:
    """The original record whose query the rendered prompt ends with."""
    turn = messages[-1]["content"].rsplit("用户当前这句话：", 1)[1].strip()  # the last one: after the examples
    matches = [r for r in ORIGINAL if r["input"].strip() == turn]
    assert len(matches) == 1, turn
    return matches[0]


def voter(name: str) -> ScriptedBackend:
    """Answers what voter ``name`` answered in the original run."""
    return ScriptedBackend(
        lambda messages, schema: json.dumps(
            {"label": by_query(messages)[f"{name}_label"], "reason": by_query(messages)[f"{name}_reason"]},
            ensure_ascii=False,
        )
    )


def strong_model() -> ScriptedBackend:
    """Answers the original's post-label (the stronger model's label and reason) of each record."""

    def reply(messages, schema):
        record = by_query(messages)
        return json.dumps({"label": record["label"] or "其他", "reason": record["reason"]}, ensure_ascii=False)

    return ScriptedBackend(reply)


def run_original_pipeline(tmp_path: Path, cascade: dict) -> tuple[list[dict], ScriptedBackend, object]:
    write_jsonl(tmp_path / "in.jsonl", [original_input(r) for r in ORIGINAL])
    steps = [
        {"vote": {"models": VOTERS, "prompt": "zh/intent_cdss", "seed_fields": True}},
        {"cascade": {"model": STRONG, "prompt": "zh/intent_cdss", "seed_fields": True, **cascade}},
    ]
    strong = strong_model()
    backends = {**{name: voter(name) for name in VOTERS}, STRONG: strong}
    result = run_pipeline(make_pipeline(tmp_path, steps), backends, registry=registry_of(backends))
    assert result.failures == [] and len(result.data) == len(ORIGINAL)
    return result.data, strong, result.summary


def test_the_fixture_is_the_originals_output():
    if not SHARED.exists():
        pytest.skip("the shared seed data is not beside this checkout")
    (source,) = SHARED.iterdir()
    assert source.read_bytes() == FIXTURE.read_bytes()


def test_the_originals_field_values():
    """What the original wrote, as this module's docstring says (so the replay below compares like with like)."""
    assert len(ORIGINAL) == 10
    for record in ORIGINAL:
        assert record["reason_vote"] == "voted" and record["label_vote"] in {"药品", "其他"}
        for name in VOTERS:
            assert record[f"{name}_scores"] == [] and record[f"{name}_res"] == []
        if record["label_vote"] != "药品":  # not post-labelled: left empty
            assert record["label"] == "" and record["reason"] == ""


def test_vote_and_cascade_with_seed_fields_write_every_value_the_original_wrote(tmp_path):
    # The original's list was ["BMI", "预期孕周", "药品"] ("预期孕周" a typo that matches no label).
    data, strong, summary = run_original_pipeline(tmp_path, {"gate_labels": ["BMI", "孕期孕周", "药品"]})
    for ours, theirs in zip(data, ORIGINAL):
        assert ours["id"] == theirs["id"]
        for name in VOTERS:
            for suffix in SEED_SUFFIXES:
                assert ours[f"{name}{suffix}"] == theirs[f"{name}{suffix}"], (theirs["input"], name, suffix)
        for field in SEED_FIELDS:
            assert ours[field] == theirs[field], (theirs["input"], field)
    gated = [r for r in ORIGINAL if r["label_vote"] == "药品"]
    assert len(strong.calls) == len(gated) == summary.steps["cascade"]["gated"] == 7


def test_gate_all_sends_every_record_to_the_stronger_model(tmp_path):
    data, strong, summary = run_original_pipeline(tmp_path, {"gate": "all"})
    assert len(strong.calls) == len(ORIGINAL) == summary.steps["cascade"]["gated:all"]
    for ours, theirs in zip(data, ORIGINAL):
        assert ours["cascade"]["gated"] is True and ours["cascade"]["because"] == "all"
        assert ours["label_source"] == "cascade" and ours["label"] == (theirs["label"] or "其他")
        assert ours["label_vote"] == theirs["label_vote"] and ours["reason_vote"] == "voted"


def test_gate_all_and_an_empty_label_list_as_written_in_a_pipeline_file():
    steps = [{"vote": {"models": ["a", "b", "c"]}}]
    config = Pipeline.from_dict(
        {"input": {"path": "in.jsonl"}, "steps": [*steps, {"cascade": {"model": "s", "gate": "all"}}]}
    )
    assert config.steps[1].gate == "all"
    with pytest.raises(
        Exception, match="an empty list gates nothing; to send every record to the model write gate: all"
    ):
        Pipeline.from_dict(
            {"input": {"path": "in.jsonl"}, "steps": [*steps, {"cascade": {"model": "s", "gate_labels": []}}]}
        )
