"""Joint synthesis (fuse, pick) and critique-and-revise with scripted replies per model."""

import json

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.engine.step import StepContext
from joydataforge.errors import ConfigError, StepError
from joydataforge.methods.critique.step import CritiqueRevise
from joydataforge.methods.joint.step import Joint
from joydataforge.models.gateway import Gateway
from joydataforge.prompts.renderer import PromptLibrary
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import registry_of, run_pipeline
from tests.support.harness import run_step as harness_run_step

NAMES = ["a", "b", "c", "fuser", "author", "critic"]
REGISTRY = registry_of(NAMES)
RECORD = {"id": "r1", "input": "How do I boil an egg?"}


def text(reply):
    return ScriptedBackend(lambda messages, schema: reply)


def config_error(kind, settings):
    """The message a pipeline file with one step of ``kind`` gets for ``settings``."""
    with pytest.raises(ConfigError) as info:
        Pipeline.from_dict({"input": {"path": "in.jsonl"}, "steps": [{kind: settings}]}, source="x")
    return str(info.value)


def run_step(step, record, backends):
    return harness_run_step(step, record, backends, registry=REGISTRY)


def sequence(*replies):
    """A backend whose n-th call gets the n-th reply (the last one repeats)."""
    state = {"n": 0}

    def reply(messages, schema):
        state["n"] += 1
        return replies[min(state["n"], len(replies)) - 1]

    return ScriptedBackend(reply)


# --- joint: fuse ------------------------------------------------------------------------------------


def test_fuse_reads_all_drafts_and_keeps_them_with_their_model():
    fuser = text("FUSED answer")
    out = run_step(
        Joint(["a", "b", "c"], "fuser", draft_prompt="en/answer", fuse_prompt="en/joint_fuse"),
        RECORD,
        {"a": text("draft A"), "b": text("draft B"), "c": text("draft C"), "fuser": fuser},
    )
    assert out["target"] == "FUSED answer"
    assert out["drafts"] == [{"model": m, "sample": 0, "text": f"draft {m.upper()}"} for m in "abc"]
    prompt = fuser.calls[0]["messages"][-1]["content"]
    assert "Candidate 1:\ndraft A" in prompt and "Candidate 3:\ndraft C" in prompt
    assert out["joint"] == {"mode": "fuse", "fuser": "fuser", "used_drafts": [0, 1, 2]}
    roles = [c.get("role") for c in out["_meta"]["calls"]]
    assert roles == ["draft#0", "draft#0", "draft#0", "fuse"]


def test_a_repeated_drafter_asks_for_distinct_samples():
    a = ScriptedBackend(lambda m, s: "same text")
    out = run_step(Joint(["a", "a", "a"], "fuser", draft_prompt="en/answer"), RECORD, {"a": a, "fuser": text("FUSED")})
    assert [d["sample"] for d in out["drafts"]] == [0, 1, 2]
    assert len({c["seed"] for c in a.calls}) == 3  # each sample gets its own backend seed


def test_failed_drafters_are_recorded_and_min_drafts_enforced():
    fuser = text("FUSED")
    step = Joint(["a", "b", "c"], "fuser", draft_prompt="en/answer", min_drafts=2)
    out = run_step(step, RECORD, {"a": text("draft A"), "b": text("   "), "c": text("draft C"), "fuser": fuser})
    assert out["drafts"][1]["error"] == "empty reply" and out["joint"]["used_drafts"] == [0, 2]
    assert "draft B" not in fuser.calls[0]["messages"][-1]["content"]
    assert step.counters["drafts_failed"] == 1

    step = Joint(["a", "b", "c"], "fuser", draft_prompt="en/answer", min_drafts=2)
    with pytest.raises(StepError, match="1 of 3 drafts succeeded") as info:
        run_step(step, RECORD, {"a": text("draft A"), "b": text(""), "c": text(""), "fuser": fuser})
    assert json.loads(info.value.raw)[0]["text"] == "draft A"


def test_empty_fusion_fails_the_record():
    step = Joint(["a", "b"], "fuser", draft_prompt="en/answer")
    with pytest.raises(StepError, match="empty reply"):
        run_step(step, RECORD, {"a": text("draft x"), "b": text("draft y"), "fuser": text("  ")})


def test_structured_drafts_are_fused_into_a_validated_record():
    schema_prompt = "en/vote_label"  # any prompt with a schema makes drafts records, not texts
    drafts = {
        "a": text(json.dumps({"label": "x", "reason": "ra"})),
        "b": text(json.dumps({"label": "y", "reason": "rb"})),
    }
    fuser = sequence("not json", json.dumps({"label": "x", "reason": "merged"}))
    out = run_step(
        Joint(["a", "b"], "fuser", draft_prompt=schema_prompt, options={"labels": ["x", "y"]}),
        RECORD,
        {**drafts, "fuser": fuser},
    )
    assert out["target"] == {"label": "x", "reason": "merged"} and out["drafts"][1]["value"]["label"] == "y"
    assert '"reason": "ra"' in fuser.calls[0]["messages"][-1]["content"]


