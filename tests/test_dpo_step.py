"""The dpo step end to end with scripted generators, judges and a scripted reward model."""

import json
import re
from pathlib import Path

import pytest

from joydataforge.errors import ConfigError
from joydataforge.methods.dpo.step import PreferencePairs
from joydataforge.models.backends.base import Backend, Completion, Usage
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, run_pipeline, write_jsonl

NAMES = ["gen1", "gen2", "judge1", "judge2", "rm"]
REGISTRY = ModelRegistry.from_dict(
    {
        "models": {
            name: {
                "backend": "openai",
                "model": name,
                "base_url": "http://127.0.0.1:1/v1",
                "max_retries": 0,
                "json_retries": 1,
            }
            for name in NAMES
        }
    },
    "test",
)
ASPECTS = ["helpfulness", "correctness", "harmlessness", "instruction_following"]


def answer_of(messages) -> str:
    return re.search(r"Answer to judge:\n(.*?)\n\nAspects:", messages[-1]["content"], re.S).group(1)


def pointwise(table: dict[str, int], fail: set[str] = frozenset()):
    """A judge that gives each answer the score in ``table`` on every aspect (invalid JSON for ``fail``)."""

    def reply(messages, schema):
        text = answer_of(messages)
        if text in fail:
            return "I refuse to answer in JSON"
        return json.dumps({a: {"rationale": f"{a} of {text}", "score": table[text]} for a in schema["properties"]})

    return reply


def pairwise(rank: dict[str, int], position_biased: bool = False):
    def reply(messages, schema):
        a, b = re.search(r"Answer A:\n(.*?)\n\nAnswer B:\n(.*)$", messages[-1]["content"], re.S).groups()
        if position_biased:
            winner = "A"
        else:
            winner = "tie" if rank[a] == rank[b] else ("A" if rank[a] > rank[b] else "B")
        return json.dumps({"rationale": f"{a} vs {b}", "winner": winner})

    return reply


class SamplingBackend(ScriptedBackend):
    """Answers that show which temperature and seed (hence sample index) produced them."""

    async def chat(self, messages, params, *, json_schema=None, seed=None):
        self.calls.append({"params": params, "seed": seed})
        text = f"answer t={params.get('temperature')} seed={seed} " + "x" * int(10 * (params.get("temperature") or 1))
        return Completion(text=text, usage=Usage(3, 5), model="scripted")


class ScriptedReward(Backend):
    reward_batch_size = 8  # like a local model: the gateway sends up to 8 conversations per call

    def __init__(self, table: dict[str, float]):
        self.table = table
        self.calls = []

    async def chat(self, messages, params, *, json_schema=None, seed=None):
        raise AssertionError("a reward model is never asked to chat")

    async def reward(self, conversations, params):
        self.calls.append(conversations)
        return [self.table[c[-1]["content"]] for c in conversations]


def run(tmp_path: Path, records, step: dict, backends: dict[str, Backend]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_jsonl(tmp_path / "in.jsonl", records)
    result = run_pipeline(make_pipeline(tmp_path, [{"dpo": step}], run={"concurrency": 4}), backends, registry=REGISTRY)
    return result.summary, result.data, result.failures


def test_pointwise_two_judges_averaged_best_vs_worst(tmp_path):
    record = {
        "id": "r1",
        "input": "How do I boil an egg?",
        "history": [["hi", "hello"]],
        "response_candidates": ["good", "bad", "ok"],
    }
    j1 = ScriptedBackend(pointwise({"good": 9, "bad": 2, "ok": 6}))
    j2 = ScriptedBackend(pointwise({"good": 7, "bad": 4, "ok": 8}))
    summary, out, failures = run(tmp_path, [record], {"judges": ["judge1", "judge2"]}, {"judge1": j1, "judge2": j2})
    assert not failures and len(out) == 1
    pair = out[0]
    assert pair["prompt"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "How do I boil an egg?"},
    ]
    assert pair["chosen"] == [{"role": "assistant", "content": "good"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "bad"}]
    assert pair["score_chosen"] == 8.0 and pair["score_rejected"] == 3.0  # (9+7)/2 and (2+4)/2
    assert [r["judge"] for r in pair["rationale_chosen"]] == ["judge1", "judge2"]
    assert pair["rationale_chosen"][0]["aspects"]["correctness"] == {"rationale": "correctness of good", "score": 9}
    assert pair["source_chosen"] == {"index": 0, "origin": "record", "position": 0}
    assert pair["length_diff"] == 1 and "response_candidates" not in pair
    assert len(j1.calls) == 3 and set(j1.calls[0]["schema"]["required"]) == set(ASPECTS)
    stats = summary.steps["dpo"]
    # Judges order (good, bad), (good, ok), (bad, ok): they agree on 2 of 3.
    assert stats["agreement:judge_pairs_compared"] == 3 and stats["judge_agreement"] == round(2 / 3, 4)
    assert stats["pairs_made"] == 1 and stats["judge_calls"] == 6 and "judge_failures" not in stats
    assert len(pair["_meta"]["calls"]) == 6


