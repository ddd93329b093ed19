"""A stand-in for ``vllm.reasoning``: the reasoning parsers that ``vllm serve --reasoning-parser NAME`` uses.

Only what JoyDataForge calls, with vLLM's names and behaviour (vllm/reasoning/abs_reasoning_parsers.py and
basic_parsers.py): ``ReasoningParserManager.get_reasoning_parser(name)`` returns a parser class or raises
``KeyError``; ``Parser(tokenizer)`` looks its tags up in ``tokenizer.get_vocab()`` and raises ``RuntimeError``
when they are not tokens of the model; ``parser.extract_reasoning(model_output, request)`` returns
``(reasoning, content)``: the ``<think>`` tag is dropped if the output has it, everything before ``</think>``
is reasoning, and an output without ``</think>`` is all reasoning (the model was cut off while thinking).
As in vLLM 0.32, ``qwen3`` (there an adapter of the engine's parser) does not look its tags up.
``LEGACY = True`` gives the parsers only the old method name, ``extract_reasoning_content`` (older vLLM).
``CREATED`` records each parser made, for assertions.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReasoningParser", "ReasoningParserManager", "LEGACY", "CREATED"]

LEGACY = False
CREATED: list[dict[str, Any]] = []


class ReasoningParser:
    """vLLM's base class: keeps the model's tokenizer."""

    def __init__(self, tokenizer: Any, *args: Any, **kwargs: Any):
        self.model_tokenizer = tokenizer

    @property
    def vocab(self) -> dict[str, int]:
        return self.model_tokenizer.get_vocab()


class BaseThinkingReasoningParser(ReasoningParser):
    start_token = "<think>"
    end_token = "</think>"
    looks_up_tags = True

    def __init__(self, tokenizer: Any, *args: Any, **kwargs: Any):
        super().__init__(tokenizer, *args, **kwargs)
        if not self.model_tokenizer:
            raise ValueError(
                "The model tokenizer must be passed to the ReasoningParser constructor during construction."
            )
        self.start_token_id = self.vocab.get(self.start_token)
        self.end_token_id = self.vocab.get(self.end_token)
        if self.looks_up_tags and (self.start_token_id is None or self.end_token_id is None):
            raise RuntimeError(
                f"{type(self).__name__} reasoning parser could not locate think start/end tokens in the tokenizer!"
            )
        CREATED.append({"parser": type(self).__name__, "tokenizer": getattr(tokenizer, "name_or_path", None)})

    def _extract(self, model_output: str, request: Any) -> tuple[str | None, str | None]:
        before, found, after = model_output.partition(self.start_token)
        model_output = after if found else before
        if self.end_token not in model_output:
            return model_output, None
        reasoning, _, content = model_output.partition(self.end_token)
        return reasoning, content or None

    def __getattr__(self, name: str) -> Any:
        # vLLM renamed extract_reasoning_content to extract_reasoning; LEGACY offers only the old name.
        if name == ("extract_reasoning_content" if LEGACY else "extract_reasoning"):
            return self._extract
        raise AttributeError(name)


class DeepSeekR1ReasoningParser(BaseThinkingReasoningParser):
    pass


class Qwen3ReasoningParser(BaseThinkingReasoningParser):
    looks_up_tags = False


class ReasoningParserManager:
    reasoning_parsers: dict[str, type[ReasoningParser]] = {
        "deepseek_r1": DeepSeekR1ReasoningParser,
        "qwen3": Qwen3ReasoningParser,
    }

    @classmethod
    def get_reasoning_parser(cls, name: str) -> type[ReasoningParser]:
        if name in cls.reasoning_parsers:
            return cls.reasoning_parsers[name]
        registered = ", ".join(sorted(cls.reasoning_parsers))
        raise KeyError(f"Reasoning parser '{name}' not found. Available parsers: {registered}")

    @classmethod
    def list_registered(cls) -> list[str]:
        return sorted(cls.reasoning_parsers)