# --- joint: pick ------------------------------------------------------------------------------------


def pick_backends(fuser):
    return {"a": text("draft A"), "b": text("draft B"), "c": text("draft C"), "fuser": fuser}


def test_pick_takes_the_chosen_draft_with_reason():
    step = Joint(
        ["a", "b", "c"], "fuser", mode="pick", draft_prompt="en/answer", pick_prompt="en/joint_pick", pick_order="fixed"
    )
    fuser = text(json.dumps({"best": 2, "reason": "clearer"}))
    out = run_step(step, RECORD, pick_backends(fuser))
    assert out["target"] == "draft B"
    assert out["joint"] == {
        "mode": "pick",
        "fuser": "fuser",
        "used_drafts": [0, 1, 2],
        "best": 1,
        "model": "b",
        "reason": "clearer",
        "order": [0, 1, 2],
    }
    assert fuser.calls[0]["schema"]["properties"]["best"]["maximum"] == 3


def test_pick_numbers_only_successful_drafts():
    step = Joint(["a", "b", "c"], "fuser", mode="pick", draft_prompt="en/answer", pick_order="fixed")
    fuser = text(json.dumps({"best": 2, "reason": "ok"}))
    out = run_step(step, RECORD, {"a": text(""), "b": text("draft B"), "c": text("draft C"), "fuser": fuser})
    assert out["target"] == "draft C" and out["joint"]["best"] == 2 and out["joint"]["model"] == "c"


def test_out_of_range_pick_is_retried():
    fuser = sequence(json.dumps({"best": 7, "reason": "?"}), json.dumps({"best": 3, "reason": "fine"}))
    step = Joint(["a", "b", "c"], "fuser", mode="pick", draft_prompt="en/answer", pick_order="fixed")
    out = run_step(step, RECORD, pick_backends(fuser))
    assert out["target"] == "draft C" and len(fuser.calls) == 2


@pytest.mark.parametrize("best", [0, 4, -1, "1"])
def test_out_of_range_pick_that_persists_fails_never_index_zero(best):
    step = Joint(["a", "b", "c"], "fuser", mode="pick", draft_prompt="en/answer")
    reply = json.dumps({"best": best, "reason": "?"})
    with pytest.raises(StepError, match="pick by 'fuser' failed") as info:
        run_step(step, RECORD, pick_backends(text(reply)))
    assert info.value.raw == reply and step.counters["fuse_failures"] == 1


def test_joint_config_errors():
    assert config_error("joint", {"drafters": ["a", "b"], "fuser": "f", "mode": "vote"}).startswith(
        "x: steps[0] (joint).mode: must be one of"
    )
    assert config_error("joint", {"drafters": ["a", "b"], "fuser": "f", "min_drafts": 3}) == (
        "x: steps[0] (joint).min_drafts: must be at most the number of drafters (2) (got 3)"
    )
    assert config_error("joint", {"drafters": ["a", "b"], "fuser": "f", "mode": "pick", "min_drafts": 1}).startswith(
        "x: steps[0] (joint).min_drafts: mode 'pick' needs min_drafts >= 2"
    )
    assert config_error("joint", {"drafters": "a", "fuser": "f"}) == (
        "x: steps[0] (joint).drafters: must be a list (got 'a')"
    )


# --- critique and revise ----------------------------------------------------------------------------


def critique(verdict, score=5, issues=("too vague",)):
    return json.dumps({"issues": list(issues), "verdict": verdict, "score": score})


def author():
    """Drafts 'v0', then revises to 'v1', 'v2', ... (the revise prompt contains 'previous answer')."""
    state = {"n": 0}

    def reply(messages, schema):
        if "previous answer" in messages[-1]["content"]:
            state["n"] += 1
            return f"v{state['n']}"
        return "v0"

    return ScriptedBackend(reply)


def test_critique_stops_early_when_the_critic_approves():
    step = CritiqueRevise("author", "critic", rounds=3)
    critic = sequence(critique("revise"), critique("approve", 9, []))
    writer = author()
    out = run_step(step, RECORD, {"author": writer, "critic": critic})
    assert out["target"] == "v1"
    assert [r["answer"] for r in out["critique_rounds"]] == ["v0", "v1"]
    assert out["critique_rounds"][0]["revision"] == "v1" and out["critique_rounds"][1]["revision"] is None
    assert out["critique_rounds"][0]["critique"]["issues"] == ["too vague"]
    assert out["critique"] == {
        "approved": True,
        "rounds": 2,
        "stopped": "approved",
        "author": "author",
        "critic": "critic",
    }
    assert len(critic.calls) == 2 and len(writer.calls) == 2  # draft + one revision; no third round
    # the reviser saw the issues, the critic saw the answer
    assert "- too vague" in writer.calls[1]["messages"][-1]["content"]
    assert "v1" in critic.calls[1]["messages"][-1]["content"]
    assert step.counters["approved_round:2"] == 1


