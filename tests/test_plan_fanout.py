"""Each method's fan-out arithmetic (``methods/<m>/plan.py``): calls per record, by model and role.

Pure functions of a step's settings and the assumptions, so every count here is worked out by hand from the
settings: voters, drafters (a model listed twice drafts twice), critique rounds, candidates x judges, pairs x 2
orders, Evol rounds x operations x children, rewrite cases, seedless top-ups, dialogue ids, Magpie attempts.
"""

from __future__ import annotations

import pytest

from joydataforge.config.pipeline import step_config
from joydataforge.engine.fanout import Assumptions, FanOut
from joydataforge.engine.plan import PLANS, known_assumptions


def fan(kind: str, settings: dict, record: dict | None = None, **assumed: float) -> FanOut:
    config = step_config({kind: settings}, "test")
    values = {name.replace("__", "."): value for name, value in assumed.items()}
    return PLANS[kind].fan_out(config, Assumptions(known_assumptions(), values), record)


def counts(result: FanOut) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for calls in result.calls:
        out[(calls.role, calls.model)] = out.get((calls.role, calls.model), 0.0) + calls.count
    return out


def test_generate_and_label_one_call_each():
    assert counts(fan("generate", {"model": "m", "prompt": "answer"})) == {("answer", "m"): 1}
    label = fan("label", {"model": "m", "prompt": "label"})
    assert counts(label) == {("label", "m"): 1} and label.calls[0].json


def test_vote_one_call_per_voter_and_cascade_by_gate_rate():
    vote = fan("vote", {"models": {"a": 2, "b": 1, "c": 1}, "prompt": "vote_label"})
    assert counts(vote) == {("vote", "a"): 1, ("vote", "b"): 1, ("vote", "c"): 1}
    assert all(c.exact and c.json for c in vote.calls)
    dropped = fan("vote", {"models": ["a", "b"], "on_no_majority": "drop"}, vote__no_majority_rate=0.25)
    assert dropped.outputs == 0.75 and not dropped.exact_outputs
    cascade = fan("cascade", {"model": "big", "gate_labels": ["x"]}, cascade__gate_rate=0.3)
    assert counts(cascade) == {("cascade", "big"): 0.3} and not cascade.calls[0].exact
    every = fan("cascade", {"model": "big", "gate": "all"})
    assert counts(every) == {("cascade", "big"): 1} and every.calls[0].exact


def test_joint_drafters_listed_twice_draft_twice_and_rotate_picks_per_draft():
    settings = {"drafters": ["a", "a", "b"], "fuser": "f", "mode": "fuse"}
    assert counts(fan("joint", settings)) == {("draft", "a"): 2, ("draft", "b"): 1, ("fuse", "f"): 1}
    rotate = fan("joint", {**settings, "mode": "pick", "pick_order": "rotate"})
    assert counts(rotate)[("pick", "f")] == 3


@pytest.mark.parametrize(
    ("rounds", "approve", "critiques", "revisions"),
    [(2, 0.0, 2, 2), (3, 0.0, 3, 3), (2, 0.5, 1.5, 0.75), (1, 1.0, 1, 0)],
)
def test_critique_rounds_stop_at_approval(rounds, approve, critiques, revisions):
    result = fan("critique_revise", {"model": "w", "critic": "c", "rounds": rounds}, critique__approve_rate=approve)
    got = counts(result)
    assert got[("draft", "w")] == 1
    assert got[("critique", "c")] == pytest.approx(critiques)
    assert got.get(("revise", "w"), 0) == pytest.approx(revisions)
    assert [c.exact for c in result.calls] == [True] + [False] * (len(result.calls) - 1)  # the draft is exact


def test_critique_of_a_given_answer_drafts_nothing():
    got = counts(fan("critique_revise", {"model": "w", "critic": "c", "rounds": 1, "answer_field": "target"}))
    assert ("draft", "w") not in got and got[("critique", "c")] == 1


