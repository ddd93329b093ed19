"""A stand-in for ``vllm`` in tests: same call shapes as vLLM's offline ``LLM``, no GPU, no model.

Text is drawn from a small vocabulary by a generator seeded with (prompt, seed, sample index), so a
seeded request always gets the same reply and the ``n`` samples of one request differ. Raw prompts that
end a user-turn header (Magpie's pre-query) get a question (in Chinese after a Chinese system prompt); JSON-constrained requests get an object that
fits the schema. A prompt containing ``FAIL_IN_VLLM`` raises, as vLLM does for a prompt that is too long.
A prompt containing ``THINK_IN_VLLM`` gets a thinking model's reply (``<think>trace</think>`` then the answer;
``THINK_CLOSE_IN_VLLM``: only ``trace</think>``, as when the chat template opened the block), which
``vllm.reasoning``'s parsers split.
``LLM.embed`` answers only when loaded with ``runner="pooling"``, as vLLM does. Every call is recorded in
``CALLS`` (kind, batch size, thread id, sampling params) for assertions.
"""
from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LLM", "SamplingParams", "CALLS", "LOADS", "DELAY_S"]


def __getattr__(name: str) -> Any:
    """Lazy like vLLM's own ``__init__``: ``vllm.sampling_params`` is no attribute until something imports it."""
    if name == "SamplingParams":
        from .sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module vllm has no attribute {name}")

CALLS: list[dict[str, Any]] = []
LOADS: list[dict[str, Any]] = []
DELAY_S = 0.05  # each generate() takes this long, so requests pile up into batches as on a GPU

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
WORDS = ("data", "model", "river", "garden", "python", "music", "history", "energy", "market", "protein",
         "planet", "poem", "recipe", "budget", "network", "engine", "theorem", "language", "city", "window")
VERBS = ("explain", "write", "compare", "summarise", "design", "translate", "improve", "plan")
ZH_WORDS = ("数据", "模型", "河流", "花园", "音乐", "历史", "能源", "市场", "蛋白质", "城市")
ZH_VERBS = ("解释", "写", "比较", "总结", "设计", "改进")


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class RequestOutput:
    prompt: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


class _Tokenizer:
    chat_template = CHATML
    bos_token = None
    eos_token = "<|im_end|>"

    def __init__(self, name: str):
        self.name_or_path = name

    def apply_chat_template(self, conversation: list[dict[str, str]], *, tokenize: bool = True,
                            chat_template: str | None = None) -> str:
        assert not tokenize
        prefix = "[custom]" if chat_template else ""
        return prefix + "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in conversation)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [sum(map(ord, word)) % 997 for word in text.split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    def get_vocab(self) -> dict[str, int]:
        """A thinking model's tags are tokens of its vocabulary (vLLM's parsers look them up); a model whose name
        says ``no-think-tokens`` has none, like Qwen2.5 or Llama."""
        vocab = {word: k + 2 for k, word in enumerate(WORDS)}
        if "no-think-tokens" not in self.name_or_path:
            vocab.update({"<think>": 151667, "</think>": 151668})
        return vocab


def _reply(prompt: str, params: Any, index: int) -> CompletionOutput:
    rng = random.Random(f"{prompt}|{params.seed}|{index}|{params.temperature}")
    if params.structured_outputs is not None:
        text = json.dumps(_fit(params.structured_outputs.json, rng))
    elif prompt.endswith("user\n") and any("\u4e00" <= ch <= "\u9fff" for ch in prompt):  # a Chinese system prompt
        text = f"请问如何{rng.choice(ZH_VERBS)}一篇关于{rng.choice(ZH_WORDS)}和{rng.choice(ZH_WORDS)}的文章？<|im_end|>\n回答"
    elif prompt.endswith("user\n"):
        text = f"How can I {rng.choice(VERBS)} a {rng.choice(WORDS)} about {rng.choice(WORDS)}?<|im_end|>\nanswer"
    elif "THINK_IN_VLLM" in prompt or "THINK_CLOSE_IN_VLLM" in prompt:
        trace = f"weighing {rng.choice(WORDS)} against {rng.choice(WORDS)}"
        answer = " ".join(rng.choice(WORDS) for _ in range(3))
        opened = "" if "THINK_CLOSE_IN_VLLM" in prompt else "<think>\n"
        text = f"{opened}{trace}\n</think>\n\n{answer}"
    else:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
    for stop in ([params.stop] if isinstance(params.stop, str) else params.stop or []):
        if stop in text:
            text = text[:text.index(stop)]
            return CompletionOutput(index, text, list(range(len(text.split()))), "stop")
    words = text.split()
    limit = params.max_tokens or 16
    if len(words) > limit:
        text = " ".join(words[:limit])
        return CompletionOutput(index, text, list(range(limit)), "length")
    return CompletionOutput(index, text, list(range(len(words))), "stop")


