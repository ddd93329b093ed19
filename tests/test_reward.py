"""The gateway's reward verb: vLLM's /pooling endpoint (against a small aiohttp server made here), a local
transformers reward model built in the test (random weights, tiny tokenizer: nothing is downloaded), and
the clear refusal of backends that cannot score."""

import json
import math

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from joydataforge.errors import ConfigError, ModelError
from joydataforge.models.cache import CallCache
from joydataforge.models.config import ModelRegistry
from joydataforge.models.gateway import Gateway
from joydataforge.models.reward import as_conversation, parse_pooling_reply, server_root

CONVERSATIONS = [
    [{"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine thanks"}],
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hello there how are you today"},
    ],
    [{"role": "user", "content": "the weather"}, {"role": "assistant", "content": "sunny"}],
]


# --- vLLM-style server ------------------------------------------------------------------------------


class PoolingServer:
    """``POST /pooling`` as vLLM answers it for a one-label classifier: ``data[0].data == [score]``."""

    def __init__(self, fail_first: int = 0, shape: str = "flat"):
        self.requests: list[dict] = []
        self.fail_first = fail_first
        self.shape = shape
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "0"})
        if "messages" not in body:
            return web.json_response({"error": "messages required"}, status=400)
        score = len(body["messages"][-1]["content"]) / 10
        data = [score] if self.shape == "flat" else [[0.0], [score]] if self.shape == "tokens" else [score, 1.0]
        return web.json_response(
            {
                "id": "pool-1",
                "object": "list",
                "model": body["model"],
                "data": [{"index": 0, "object": "pooling", "data": data}],
                "usage": {"prompt_tokens": 5, "total_tokens": 5},
            }
        )

    async def __aenter__(self) -> "PoolingServer":
        app = web.Application()
        app.router.add_post("/pooling", self.handle)
        self.server = TestServer(app)
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.server.close()

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("/v1"))


def server_gateway(base_url: str, cache: CallCache | None = None, **extra) -> Gateway:
    registry = ModelRegistry.from_dict(
        {
            "models": {
                "rm": {
                    "backend": "openai",
                    "model": "Skywork/Skywork-Reward-V2-Qwen3-0.6B",
                    "base_url": base_url,
                    "max_retries": 2,
                    **extra,
                }
            }
        },
        "test",
    )
    return Gateway(registry, cache=cache)


async def test_pooling_endpoint_scores_each_conversation_in_order():
    async with PoolingServer() as server:
        gateway = server_gateway(server.base_url, params={"use_activation": False})
        scores = await gateway.model("rm").reward(CONVERSATIONS)
        await gateway.close()
    assert scores == [len("fine thanks") / 10, len("hello there how are you today") / 10, 0.5]
    assert len(server.requests) == 3  # one request per conversation, sent to the root (not /v1/pooling)
    assert {json.dumps(r["messages"]) for r in server.requests} == {json.dumps(c) for c in CONVERSATIONS}
    assert all(
        r["model"] == "Skywork/Skywork-Reward-V2-Qwen3-0.6B" and r["use_activation"] is False for r in server.requests
    )


async def test_pooling_retries_transient_errors_and_caches(tmp_path):
    async with PoolingServer(fail_first=1) as server:
        cache = CallCache(tmp_path / "calls.sqlite")
        gateway = server_gateway(server.base_url, cache=cache)
        first = await gateway.model("rm").reward([("hi", "hello"), ("hi", "hey")])
        assert gateway.usage["rm"].retries == 1
        again = await gateway.model("rm").reward([("hi", "hey"), ("hi", "hello")])
        await gateway.close()
    assert first == [0.5, 0.3] and again == [0.3, 0.5]
    assert len(server.requests) == 3 and gateway.usage["rm"].cache_hits == 2


async def test_pooling_token_rows_take_the_last_and_multi_label_is_refused():
    async with PoolingServer(shape="tokens") as server:
        gateway = server_gateway(server.base_url)
        assert await gateway.model("rm").reward([("q", "abcde")]) == [0.5]
        await gateway.close()
    async with PoolingServer(shape="two_labels") as server:
        gateway = server_gateway(server.base_url)
        with pytest.raises(ModelError, match="2 values per input"):
            await gateway.model("rm").reward([("q", "abcde")])
        await gateway.close()


def test_reply_parsing_and_urls():
    assert parse_pooling_reply({"data": [{"data": [1.5]}]}, "m") == 1.5
    assert parse_pooling_reply({"data": [{"data": 2}]}, "m") == 2.0
    with pytest.raises(ModelError, match="without data"):
        parse_pooling_reply({"error": "x"}, "m")
    with pytest.raises(ModelError, match="finite"):
        parse_pooling_reply({"data": [{"data": [math.nan]}]}, "m")
    assert server_root("http://h:8000/v1/") == "http://h:8000"
    assert server_root("http://h:8000") == "http://h:8000"


