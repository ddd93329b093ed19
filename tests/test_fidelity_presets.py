"""Issue 14, point 2: the original JoyDataForge's domain prompts, as named presets.

- ``intent_binary``: its two re-checks, the 孕期孕周 one with its four-step date rule and the 药品 one with its
  drug-name rule, are the built-in prompts ``zh/intent_binary_pregnancy`` and ``zh/intent_binary_drug`` (and
  English ``en/...``), and ``label_prompts`` checks each coarse label with its own prompt.
- ``rewrite``: its rewrite types (a drug name replaced in the query, in the history; the last-menstrual-period
  date rewritten; ...) are type names a ``types`` list can give, each with its instruction.

Run on the original's own CDSS dialogue turns (``examples/cdss_dialogues.jsonl`` = seed-data
``datas/cdss_datas/examples.jsonl``), with scripted models.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from joydataforge.config.pipeline import Pipeline
from joydataforge.errors import ConfigError
from joydataforge.methods.rewrite.config import DEFAULT_TYPES, DOMAIN_TYPES, RewriteConfig
from joydataforge.prompts.renderer import PromptLibrary
from tests.scripted_backend import ScriptedBackend
from tests.support.harness import make_pipeline, registry_of, run_pipeline, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
CDSS = [json.loads(line) for line in (ROOT / "examples" / "cdss_dialogues.jsonl").read_text("utf-8").splitlines()]
PRESETS = {"孕期孕周": "zh/intent_binary_pregnancy", "药品": "zh/intent_binary_drug"}


def user_text(name: str, record: dict | None = None) -> str:
    return PromptLibrary().get(name).render(record or {"input": "q"})[-1]["content"]


# --- the binary re-checks -----------------------------------------------------------------------------------


def test_the_pregnancy_recheck_states_the_four_step_date_rule():
    text = user_text("zh/intent_binary_pregnancy")
    steps = re.findall(r"^\s*([1-4])\. (.*)$", text, re.M)
    assert [n for n, _ in steps] == ["1", "2", "3", "4"]
    assert "日期" in steps[0][1] and "怀孕" in steps[1][1] and "true" in steps[2][1]
    assert "历史对话" in steps[3][1] and "false" in steps[3][1]  # a date only in earlier turns does not count
    english = user_text("en/intent_binary_pregnancy")
    assert len(re.findall(r"^\s*[1-4]\. ", english, re.M)) == 4 and "earlier dialogue" in english


def test_the_drug_recheck_states_the_drug_name_rule():
    text = user_text("zh/intent_binary_drug")
    assert "具体名称" in text and "指代" in text and "购买" in text
    english = user_text("en/intent_binary_drug")
    assert "names it" in english and "refers to" in english and "buying" in english
    for name in ("zh/intent_binary_drug", "zh/intent_binary_pregnancy"):
        assert PromptLibrary().get(name).schema["required"] == ["match", "reason"]


def test_label_prompts_check_each_coarse_label_with_its_own_preset(tmp_path):
    turns = [{**r, "id": f"t{i}", "label": "其他"} for i, r in enumerate(CDSS)]  # 其他 is not checked
    turns[0]["label"], turns[1]["label"], turns[2]["label"] = "孕期孕周", "药品", "BMI"
    write_jsonl(tmp_path / "in.jsonl", turns)
    judge = ScriptedBackend(lambda messages, schema: json.dumps({"match": True, "reason": "ok"}))
    step = {
        "intent_binary": {
            "model": "judge",
            "prompt": "zh/dialogue_intent_binary",
            "check_labels": ["BMI", "孕期孕周", "药品"],
            "label_prompts": PRESETS,
        }
    }
    result = run_pipeline(make_pipeline(tmp_path, [step]), {"judge": judge}, registry=registry_of(["judge"]))
    assert result.failures == [] and len(judge.calls) == 3
    contents = [call["messages"][-1]["content"] for call in judge.calls]
    first, second, third = (next(c for c in contents if f"用户当前这句话：{turns[i]['input']}" in c) for i in range(3))
    assert "末次月经" in first and "4. " in first  # 孕期孕周 -> the pregnancy preset
    assert "具体名称" in second and "末次月经" not in second  # 药品 -> the drug preset
    assert "待审核的标签：BMI" in third  # no preset for BMI: the step's own prompt
    assert result.summary.steps["intent_binary"]["skipped"] == len(turns) - 3


def test_label_prompts_must_name_labels_that_are_checked():
    with pytest.raises(ConfigError, match="label_prompts: names labels that check_labels never lets through"):
        Pipeline.from_dict(
            {
                "input": {"path": "in.jsonl"},
                "steps": [{"intent_binary": {"model": "m", "check_labels": ["药品"], "label_prompts": PRESETS}}],
            }
        )


# --- the rewrite types --------------------------------------------------------------------------------------


def test_rewrite_presets_are_named_types_with_their_instructions():
    config = RewriteConfig(model="m", types=["问句药名替换", "末次月经日期改写", "表达润色", "paraphrase"])
    table = config.type_table()
    assert list(table) == ["问句药名替换", "末次月经日期改写", "表达润色", "paraphrase"]
    assert "同类药" in table["问句药名替换"] and "末次月经日期" in table["末次月经日期改写"]
    assert table["paraphrase"] == DEFAULT_TYPES["paraphrase"]
    assert RewriteConfig(model="m").type_table() == DEFAULT_TYPES  # presets only when named
    english = RewriteConfig(
        model="m", types=["drug_swap_query", "drug_swap_history", "lmp_date"], fields=["input", "history"]
    )
    assert all(english.type_table()[name] == DOMAIN_TYPES[name] for name in english.type_table())
    assert "same class" in DOMAIN_TYPES["drug_swap_query"] and "menstrual" in DOMAIN_TYPES["lmp_date"]


@pytest.mark.parametrize("name", ["历史药名替换", "drug_swap_history"])
def test_a_history_rewrite_needs_the_history_among_the_fields(name):
    with pytest.raises(ConfigError, match=f"types: '{name}' rewrites the history: add history to fields"):
        Pipeline.from_dict({"input": {"path": "in.jsonl"}, "steps": [{"rewrite": {"model": "m", "types": [name]}}]})


def test_the_history_drug_swap_rewrites_a_seed_dialogue_and_keeps_the_query(tmp_path):
    """The seed turn '收到、谢谢' follows a dialogue that names 肠炎宁: the history is rewritten, the query kept."""
    record = next(r for r in CDSS if "肠炎宁" in r["history"])
    write_jsonl(tmp_path / "in.jsonl", [{**record, "id": "t"}])

    def rewriter(messages, schema):
        prompt = messages[-1]["content"]
        assert "历史药名替换" in prompt and DOMAIN_TYPES["历史药名替换"] in prompt
        case = {
            "type": "历史药名替换",
            "input": record["input"],
            "history": record["history"].replace("肠炎宁", "蒙脱石散"),
        }
        return json.dumps({"cases": [case]}, ensure_ascii=False)

    step = {
        "rewrite": {"model": "m", "prompt": "zh/rewrite", "types": ["历史药名替换"], "fields": ["input", "history"]}
    }
    result = run_pipeline(
        make_pipeline(tmp_path, [step]), {"m": ScriptedBackend(rewriter)}, registry=registry_of(["m"])
    )
    assert result.failures == [] and len(result.data) == 1
    (case,) = result.data
    assert case["rewrite_type"] == "历史药名替换" and case["input"] == record["input"].strip()
    assert "肠炎宁" not in case["history"] and "蒙脱石散" in case["history"]