def _fit(schema: dict[str, Any], rng: random.Random) -> Any:
    kind = schema.get("type")
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if kind == "object":
        return {key: _fit(sub, rng) for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [_fit(schema.get("items", {"type": "string"}), rng)]
    if kind == "integer":
        return int(schema.get("minimum", 0)) + rng.randint(0, 3)
    if kind == "number":
        return float(schema.get("minimum", 0)) + rng.random()
    if kind == "boolean":
        return rng.random() < 0.5
    return rng.choice(WORDS)


def _render(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


@dataclass
class EmbeddingOutput:
    embedding: list[float]


@dataclass
class EmbeddingRequestOutput:
    prompt_token_ids: list[int]
    outputs: EmbeddingOutput


@dataclass
class ClassificationOutput:
    probs: list[float]


@dataclass
class ClassificationRequestOutput:
    prompt_token_ids: list[int]
    outputs: ClassificationOutput


class LLM:
    def __init__(self, model: str, **kwargs: Any):
        LOADS.append({"model": model, "kwargs": kwargs, "thread": threading.get_ident()})
        if model.startswith("missing/"):
            raise OSError(f"{model} is not a local folder and is not a valid model identifier")
        self.model = model
        self.runner = kwargs.get("runner", "generate")

    def classify(self, prompts: Any, *, use_tqdm: bool = True, pooling_params: Any = None,
                 **kwargs: Any) -> list[ClassificationRequestOutput]:
        """A one-label "reward model": the mean token id / 1000 as the logit; sigmoid unless use_activation is
        False (vLLM's default applies it). Prompts are ``{"prompt_token_ids": [...]}`` dicts or strings."""
        import math

        if self.runner != "pooling":
            raise ValueError("LLM.classify() is only supported for pooling models. Try passing `--runner pooling`")
        prompts = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        CALLS.append({"kind": "classify", "size": len(prompts), "thread": threading.get_ident(), "prompts": prompts,
                      "params": [pooling_params], "use_tqdm": use_tqdm})
        outputs = []
        for prompt in prompts:
            ids = prompt["prompt_token_ids"] if isinstance(prompt, dict) else _Tokenizer("")(prompt)["input_ids"]
            logit = sum(ids) / max(len(ids), 1) / 1000
            use_activation = pooling_params is None or pooling_params.use_activation is not False
            value = 1 / (1 + math.exp(-logit)) if use_activation else logit
            outputs.append(ClassificationRequestOutput(list(ids), ClassificationOutput([value])))
        return outputs

    def embed(self, prompts: Any, *, use_tqdm: bool = True, **kwargs: Any) -> list[EmbeddingRequestOutput]:
        """Like vLLM: only for models loaded as pooling models; a unit vector per text, seeded by the text."""
        if self.runner != "pooling":
            raise ValueError("LLM.embed() is only supported for pooling models. Try passing `--runner pooling`")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        CALLS.append({"kind": "embed", "size": len(prompts), "thread": threading.get_ident(), "prompts": prompts,
                      "params": [], "use_tqdm": use_tqdm})
        outputs = []
        for prompt in prompts:
            rng = random.Random(prompt)
            vector = [rng.gauss(0, 1) for _ in range(8)]
            norm = sum(x * x for x in vector) ** 0.5
            outputs.append(EmbeddingRequestOutput(list(range(len(prompt.split()))),
                                                  EmbeddingOutput([x / norm for x in vector])))
        return outputs

    def get_tokenizer(self) -> _Tokenizer:
        return _Tokenizer(self.model)

    def generate(self, prompts: Any, sampling_params: Any = None, *, use_tqdm: bool = True) -> list[RequestOutput]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not isinstance(sampling_params, list):
            from .sampling_params import SamplingParams

            sampling_params = [sampling_params or SamplingParams()] * len(prompts)
        params = sampling_params
        if len(params) != len(prompts):
            raise ValueError("the lengths of prompts and sampling_params must be the same")
        CALLS.append({"kind": "generate", "size": len(prompts), "thread": threading.get_ident(), "params": params,
                      "prompts": prompts, "use_tqdm": use_tqdm})
        time.sleep(DELAY_S)
        for prompt in prompts:
            if "FAIL_IN_VLLM" in prompt:
                raise ValueError("The decoder prompt is longer than the maximum model length")
        return [RequestOutput(prompt, list(range(len(prompt.split()))), [_reply(prompt, p, i) for i in range(p.n)])
                for prompt, p in zip(prompts, params)]

    def chat(self, messages: Any, sampling_params: Any = None, use_tqdm: bool = True,
             chat_template: str | None = None, **kwargs: Any) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        outputs = self.generate([_render(c) for c in conversations], sampling_params, use_tqdm=use_tqdm)
        CALLS[-1]["kind"] = "chat"
        CALLS[-1]["chat_template"] = chat_template
        return outputs