def test_conversation_checks():
    assert as_conversation(("q", "a"), 0)[-1] == {"role": "assistant", "content": "a"}
    with pytest.raises(ModelError, match="must end with the assistant"):
        as_conversation([{"role": "user", "content": "q"}], 3)
    with pytest.raises(ModelError, match="item 1 must be a non-empty list"):
        as_conversation([], 1)


async def test_llamacpp_backend_refuses_rewards_clearly():
    registry = ModelRegistry.load()
    gateway = Gateway(registry)
    with pytest.raises(ModelError, match="llamacpp backend cannot score rewards"):
        await gateway.model("smollm2").reward([("q", "a")])


def test_transformers_backend_config_errors():
    from joydataforge.models.reward import TransformersRewardBackend

    with pytest.raises(ConfigError, match="needs model_path"):
        TransformersRewardBackend(
            ModelRegistry.from_dict({"models": {"rm": {"backend": "transformers"}}}, "t").get("rm")
        )
    with pytest.raises(ConfigError, match="unknown params"):
        TransformersRewardBackend(
            ModelRegistry.from_dict(
                {"models": {"rm": {"backend": "transformers", "model_path": "/x", "params": {"temperature": 0.2}}}}, "t"
            ).get("rm")
        )


# --- local transformers model ---------------------------------------------------------------------

CHAT_TEMPLATE = "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"


def build_tiny_reward_model(
    path, *, with_template: bool = True, seed: int = 0, hidden_size: int = 32, heads: int = 4, kv_heads: int = 2
) -> None:
    """A 2-layer Llama sequence classifier (num_labels=1, random weights) and a word-level tokenizer.

    vLLM's CPU attention wants heads of 32+ dimensions: tests/test_vllm_real.py asks for a wider one."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(
        {w for c in CONVERSATIONS for m in c for w in f"{m['role']} : {m['content']}".split()} | {"q", "a", "long"}
    )
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    if with_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        num_labels=1,
        pad_token_id=0,
        max_position_embeddings=256,
    )
    transformers.LlamaForSequenceClassification(config).save_pretrained(path)


def local_gateway(path, **params) -> Gateway:
    body = {"backend": "transformers", "model_path": str(path), "n_ctx": 64, "n_threads": 1}
    if params:
        body["params"] = params
    return Gateway(ModelRegistry.from_dict({"models": {"rm": body}}, "test"))


async def test_local_reward_model_shapes_determinism_and_batching(tmp_path):
    build_tiny_reward_model(tmp_path / "rm")
    batched = local_gateway(tmp_path / "rm", batch_size=3, device="cpu")
    single = local_gateway(tmp_path / "rm", batch_size=1, device="cpu")
    scores = await batched.model("rm").reward(CONVERSATIONS)
    again = await batched.model("rm").reward(CONVERSATIONS)
    one_by_one = await single.model("rm").reward(CONVERSATIONS)
    await batched.close()
    await single.close()
    assert len(scores) == 3 and all(isinstance(s, float) and math.isfinite(s) for s in scores)
    assert scores == again  # deterministic
    assert len(set(scores)) == 3  # different conversations, different scores (random weights, not constant)
    # Padding in a batch must not change a conversation's score.
    assert scores == pytest.approx(one_by_one, abs=1e-5)

    # The same number as the model itself gives, computed by hand from the chat template.
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "rm")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    ids = tokenizer(
        tokenizer.apply_chat_template(CONVERSATIONS[1], tokenize=False), add_special_tokens=False, return_tensors="pt"
    )
    with torch.no_grad():
        expected = float(model(**ids).logits[0, 0])
    assert scores[1] == pytest.approx(expected, abs=1e-5)


async def test_local_reward_model_errors_are_clear(tmp_path):
    build_tiny_reward_model(tmp_path / "rm")
    gateway = local_gateway(tmp_path / "rm")
    with pytest.raises(ModelError, match="longer than n_ctx=64"):
        await gateway.model("rm").reward([("q", " ".join(["long"] * 80))])
    with pytest.raises(ModelError, match="reward model"):
        await gateway.model("rm").chat([{"role": "user", "content": "hi"}])
    await gateway.close()
    build_tiny_reward_model(tmp_path / "bare", with_template=False)
    gateway = local_gateway(tmp_path / "bare")
    with pytest.raises(ModelError, match="no chat template"):
        await gateway.model("rm").reward([("q", "a")])
    await gateway.close()
    gateway = local_gateway(tmp_path / "missing")
    with pytest.raises(ModelError, match="cannot load"):
        await gateway.model("rm").reward([("q", "a")])
    await gateway.close()
