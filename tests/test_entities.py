"""Entity diversity: fields as the seed stores them, extractors, and metrics against hand-computed values."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from joydataforge.evaluate.entities import (
    ENTITY_SCHEMA,
    EntityExtractor,
    JiebaEntityExtractor,
    LLMEntityExtractor,
    OfflineEntityExtractor,
    count_diversity,
    entities_from_fields,
    entities_from_records,
    entity_metrics,
    extract_entities,
    normalize_mention,
)

FIXTURES = Path(__file__).parent / "fixtures"


def seed_records() -> list[dict]:
    """The seed's agent_intent/examples.json, with its 6 KB system prompt dropped (tests/fixtures)."""
    return [
        json.loads(line) for line in (FIXTURES / "agent_intent_records.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def test_seed_fields_are_found_and_strings_are_never_split():
    maps = entities_from_records(seed_records())
    assert maps[0] == {"Medications": ["维生素ad滴剂"]}
    assert maps[5] == {"Symptoms": ["久坐"], "Anatomical Parts": ["屁股"]}
    assert maps[6] == {}
    # query, target, history, id are never entities; no single characters from them either
    every = [m for entities in maps for ms in entities.values() for m in ms]
    assert len(every) == 11
    assert "维" not in every and "腱" not in every


def test_include_exclude_and_string_values():
    record = {
        "query": "腱鞘炎怎么治",
        "Diseases": "腱鞘炎",
        "Drugs": ["布洛芬", " ", "Vitamin  D "],
        "labels": ["a"],
        "n": 3,
    }
    # automatic detection only takes lists of strings, so a free-text field cannot sneak in
    assert entities_from_fields(record) == {"Drugs": ["布洛芬", "vitamin d"]}
    # a string in a named field is one entity, whole
    assert entities_from_fields(record, include=["Diseases"]) == {"Diseases": ["腱鞘炎"]}
    assert entities_from_fields(record, include=["Diseases", "Drugs"], exclude=["Drugs"]) == {"Diseases": ["腱鞘炎"]}
    assert entities_from_fields(record, include=["Drugs"], casefold=False) == {"Drugs": ["布洛芬", "Vitamin D"]}
    assert entities_from_fields(record, include=["missing"]) == {}
    # naming a field uses it, even one that automatic detection skips; it is still one entity
    assert entities_from_fields(record, include=["query"]) == {"query": ["腱鞘炎怎么治"]}
    assert entities_from_fields(record, exclude=[]) == {"Drugs": ["布洛芬", "vitamin d"], "labels": ["a"]}
    with pytest.raises(ValueError, match="field 'bad'"):
        entities_from_fields({"bad": {"x": 1}}, include=["bad"])


def test_normalize_mention():
    assert normalize_mention("  Vitamin\tD ") == "vitamin d"
    assert normalize_mention("维生素ＡＤ滴剂") == "维生素ad滴剂"  # full-width letters unified
    assert normalize_mention("ＡＤ", casefold=False) == "AD"


def test_metrics_of_the_seed_records_by_hand():
    m = entity_metrics(entities_from_records(seed_records()))
    assert m["records"] == 10 and m["records_with_entities"] == 9 and m["coverage"] == pytest.approx(0.9)
    # 11 mentions of 11 different entities
    e = m["entities"]
    assert (e["total"], e["unique"]) == (11, 11)
    assert e["shannon_entropy_nats"] == pytest.approx(math.log(11))
    assert e["gini_simpson"] == pytest.approx(10 / 11)
    assert e["inverse_simpson"] == pytest.approx(11.0)
    # types: Medications 4, Symptoms 3, Anatomical Parts 2, Diseases 1, Medical Professionals 1
    t = m["types"]
    assert (t["total"], t["unique"]) == (11, 5)
    assert t["top"] == [
        ["Medications", 4],
        ["Symptoms", 3],
        ["Anatomical Parts", 2],
        ["Diseases", 1],
        ["Medical Professionals", 1],
    ]
    h = -(
        4 / 11 * math.log(4 / 11)
        + 3 / 11 * math.log(3 / 11)
        + 2 / 11 * math.log(2 / 11)
        + 2 * (1 / 11) * math.log(1 / 11)
    )
    assert t["shannon_entropy_nats"] == pytest.approx(h)
    assert t["gini_simpson"] == pytest.approx(1 - 31 / 121)
    assert t["inverse_simpson"] == pytest.approx(121 / 31)
    per = m["per_type"]
    assert per["Medications"]["coverage"] == pytest.approx(0.4)
    assert per["Symptoms"]["coverage"] == pytest.approx(0.3)
    assert per["Anatomical Parts"]["coverage"] == pytest.approx(0.2)
    assert per["Diseases"]["coverage"] == pytest.approx(0.1)
    assert per["Medications"]["unique"] == 4 and per["Medications"]["records"] == 4


def test_metrics_with_repeats_by_hand():
    maps = [{"A": ["x", "x", "y"]}, {"B": ["x"]}, {}]
    m = entity_metrics(maps)
    e = m["entities"]  # x:3, y:1
    assert (e["total"], e["unique"]) == (4, 2)
    assert e["shannon_entropy_nats"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert e["gini_simpson"] == pytest.approx(0.375)
    assert e["inverse_simpson"] == pytest.approx(1.6)
    assert e["top"] == [["x", 3], ["y", 1]]
    a = m["per_type"]["A"]  # x:2, y:1
    assert a["gini_simpson"] == pytest.approx(4 / 9) and a["inverse_simpson"] == pytest.approx(9 / 5)
    assert a["coverage"] == pytest.approx(1 / 3) and m["coverage"] == pytest.approx(2 / 3)
    assert m["types"]["top"] == [["A", 3], ["B", 1]]


def test_count_diversity_edge_cases():
    assert count_diversity({}) == {
        "total": 0,
        "unique": 0,
        "shannon_entropy_nats": 0.0,
        "gini_simpson": 0.0,
        "inverse_simpson": 0.0,
    }
    one = count_diversity({"only": 5})
    assert one["shannon_entropy_nats"] == 0.0 and one["gini_simpson"] == 0.0 and one["inverse_simpson"] == 1.0
    even = count_diversity({"a": 2, "b": 2, "c": 2, "d": 2})
    assert even["shannon_entropy_nats"] == pytest.approx(math.log(4)) and even["inverse_simpson"] == pytest.approx(4)
    assert entity_metrics([])["coverage"] == 0.0


class FakeGatewayModel:
    """Answers like ModelClient.chat_json: (value, completion), and remembers what it was asked."""

    name = "extractor"

    def __init__(self, reply):
        self.reply = reply
        self.asked: list = []

    async def chat_json(self, messages, schema):
        self.asked.append((messages, schema))
        await asyncio.sleep(0)
        return self.reply, object()


async def test_llm_extractor_filters_types_and_invented_mentions():
    reply = {
        "entities": [
            {"type": "medications", "text": "维生素AD滴剂"},
            {"type": "Diseases", "text": "佝偻病"},  # not in the text: dropped
            {"type": "Company", "text": "京东"},  # not an allowed type: dropped
            {"type": "Symptoms", "text": ""},  # empty: dropped
            {"bad": "item"},
        ]
    }
    model = FakeGatewayModel(reply)
    extractor = LLMEntityExtractor(model, types=["Medications", "Diseases", "Symptoms"])
    assert isinstance(extractor, EntityExtractor)
    out = await extractor.extract("京东上的维生素AD滴剂怎么用？")
    assert out == {"Medications": ["维生素ad滴剂"]}
    messages, schema = model.asked[0]
    assert schema == ENTITY_SCHEMA
    assert (
        "Medications, Diseases, Symptoms" in messages[0]["content"] and "维生素AD滴剂怎么用" in messages[0]["content"]
    )
    loose = LLMEntityExtractor(model, require_in_text=False)
    assert (await loose.extract("维生素AD滴剂"))["Diseases"] == ["佝偻病"]


async def test_llm_extractor_accepts_a_plain_callable_and_runs_in_order():
    async def chat_json(messages, schema):
        text = messages[0]["content"].rsplit("\n", 1)[-1]
        await asyncio.sleep(0.01 if "first" in text else 0)
        return {"entities": [{"type": "T", "text": text.split()[0]}]}

    extractor = LLMEntityExtractor(chat_json)
    done = []
    out = await extract_entities(["first one", "second", "third"], extractor, concurrency=2, progress=done.append)
    assert out == [{"T": ["first"]}, {"T": ["second"]}, {"T": ["third"]}]
    assert sorted(done) == [1, 2, 3]
    with pytest.raises(TypeError, match="chat_json"):
        LLMEntityExtractor(object())


async def test_jieba_offline_chinese():
    pytest.importorskip("jieba")
    out = await JiebaEntityExtractor().extract("帮我预约北京协和医院的张医生")
    assert out == {"ORGANIZATION": ["北京协和医院"]}  # the one-character name 张 is below min_length
    nouns = await JiebaEntityExtractor(nouns=True).extract("推荐一下那个腱鞘炎的药。")
    assert nouns == {"NOUN": ["腱鞘炎"]}


async def test_offline_extractor_routes_by_script():
    class English:
        identity = "en"

        async def extract(self, text):
            return {"EN": [text.split()[0]]}

    routed = OfflineEntityExtractor(other=English())
    assert routed.is_chinese("维生素AD滴剂怎么用") and not routed.is_chinese("Vitamin AD drops")
    assert await routed.extract("Vitamin AD drops") == {"EN": ["Vitamin"]}
    assert await OfflineEntityExtractor().extract("Vitamin AD drops") == {}
    pytest.importorskip("jieba")
    assert "ORGANIZATION" in await routed.extract("北京协和医院在哪里")


async def test_spacy_extractor_maps_labels(monkeypatch):
    """spaCy itself is optional; a stand-in pipeline checks the mapping from its entities to ours."""
    from types import SimpleNamespace

    from joydataforge.evaluate.entities import SpacyEntityExtractor

    def nlp(text):
        return SimpleNamespace(
            ents=[
                SimpleNamespace(text="Dr. Chen", label_="PERSON"),
                SimpleNamespace(text="Peking  Union Hospital", label_="ORG"),
                SimpleNamespace(text="today", label_="DATE"),
            ]
        )

    extractor = SpacyEntityExtractor("en_core_web_sm", labels=["PERSON", "ORG"])
    monkeypatch.setattr(extractor, "_load", lambda: nlp)
    assert await extractor.extract("...") == {"PERSON": ["dr. chen"], "ORG": ["peking union hospital"]}