def test_dpo_candidates_times_judges_pointwise_and_pairs_times_two_orders_pairwise():
    base = {"models": ["gen"], "temperatures": [0.3, 0.9], "samples": 2, "judges": ["j1", "j2"]}
    pointwise = counts(fan("dpo", {**base, "scorer": "pointwise"}, {"input": "q"}))
    assert pointwise == {("candidate", "gen"): 4, ("judge", "j1"): 4, ("judge", "j2"): 4}
    pairwise = counts(fan("dpo", {**base, "scorer": "pairwise", "judges": ["j1"]}, {"input": "q"}))
    assert pairwise == {("candidate", "gen"): 4, ("judge", "j1"): 6 * 2}  # C(4,2) pairs, both orders
    given = {"input": "q", "response_candidates": ["a", "b"]}
    with_given = counts(fan("dpo", {**base, "scorer": "pointwise", "judges": ["j1"]}, given))
    assert with_given[("judge", "j1")] == 6  # 2 given + 4 generated
    unusable = counts(fan("dpo", {**base, "scorer": "pointwise"}, {"input": "q"}, dpo__unusable_rate=0.25))
    assert unusable[("judge", "j1")] == 3


def test_dpo_outputs_follow_the_rule():
    base = {"models": ["gen"], "samples": 4, "judges": ["j"], "scorer": "pointwise"}
    assert fan("dpo", {**base, "rule": "best_vs_worst"}, {"input": "q"}).outputs == 1
    assert fan("dpo", {**base, "rule": "all_pairs"}, {"input": "q"}).outputs == 6
    assert fan("dpo", {**base, "output": "scores"}, {"input": "q"}).outputs == 1


def test_evol_rounds_operations_and_children():
    settings = {
        "model": "m",
        "judge_model": "j",
        "answer_model": "a",
        "rounds": 2,
        "sample_size": 1,
        "operations": ["redirect", "breadth"],
        "children": 2,
        "top_fraction": 0.5,
        "eliminate": ["leak", "unanswerable", "duplicate"],
    }
    got = counts(fan("evol_instruct", settings, {"input": "q"}))
    # Round 1: the root x 2 operations; 4 children, each answered and judged; round 2: 1 carried parent
    # (floor(4 x 0.5) = 2, sampled down to sample_size 1) x 2 operations, 4 more children.
    assert got[("evolve", "m")] == 4
    assert got[("answer", "a")] == 8
    assert got[("judge", "j")] == 1 + 8  # the root's judgement, then every child's
    fewer = counts(fan("evol_instruct", settings, {"input": "q"}, evol__valid_rate=0.0))
    assert fewer[("evolve", "m")] == 2  # nothing valid after round 1: the tree stops
    equal = counts(fan("evol_instruct", {**settings, "eliminate": ["equal"], "rounds": 1}, {"input": "q"}))
    assert equal[("equal", "j")] == 4


def test_rewrite_one_call_fans_out_into_the_cases_kept():
    result = fan("rewrite", {"model": "m", "types": ["a", "b"], "per_type": 2})
    assert counts(result) == {("rewrite", "m"): 1}
    assert result.outputs == 4
    assert fan("rewrite", {"model": "m", "max_cases": 3}, rewrite__kept_cases=0.5).outputs == 1.5


def test_seedless_calls_per_topic_and_top_ups():
    settings = {"model": "w", "n_per_topic": 6, "per_call": 2}
    assert counts(fan("seedless", settings, {"topic": "t"})) == {("generate", "w"): 3}
    assert counts(fan("seedless", settings, {"topic": "t", "n": 2})) == {("generate", "w"): 1}
    topped = counts(fan("seedless", {**settings, "max_calls": 4}, {"topic": "t"}, seedless__rejected_rate=0.5))
    assert topped == {("generate", "w"): 4}  # 6 wanted at half kept: 6 calls, capped by max_calls
    assert fan("seedless", settings, {"topic": "t"}).outputs == 6


def test_dialogue_one_call_per_dialogue_id_and_one_record_per_user_turn():
    settings = {"model": "m", "labels": ["a", "b"], "dialog_id_field": "did"}
    record = {"did": "d1", "dialogs": "用户: 你好\n助手: 您好\n用户: 我头疼\n助手: 多久了\n用户: 两天"}
    result = fan("dialogue_intent", settings, record)
    assert counts(result) == {("label", "m"): 1}
    assert result.outputs == 3 and result.once_per == "d1"
    assert fan("dialogue_intent", {**settings, "retries": 2}, record, dialogue__retry_rate=0.5).calls[0].count == 1.75