def test_trl_formats_standard_and_auto(tmp_path):
    records = [
        {"id": "plain", "input": "q1", "response_candidates": ["good", "bad"]},
        {"id": "chat", "input": "q2", "history": [["a", "b"]], "response_candidates": ["good", "bad"]},
    ]
    judge = ScriptedBackend(pointwise({"good": 9, "bad": 2}))
    _, out, _ = run(tmp_path, records, {"judges": ["judge1"], "trl_format": "auto"}, {"judge1": judge})
    assert out[0]["prompt"] == "q1" and out[0]["chosen"] == "good" and out[0]["rejected"] == "bad"
    assert isinstance(out[1]["prompt"], list) and out[1]["chosen"] == [{"role": "assistant", "content": "good"}]
    _, out, failures = run(tmp_path / "s", records, {"judges": ["judge1"], "trl_format": "standard"}, {"judge1": judge})
    assert [r["_meta"]["source_id"] for r in out] == ["plain"]
    assert failures[0]["id"] == "chat" and "standard" in failures[0]["error"]


def test_generated_candidates_keep_provenance_and_distinct_samples(tmp_path):
    gen1, gen2 = SamplingBackend(), SamplingBackend()
    lengths_judge = ScriptedBackend(
        lambda m, s: json.dumps(
            {a: {"rationale": "r", "score": min(10, len(answer_of(m)) // 4)} for a in s["properties"]}
        )
    )
    step = {
        "judges": ["judge1"],
        "candidates_field": None,
        "models": ["gen1", "gen2"],
        "samples": 2,
        "temperatures": [0.2, 1],
        "params": {"max_tokens": 32},
        "output": "scores",
    }
    _, out, failures = run(
        tmp_path, [{"id": "r", "input": "q"}], step, {"gen1": gen1, "gen2": gen2, "judge1": lengths_judge}
    )
    assert not failures
    sources = out[0]["candidate_sources"]
    assert len(sources) == 8 and len(gen1.calls) == 4 and len(gen2.calls) == 4
    assert sources[0] == {
        "origin": "generated",
        "model": "gen1",
        "params": {"max_tokens": 32, "temperature": 0.2},
        "sample": 0,
    }
    assert [(s["model"], s["params"]["temperature"], s["sample"]) for s in sources][2:4] == [
        ("gen1", 1.0, 0),
        ("gen1", 1.0, 1),
    ]
    assert len(set(out[0]["response_candidates"])) == 8  # samples are distinct calls (distinct seeds)
    assert len(out[0]["candidate_scores"]) == 8 and all(isinstance(s, float) for s in out[0]["candidate_scores"])


def test_pairwise_both_orders_position_bias_becomes_ties(tmp_path):
    record = {"id": "r", "input": "q", "response_candidates": ["best", "mid", "worst"]}
    biased = ScriptedBackend(pairwise({}, position_biased=True))
    summary, out, failures = run(tmp_path, [record], {"judges": ["judge1"], "scorer": "pairwise"}, {"judge1": biased})
    assert out == [] and not failures
    stats = summary.steps["dpo"]
    assert len(biased.calls) == 6  # 3 pairs x 2 orders
    assert stats["order_agreement"] == 0.0 and stats["dropped:tie"] == 1 and stats["records_without_pair"] == 1


def test_pairwise_consistent_judges_make_pairs_with_their_rationales(tmp_path):
    rank = {"best": 3, "mid": 2, "worst": 1}
    record = {"id": "r", "input": "q", "response_candidates": ["mid", "best", "worst"]}
    summary, out, _ = run(
        tmp_path,
        [record],
        {"judges": ["judge1", "judge2"], "scorer": "pairwise", "rule": "all_pairs", "trl_format": "standard"},
        {"judge1": ScriptedBackend(pairwise(rank)), "judge2": ScriptedBackend(pairwise(rank))},
    )
    assert sorted((p["chosen"], p["rejected"]) for p in out) == [("best", "mid"), ("best", "worst"), ("mid", "worst")]
    best_worst = next(p for p in out if p["chosen"] == "best" and p["rejected"] == "worst")
    assert best_worst["score_chosen"] == 1.0 and best_worst["score_rejected"] == 0.0
    assert {r["judge"] for r in best_worst["rationale_chosen"]} == {"judge1", "judge2"}
    assert best_worst["rationale_chosen"][0]["ij"]["winner"] in ("A", "B")
    stats = summary.steps["dpo"]
    assert stats["order_agreement"] == 1.0 and stats["judge_agreement"] == 1.0 and stats["pairs_made"] == 3


def test_failed_judgement_is_recorded_never_zero(tmp_path):
    record = {"id": "r", "input": "q", "response_candidates": ["good", "bad", "broken"]}
    j1 = ScriptedBackend(pointwise({"good": 8, "bad": 3, "broken": 1}, fail={"broken"}))
    summary, out, failures = run(tmp_path, [record], {"judges": ["judge1"], "output": "scores"}, {"judge1": j1})
    assert not failures
    assert out[0]["candidate_scores"] == [8.0, 3.0, None]
    error = out[0]["candidate_judgements"][2][0]
    assert error["judge"] == "judge1" and "error" in error and error["raw"] == "I refuse to answer in JSON"
    assert summary.steps["dpo"]["judge_failures"] == 1 and summary.steps["dpo"]["candidates_unscored"] == 1
    # In pairs mode the failed candidate is left out: the pair is good vs bad, not good vs a "zero".
    _, out, _ = run(tmp_path / "p", [record], {"judges": ["judge1"], "trl_format": "standard"}, {"judge1": j1})
    assert (out[0]["chosen"], out[0]["rejected"]) == ("good", "bad")


def test_all_judgements_failed_goes_to_failures_with_raw(tmp_path):
    record = {"id": "r", "input": "q", "response_candidates": ["a", "b"]}
    j1 = ScriptedBackend(lambda m, s: "not json")
    summary, out, failures = run(tmp_path, [record], {"judges": ["judge1"]}, {"judge1": j1})
    assert out == [] and failures[0]["id"] == "r"
    assert "0 candidate(s) scored" in failures[0]["error"] and "not json" in failures[0]["raw"]


def test_reward_scorer_scores_the_whole_conversation(tmp_path):
    rm = ScriptedReward({"long answer": 2.5, "short": -1.0, "meh": 0.0})
    record = {
        "id": "r",
        "input": "q",
        "history": [["u0", "a0"]],
        "system": "be kind",
        "response_candidates": ["long answer", "short", "meh"],
    }
    summary, out, _ = run(tmp_path, [record], {"judges": ["rm"], "scorer": "reward"}, {"rm": rm})
    assert len(rm.calls) == 1 and rm.calls[0][0] == [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "u0"},
        {"role": "assistant", "content": "a0"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "long answer"},
    ]
    assert out[0]["score_chosen"] == 2.5 and out[0]["score_rejected"] == -1.0
    assert out[0]["prompt"][0] == {"role": "system", "content": "be kind"}
    assert out[0]["rationale_chosen"] == [{"judge": "rm", "reward": 2.5}]


def test_length_penalty_and_margin_drops_are_counted(tmp_path):
    records = [
        {"id": "long", "input": "q", "response_candidates": ["L" * 400, "S" * 100]},
        {"id": "close", "input": "q", "response_candidates": ["a1", "b1"]},
    ]
    rm = ScriptedReward({"L" * 400: 3.0, "S" * 100: 2.0, "a1": 1.0, "b1": 0.9})
    summary, out, _ = run(
        tmp_path, records, {"judges": ["rm"], "scorer": "reward", "margin": 0.5, "length_penalty": 1.0}, {"rm": rm}
    )
    stats = summary.steps["dpo"]
    assert out == [] and stats["dropped:length_decided"] == 1 and stats["dropped:below_margin"] == 1
    assert summary.filtered == 2


def test_blank_and_duplicate_candidates_are_skipped_with_reason(tmp_path):
    rm = ScriptedReward({"x": 1.0, "y": 0.0})
    summary, out, _ = run(
        tmp_path,
        [{"id": "r", "input": "q", "response_candidates": ["x", " ", "x", "y"]}],
        {"judges": ["rm"], "scorer": "reward", "output": "scores"},
        {"rm": rm},
    )
    assert out[0]["candidate_scores"] == [1.0, None, None, 0.0]
    assert [s.get("skipped") for s in out[0]["candidate_sources"]] == [None, "blank", "duplicate", None]
    assert summary.steps["dpo"]["candidates_blank"] == 1 and summary.steps["dpo"]["candidates_duplicate"] == 1


def test_bad_candidates_field_names_the_field(tmp_path):
    rm = ScriptedReward({})
    _, out, failures = run(
        tmp_path,
        [{"id": "r", "input": "q", "response_candidates": "just one"}],
        {"judges": ["rm"], "scorer": "reward"},
        {"rm": rm},
    )
    assert "response_candidates" in failures[0]["error"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"judges": ["j"], "scorer": "vibes"}, "scorer: must be one of"),
        ({"judges": ["a", "b"], "scorer": "reward"}, "judges: scorer 'reward' takes one reward model"),
        ({"judges": ["j"], "candidates_field": None}, "candidates_field: no candidates"),
        ({"judges": ["j"], "rule": "best_of_n"}, "rule: must be one of"),
        ({"judges": ["j"], "aspects": ["style"]}, "aspects: .* no built-in description"),
        ({"judges": ["j"], "margin": -1}, "margin: must be >= 0"),
        ({"judges": ["j"], "scale": [5, 1]}, r"scale: must be \[low, high\] with low < high"),
        ({"judges": ["j"], "temperatures": []}, "temperatures: must have at least 1 item"),
        ({"judges": ["j"], "rationale_chars": 0}, "rationale_chars: must be >= 1"),
    ],
)
def test_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        PreferencePairs(**settings)


