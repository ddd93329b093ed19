"""vLLM in-process ("offline" ``vllm.LLM``): for GPU users who want throughput without running a server.

``vllm.LLM.generate`` is a blocking call that is fastest when handed many prompts at once, while steps
send one request each from the event loop. So each loaded engine has one thread that drains a queue:
it takes every request waiting (after a short window for the first), hands them to vLLM as one batch, and
resolves each caller's future. Requests that arrive during a batch form the next one, so the batch width
is the model's concurrency limit: adaptive by default (:mod:`..adaptive`), which starts at 64, as
against a server of one's own, widens it while wider batches get more requests done per second and
stops where they no longer do, up to ``max_concurrency`` (256 by default for this backend); with
``concurrency: fixed`` it is ``max_concurrency`` from the first batch. ``batches`` keeps the widths handed
to vLLM. A failing batch is retried one request at a time, so a single over-long prompt fails alone and
never takes its neighbours with it.

vLLM is an optional extra (``pip install 'joydataforge[vllm]'``, Linux + NVIDIA GPU); nothing else in the
package imports it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError, ModelError
from .. import reasoning
from ..chat_template import ChatTemplateSource, load_chat_template_file
from ..config import ModelConfig
from .base import Backend, Completion, Messages, Usage

# Our parameter names -> vLLM SamplingParams fields. ``repeat_penalty`` is llama.cpp's spelling.
_PARAM_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "max_tokens": "max_tokens",
    "min_tokens": "min_tokens",
    "stop": "stop",
    "stop_token_ids": "stop_token_ids",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
    "repeat_penalty": "repetition_penalty",
    "seed": "seed",
    "ignore_eos": "ignore_eos",
    "skip_special_tokens": "skip_special_tokens",
    "logit_bias": "logit_bias",
}
BATCH_WINDOW_S = 0.005  # how long the first request of a batch waits for company


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise ConfigError(
            "the vllm backend needs vLLM (Linux with an NVIDIA GPU): pip install 'joydataforge[vllm]'; "
            "or serve the model with `vllm serve` and use backend: openai"
        ) from None
    return vllm


def sampling_params(
    vllm: Any,
    params: dict[str, Any],
    *,
    n: int = 1,
    seed: int | None = None,
    json_schema: dict[str, Any] | None = None,
    model: str = "",
) -> Any:
    """Our generation parameters as a ``vllm.SamplingParams``; unknown names are an error, not ignored."""
    unknown = sorted(set(params) - set(_PARAM_NAMES) - {"n"})
    if unknown:
        raise ModelError(
            f"model '{model}': the vllm backend does not know generation parameters {unknown} "
            f"(known: {', '.join(sorted(_PARAM_NAMES))})",
            model=model,
        )
    kwargs = {_PARAM_NAMES[k]: v for k, v in params.items() if k in _PARAM_NAMES and v is not None}
    kwargs["n"] = n
    if seed is not None and "seed" not in kwargs:
        kwargs["seed"] = seed
    if json_schema is not None:
        kwargs.update(_structured(json_schema))
    return vllm.SamplingParams(**kwargs)


def _structured(schema: dict[str, Any]) -> dict[str, Any]:
    """Grammar-constrained JSON: ``structured_outputs`` since vLLM 0.10.2, ``guided_decoding`` before."""
    module = importlib.import_module("vllm.sampling_params")  # not an attribute of vllm until imported
    if hasattr(module, "StructuredOutputsParams"):
        return {"structured_outputs": module.StructuredOutputsParams(json=schema)}
    return {"guided_decoding": module.GuidedDecodingParams(json=schema)}


@dataclass
class _Request:
    kind: str  # "generate", "chat" or "call" (run a function with the loaded LLM on the engine thread)
    payload: Any
    params: Any = None
    chat_template: str | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class _Engine:
    """One ``vllm.LLM`` per (model, engine args) per process, and the one thread that calls it."""

    _lock = threading.Lock()
    _engines: dict[tuple, "_Engine"] = {}

    def __init__(self, model: str, engine_args: dict[str, Any]):
        self.model = model
        self.engine_args = engine_args
        self.llm: Any = None
        self.load_error: BaseException | None = None
        self.batches: list[int] = []  # sizes of the batches handed to vLLM, for tests and tuning
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"vllm:{model}", daemon=True)
        self._thread.start()

    @classmethod
    def get(cls, model: str, engine_args: dict[str, Any]) -> "_Engine":
        key = (model, repr(sorted(engine_args.items())))
        with cls._lock:
            if key not in cls._engines:
                cls._engines[key] = cls(model, engine_args)
            return cls._engines[key]

    def submit(self, request: _Request) -> concurrent.futures.Future:
        self._queue.put(request)
        return request.future

    def _load(self) -> None:
        """Loading takes the GPU for minutes; it happens on this thread, never on the event loop."""
        self.llm = import_vllm().LLM(model=self.model, **self.engine_args)

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            time.sleep(BATCH_WINDOW_S)
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # A caller that gave up (its task was cancelled) is dropped; the others can no longer be cancelled.
            batch = [request for request in batch if request.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            if self.llm is None and self.load_error is None:
                try:
                    self._load()
                except BaseException as exc:
                    self.load_error = exc
            if self.load_error is not None:
                for request in batch:
                    request.future.set_exception(self.load_error)
                continue
            for group in _groups(batch):
                self._run(group)

    def _run(self, group: list[_Request]) -> None:
        try:
            outputs = self._call(group)
        except Exception as exc:
            if len(group) == 1:
                group[0].future.set_exception(exc)
                return
            for request in group:  # find the one that failed; the rest still get their replies
                self._run([request])
            return
        for request, output in zip(group, outputs):
            request.future.set_result(output)

    def _call(self, group: list[_Request]) -> list[Any]:
        first = group[0]
        if first.kind == "call":
            return [first.payload(self.llm)]
        self.batches.append(len(group))
        params = [request.params for request in group]
        if first.kind == "generate":
            outputs = self.llm.generate([r.payload for r in group], params, use_tqdm=False)
        else:
            outputs = self.llm.chat(
                [r.payload for r in group], params, use_tqdm=False, chat_template=first.chat_template
            )
        if len(outputs) != len(group):
            raise ModelError(f"vLLM returned {len(outputs)} outputs for {len(group)} prompts")
        return list(outputs)


def _groups(batch: list[_Request]) -> list[list[_Request]]:
    """Generate and chat requests go to different vLLM calls; function calls run alone."""
    groups: dict[tuple[str, str | None], list[_Request]] = {}
    alone: list[list[_Request]] = []
    for request in batch:
        if request.kind == "call":
            alone.append([request])
        else:
            groups.setdefault((request.kind, request.chat_template), []).append(request)
    return alone + list(groups.values())


class VLLMBackend(Backend):
    supports_grammar = True
    reward_batch_size = 64  # conversations per LLM.classify call; vLLM schedules them together

    def __init__(self, config: ModelConfig):
        self.config = config
        self.model = config.model_path or config.model
        if not self.model:
            raise ConfigError(
                f"model '{config.name}': the vllm backend needs model (a Hugging Face id or a local folder)"
            )
        self._template_file: ChatTemplateSource | None = (
            load_chat_template_file(config.chat_template) if config.chat_template else None
        )
        self._reasoning: tuple[Any, Any] | None = None  # (tokenizer, reasoning parser or None), see _reasoning_tools

    @property
    def _template_text(self) -> str | None:
        return self._template_file.template if self._template_file else None

    @property
    def engine(self) -> _Engine:
        return _Engine.get(self.model, dict(self.config.engine_args))

    async def _submit(self, request: _Request) -> Any:
        engine = self.engine
        try:
            return await asyncio.wrap_future(engine.submit(request))
        except (ModelError, ConfigError):
            raise
        except Exception as exc:
            name = self.config.name
            if exc is engine.load_error:
                raise ConfigError(
                    f"model '{name}': vLLM could not load '{self.model}': {type(exc).__name__}: {exc}"
                ) from None
            raise ModelError(f"model '{name}': vLLM: {type(exc).__name__}: {exc}", model=name) from None

    async def _submit_pooling(self, request: _Request, hint: str) -> Any:
        """A pooling call (embed, classify) on an engine that cannot do it (loaded for generation, or a model
        without that head): vLLM's refusal says so in one of these words; add what to change in models.yaml."""
        try:
            return await self._submit(request)
        except ModelError as exc:
            text = str(exc).lower()
            if not any(word in text for word in ("pooling", "classif", "not supported by this model")):
                raise
            raise ModelError(f"{exc} ({hint})", model=self.config.name) from None

    def _sampling(
        self, params: dict[str, Any], n: int, seed: int | None, json_schema: dict[str, Any] | None = None
    ) -> Any:
        return sampling_params(import_vllm(), params, n=n, seed=seed, json_schema=json_schema, model=self.config.name)

    def _completions(self, output: Any) -> list[Completion]:
        prompt_tokens = len(getattr(output, "prompt_token_ids", None) or [])
        return [
            Completion(
                text=sample.text,
                finish_reason=sample.finish_reason,
                model=self.config.model or self.model,
                usage=Usage(prompt_tokens if i == 0 else 0, len(sample.token_ids or [])),
            )
            for i, sample in enumerate(output.outputs)
        ]

    async def chat(
        self,
        messages: Messages,
        params: dict[str, Any],
        *,
        json_schema: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> Completion:
        request = _Request(
            "chat", list(messages), self._sampling(params, 1, seed, json_schema), chat_template=self._template_text
        )
        completion = self._completions(await self._submit(request))[0]
        tokenizer, parser = await self._reasoning_tools()
        trace = None
        if parser is not None:
            trace, content = _extract_reasoning(parser, completion.text, None)
            completion.text = content or ""
        return reasoning.apply(completion, self.config, trace, tokenize=_token_counter(tokenizer))

    async def _reasoning_tools(self) -> tuple[Any, Any]:
        """The loaded tokenizer (to count trace tokens) and vLLM's reasoning parser when ``engine_args`` names
        one (``reasoning_parser: deepseek_r1``, ``qwen3``, ...): made once, on the engine's thread. Where no
        parser is named, ``<think>`` tags in the text are the fallback (:func:`..reasoning.apply`)."""
        if self._reasoning is None:
            # The parser plays a server's reasoning field: read with `reasoning: auto` or `field`; `tags` ignores
            # it and `none` keeps the reply whole, so they need none.
            used = self.config.reasoning in ("auto", "field")
            name = self.config.engine_args.get("reasoning_parser") if used else None
            self._reasoning = await self._submit(_Request("call", lambda llm: _reasoning_parts(llm, name)))
        return self._reasoning

    async def complete(self, prompt: str, params: dict[str, Any], *, seed: int | None = None) -> Completion:
        return (await self.complete_n(prompt, params, 1, seed=seed))[0]

    async def complete_n(
        self, prompt: str, params: dict[str, Any], n: int, *, seed: int | None = None
    ) -> list[Completion]:
        """``SamplingParams.n``: vLLM prefills the prompt once and forks its KV cache for the samples."""
        return self._completions(await self._submit(_Request("generate", prompt, self._sampling(params, n, seed))))

    async def chat_template(self) -> ChatTemplateSource | None:
        """``chat_template`` from models.yaml when set, else the served tokenizer's own template."""
        if self._template_file is not None:
            return self._template_file
        return await self._submit(_Request("call", _tokenizer_template))

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return (await self.embed_with_usage(texts))[0]

    async def embed_with_usage(self, texts: list[str]) -> tuple[list[list[float]], int | None]:
        """``LLM.embed``: an embedding model, or any model loaded with ``engine_args: {runner: pooling,
        convert: embed}``. One call per batch of texts (the caller batches), on the engine's thread."""
        batch = list(texts)
        outputs = await self._submit_pooling(
            _Request("call", lambda llm: llm.embed(batch, use_tqdm=False)),
            "load an embedding model, or give this model engine_args: {runner: pooling, convert: embed}: a model "
            "loaded for generation cannot embed",
        )
        vectors = [[float(x) for x in output.outputs.embedding] for output in outputs]
        return vectors, sum(len(getattr(output, "prompt_token_ids", None) or []) for output in outputs)

    async def reward(self, conversations: list[Messages], params: dict[str, Any]) -> list[float]:
        """``LLM.classify`` on a sequence-classification reward model (``runner: pooling``), the raw logit
        (``use_activation: false`` unless params say otherwise), as the transformers backend scores it: the
        chat template writes the special tokens, so the text is tokenized without adding them again."""
        unknown = sorted(set(params) - {"use_activation"})
        if unknown:
            raise ModelError(
                f"model '{self.config.name}': the vllm backend's reward takes only use_activation, not {unknown}",
                model=self.config.name,
            )
        template = self._template_text
        use_activation = bool(params.get("use_activation", False))
        name = self.config.name

        def score(llm: Any) -> list[Any]:
            from ..reward import conversation_token_ids

            tokenizer = llm.get_tokenizer()
            if template is None and not getattr(tokenizer, "chat_template", None):
                raise ModelError(
                    f"model '{name}': the tokenizer has no chat template; set chat_template (a "
                    "tokenizer_config.json or .jinja file) in models.yaml",
                    model=name,
                )
            prompts = [
                {"prompt_token_ids": conversation_token_ids(tokenizer, template, conversation)}
                for conversation in conversations
            ]
            return llm.classify(prompts, use_tqdm=False, pooling_params=_pooling_params(use_activation))

        outputs = await self._submit_pooling(
            _Request("call", score),
            "reward scores need a sequence-classification reward model loaded with engine_args: {runner: pooling}",
        )
        scores = []
        for output in outputs:
            values = list(output.outputs.probs)
            if len(values) != 1:
                raise ModelError(
                    f"model '{name}': {len(values)} scores per conversation; a reward model has one (num_labels=1)",
                    model=name,
                )
            scores.append(float(values[0]))
        return scores


def _pooling_params(use_activation: bool) -> Any:
    """``use_activation`` since vLLM 0.10.2; ``activation`` before."""
    pooling = importlib.import_module("vllm.pooling_params")
    try:
        return pooling.PoolingParams(use_activation=use_activation)
    except TypeError:
        return pooling.PoolingParams(activation=use_activation)


def _reasoning_parts(llm: Any, parser_name: str | None) -> tuple[Any, Any]:
    """The engine's tokenizer and, when ``parser_name`` is given, an instance of vLLM's reasoning parser of
    that name (``vllm.reasoning.ReasoningParserManager``: the parser ``vllm serve --reasoning-parser`` uses)."""
    tokenizer = llm.get_tokenizer()
    if not parser_name:
        return tokenizer, None
    try:
        from vllm.reasoning import ReasoningParserManager  # type: ignore[import-not-found]

        parser_class = ReasoningParserManager.get_reasoning_parser(parser_name)
    except (ImportError, KeyError) as exc:
        raise ConfigError(
            f"vLLM has no reasoning parser '{parser_name}' (engine_args.reasoning_parser): {_one_line(exc)}"
        ) from None
    try:
        return tokenizer, parser_class(tokenizer)
    except (RuntimeError, ValueError) as exc:  # the parser's tags are not tokens of this model's vocabulary
        raise ConfigError(
            f"vLLM's reasoning parser '{parser_name}' does not fit this model (engine_args.reasoning_parser): "
            f"{_one_line(exc)}"
        ) from None


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (a KeyError's str() is the repr of its argument)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split())


def _extract_reasoning(parser: Any, text: str, request: Any) -> tuple[str | None, str | None]:
    """``(trace, answer)`` by vLLM's parser; its method was ``extract_reasoning_content`` before vLLM 0.10."""
    extract = getattr(parser, "extract_reasoning", None) or parser.extract_reasoning_content
    return extract(text, request)


def _token_counter(tokenizer: Any) -> Any:
    """Tokens of a text by the served model's tokenizer, or None when there is none to ask."""
    if tokenizer is None or not hasattr(tokenizer, "encode"):
        return None
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def _tokenizer_template(llm: Any) -> ChatTemplateSource | None:
    tokenizer = llm.get_tokenizer()
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return None
    return ChatTemplateSource(
        template,
        getattr(tokenizer, "bos_token", None) or "",
        getattr(tokenizer, "eos_token", None) or "",
        origin=f"vLLM tokenizer chat_template: {getattr(tokenizer, 'name_or_path', '')}",
    )