def test_intent_binary_checks_only_the_listed_labels():
    settings = {"model": "m", "labels": ["药品", "其他"], "check_labels": ["药品"]}
    assert counts(fan("intent_binary", settings, {"input": "x", "label": "药品"})) == {("check", "m"): 1}
    assert counts(fan("intent_binary", settings, {"input": "x", "label": "其他"})) == {("check", "m"): 0}
    unknown = fan("intent_binary", settings, None, intent_binary__check_rate=0.4)
    assert counts(unknown) == {("check", "m"): 0.4} and not unknown.calls[0].exact


def test_magpie_samples_attempts_and_grouped_requests():
    assert counts(fan("magpie", {"model": "m", "samples": 3})) == {("instruction", "m"): 3}
    redraws = counts(fan("magpie", {"model": "m", "samples": 2, "attempts": 3}, magpie__drop_rate=0.5))
    assert redraws == {("instruction", "m"): pytest.approx(2 * (1 + 0.5 + 0.25))}
    grouped = fan("magpie", {"model": "m", "samples": 8, "samples_per_call": 4})
    assert counts(grouped) == {("instruction", "m"): 2} and grouped.calls[0].n == 4
    assert counts(fan("magpie_tag", {"model": "j", "tags": ["task_category", "difficulty"]})) == {
        ("tag:task_category", "j"): 1,
        ("tag:difficulty", "j"): 1,
    }
    turns = counts(fan("magpie_response", {"model": "r", "turns": 3, "instruction_model": "m"}))
    assert turns == {("answer", "r"): 3, ("follow_up", "m"): 2}


def test_tool_dialogue_goals_samples_turns_and_simulated_calls():
    tools = [{"name": "book", "parameters": {"type": "object", "properties": {}}}]
    plain = fan("tool_dialogue", {"model": "m", "tools_module": "t.py", "max_turns": 3})
    assert counts(plain) == {("assistant", "m"): 2}  # the default: one round of calls, then the answer
    assert not plain.calls[0].exact and plain.calls[0].json and plain.outputs == pytest.approx(1)
    settings = {"model": "m", "tools": tools, "simulator": "s", "samples": 2, "generate_goals": 3, "max_turns": 4}
    many = fan("tool_dialogue", settings, tool_dialogue__turns=3, tool_dialogue__tool_calls_per_turn=2)
    # 3 goals x 2 samples = 6 trajectories of 3 turns; 2 turns call 2 tools each, all played by the simulator.
    assert counts(many) == {("goals", "m"): 1, ("assistant", "m"): 18, ("tool", "s"): 6 * 2 * 2}
    capped = fan("tool_dialogue", {"model": "m", "tools_module": "t.py", "max_turns": 2}, tool_dialogue__turns=5)
    assert counts(capped) == {("assistant", "m"): 2}
    one = fan("tool_dialogue", {"model": "m", "tools_module": "t.py", "max_turns": 1, "min_tool_calls": 0})
    assert counts(one) == {("assistant", "m"): 1} and one.calls[0].exact  # a single turn: no reply decides
    mixed = fan("tool_dialogue", {**settings, "tools_module": "t.py"}, tool_dialogue__simulated_share=0.25)
    assert counts(mixed)[("tool", "s")] == pytest.approx(6 * 1 * 1 * 0.25)
    dropped = fan(
        "tool_dialogue", {"model": "m", "tools_module": "t.py", "samples": 4}, tool_dialogue__unfinished_rate=0.5
    )
    assert dropped.outputs == pytest.approx(2) and not dropped.exact_outputs
    grouped = fan("tool_dialogue", {"model": "m", "tools_module": "t.py", "samples": 4, "candidates_field": "c"})
    assert grouped.outputs == 1 and "c" in grouped.adds


def test_verify_calls_no_model_and_filters_by_its_fail_rate():
    kept = fan("verify", {"checker": "math", "reference_field": "answer"}, verify__fail_rate=0.4)
    assert kept.calls == [] and kept.outputs == 1 and kept.exact_outputs
    dropped = fan("verify", {"checker": "math", "reference_field": "answer", "on_fail": "drop"}, verify__fail_rate=0.4)
    assert dropped.calls == [] and dropped.outputs == pytest.approx(0.6) and not dropped.exact_outputs


def test_every_built_in_kind_has_a_planner():
    from joydataforge.engine.registry import BUILTIN_STEPS

    # Steps other tests register (@register_step in tests/) are plugins, not built-in kinds.
    builtin = {kind for kind, cls in BUILTIN_STEPS.items() if cls.__module__.startswith("joydataforge.")}
    assert builtin and builtin <= set(PLANS), sorted(builtin - set(PLANS))