def test_custom_aspects_shape_the_schema(tmp_path):
    judge = ScriptedBackend(pointwise({"a": 5, "b": 4}))
    _, out, _ = run(
        tmp_path,
        [{"id": "r", "input": "q", "response_candidates": ["a", "b"]}],
        {"judges": ["judge1"], "aspects": {"tone": "Is it polite?"}, "scale": [1, 5], "rationale_chars": 50},
        {"judge1": judge},
    )
    schema = judge.calls[0]["schema"]
    assert schema["required"] == ["tone"] and schema["properties"]["tone"]["properties"]["score"]["maximum"] == 5
    assert schema["properties"]["tone"]["properties"]["rationale"]["maxLength"] == 50
    assert "tone: Is it polite?" in judge.calls[0]["messages"][-1]["content"]
    assert out[0]["rationale_chosen"][0]["aspects"] == {"tone": {"rationale": "tone of a", "score": 5}}


def test_check_refuses_a_chat_model_as_reward_model_before_the_run(tmp_path):
    from joydataforge.engine.step import StepContext
    from joydataforge.prompts.renderer import PromptLibrary

    registry = ModelRegistry.from_dict(
        {
            "models": {
                "chat": {"backend": "llamacpp", "model_path": "smollm2"},
                "rm": {"backend": "transformers", "model_path": str(tmp_path)},
            }
        },
        "test",
    )
    ctx = StepContext(Gateway(registry), PromptLibrary())
    with pytest.raises(ConfigError, match="judge 'chat' cannot give reward scores .*needs a reward model"):
        PreferencePairs(judges=["chat"], scorer="reward").check(ctx)
    with pytest.raises(ConfigError, match="judge 'rm' cannot chat .*use scorer: reward"):
        PreferencePairs(judges=["rm"]).check(ctx)
    PreferencePairs(judges=["rm"], scorer="reward").check(ctx)