def test_critique_runs_all_rounds_without_approval():
    step = CritiqueRevise("author", "critic", rounds=2)
    out = run_step(step, RECORD, {"author": author(), "critic": text(critique("revise"))})
    assert out["target"] == "v2" and out["critique"]["approved"] is False
    assert out["critique"]["stopped"] == "max_rounds" and len(out["critique_rounds"]) == 2
    assert step.counters["not_approved"] == 1


def test_approve_score_threshold_and_not_approved_policies():
    step = CritiqueRevise("author", "critic", rounds=3, approve_score=8)
    critic = sequence(critique("approve", 3), critique("revise", 8))
    out = run_step(step, RECORD, {"author": author(), "critic": critic})
    # with approve_score the score decides: "approve" at 3 is not enough, "revise" at 8 is
    assert out["critique"]["approved"] is True and out["target"] == "v1" and len(out["critique_rounds"]) == 2

    drop = CritiqueRevise("author", "critic", rounds=1, on_not_approved="drop")
    assert run_step(drop, RECORD, {"author": author(), "critic": text(critique("revise"))}) is None
    fail = CritiqueRevise("author", "critic", rounds=1, on_not_approved="fail")
    with pytest.raises(StepError, match="not approved"):
        run_step(fail, RECORD, {"author": author(), "critic": text(critique("revise"))})


def test_critique_of_an_existing_answer_field_skips_the_draft():
    writer = author()
    step = CritiqueRevise("author", "critic", rounds=1, answer_field="target")
    out = run_step(step, {**RECORD, "target": "given"}, {"author": writer, "critic": text(critique("approve", 9, []))})
    assert out["target"] == "given" and writer.calls == []
    with pytest.raises(StepError, match="holds no answer"):
        run_step(step, RECORD, {"author": writer, "critic": text(critique("approve"))})


def test_invalid_critique_fails_the_record_with_raw():
    step = CritiqueRevise("author", "critic", rounds=2)
    with pytest.raises(StepError, match="critique round 1") as info:
        run_step(step, RECORD, {"author": author(), "critic": text('{"verdict": "maybe"}')})
    assert info.value.raw == '{"verdict": "maybe"}'


def test_critique_config_errors():
    assert config_error("critique_revise", {"model": "a", "critic": "b", "rounds": 0}) == (
        "x: steps[0] (critique_revise).rounds: must be >= 1 (got 0)"
    )
    assert config_error("critique_revise", {"model": "a", "critic": "b", "on_not_approved": "hope"}).startswith(
        "x: steps[0] (critique_revise).on_not_approved: must be one of"
    )
    step = CritiqueRevise("author", "critic", critique_prompt="en/answer")
    with pytest.raises(ConfigError, match="issues"):
        step.check(StepContext(Gateway(REGISTRY, backends={}), PromptLibrary()))


def test_joint_and_critique_from_yaml_through_the_executor(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps(RECORD) + "\n" + json.dumps({"id": "r2", "input": "FAILME"}) + "\n")

    def drafter(name):
        return ScriptedBackend(lambda m, s: "" if "FAILME" in m[-1]["content"] else f"draft {name}")

    pipeline = Pipeline.from_dict(
        {
            "input": {"path": str(tmp_path / "in.jsonl")},
            "steps": [
                {"joint": {"drafters": ["a", "b"], "fuser": "fuser", "draft_prompt": "en/answer"}},
                {"critique_revise": {"model": "author", "critic": "critic", "answer_field": "target", "rounds": 2}},
            ],
            "output": {"dir": str(tmp_path / "out")},
            "run": {"cache": None, "progress": False},
        }
    )
    backends = {
        "a": drafter("a"),
        "b": drafter("b"),
        "fuser": text("fused"),
        "author": author(),
        "critic": sequence(critique("revise"), critique("approve", 9, [])),
    }
    summary = run_pipeline(pipeline, backends, registry=REGISTRY).summary
    out = [json.loads(x) for x in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    failures = [json.loads(x) for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert summary.records_out == 1 and summary.failed == 1 and failures[0]["id"] == "r2"
    assert out[0]["drafts"][0]["text"] == "draft a" and out[0]["target"] == "v1"
    assert summary.steps["joint"]["fused"] == 1 and summary.steps["joint"]["too_few_drafts"] == 1
    assert summary.steps["critique_revise"]["revisions"] == 1
