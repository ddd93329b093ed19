"""Cleaning and filtering of Magpie instructions, each drop with its reason.

A model that writes the user's turn itself leaks all sorts of things into it: labels it saw in training
data ("Question:", "**Task:**", "1."), a markdown header, the answer after the question, template tokens
when a server ignores the stop strings, an assistant greeting instead of a user request. The rewrites
repair what can be repaired; the filters drop the rest and say why, so a run can report its drop rate
per reason (``drop_reasons`` lists them in the order they are checked).

Exact and near-duplicate removal needs every earlier instruction, so it is not here: pipelines run the
streaming ``minhash_dedup`` step between instructions and responses, and :func:`exact_key` is the
normalisation used to count exact duplicates.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from .config import CleaningConfig
from .language import detect_language

DROP_REASONS = (
    "truncated",
    "empty",
    "no_text",
    "too_short",
    "too_long",
    "repetitive",
    "assistant_voice",
    "not_a_request",
    "language",
)

# Template tokens that must never be part of an instruction: <|im_end|>, <end_of_turn>, [/INST], <｜User｜>.
_SPECIAL_TOKEN = re.compile(r"<\|[^<>|\s]{1,40}\|>|<(?:start|end)_of_turn>|\[/?INST\]|<｜[^<>]{1,40}｜>|</s>")

# Where an answer (or the next speaker) begins after the question.
_ANSWER_START = re.compile(
    r"(?:\n|^)\s*(?:\*\*|#+\s*)?(?:Answer|Answers|Response|Solution|Explanation|Assistant|AI|A|Output|Reply|"
    r"User|Human|Q|Question \d+)\s*(?:\*\*)?\s*[:：]"
    r"|(?:\n|^)\s*(?:\*\*)?(?:答案|回答|解答|答|助手|回复|解析|用户|问)\s*(?:\*\*)?\s*[:：]"
    r"|(?:The answer is|The correct answer is|Correct answer:)",
)

_LABEL_WORDS_EN = (
    r"Question|Task|Instruction|Instructions|Prompt|Original Prompt|Query|Request|Problem|User|Human|"
    r"Input|Scenario|Situation|Context|Challenge|Description|Exercise|Q"
)
_LEAKED_PREFIXES = [
    re.compile(r"^#{1,6}\s+"),  # markdown header
    re.compile(
        rf"^\*{{0,2}}(?:{_LABEL_WORDS_EN})(?:\s*\d+)?\s*(?:[:：]\s*\*{{0,2}}|\*{{0,2}}\s*[:：])\s*", re.IGNORECASE
    ),
    re.compile(rf"^\*\*(?:{_LABEL_WORDS_EN})(?:\s*\d+)?\*\*\s*", re.IGNORECASE),
    re.compile(r"^\*{0,2}(?:问题|任务|指令|用户|提问|题目|请求|输入|问)\s*\d*\s*\*{0,2}\s*[:：]\s*"),
    re.compile(r"^(?:\d{1,3}\s*[.)、．](?!\d)|[(（]\d{1,3}[)）]|#\d{1,3}|[-*•]\s)\s*"),  # numbering, bullets
]
_QUOTES = {'"': '"', "“": "”", "'": "'", "「": "」", "『": "』", "《": "》"}

_ASSISTANT_VOICE = re.compile(
    r"^(?:Sure|Certainly|Of course|Absolutely|Great question|Good question|I'd be (?:happy|glad)|"
    r"I would be (?:happy|glad)|I'm (?:happy|glad) to|(?:Hello|Hi|Hey)[!,.]?\s*(?:there[!,.]?\s*)?How (?:can|may) I|"
    r"How (?:can|may) I (?:help|assist) you|As an AI|I am an AI|I'm an AI|I am a language model|"
    r"I'm a language model|Thank you for (?:your|the) question)"
    r"|^(?:当然|好的[，,！!。]|没问题|你好[！!，,。]?\s*(?:有什么|我能|请问有什么)|我是一?个?(?:AI|人工智能|语言模型)|"
    r"作为一?个?(?:AI|人工智能|语言模型)|很高兴为您|以下是)",
    re.IGNORECASE,
)

_REQUEST_START_EN = frozenset(
    """
what how why when where which who whom whose can could would should is are am do does did will may might shall
was were have has had explain describe write create list give tell generate provide summarize summarise translate
solve calculate compute find design develop implement compare analyze analyse suggest recommend rewrite edit
convert classify identify determine evaluate prove show define outline draft compose plan make fix debug optimize
optimise improve name predict estimate brainstorm help imagine suppose consider let assume act pretend simplify
expand paraphrase correct proofread review check build construct derive factor sort count extract rank rate
discuss elaborate argue critique assess choose pick draw sketch code program refactor answer complete fill
continue finish use apply propose offer please
""".split()
)
_REQUEST_CUES_EN = re.compile(
    r"\b(?:please|help me|can you|could you|would you|i need|i want|i'd like|i would like|"
    r"looking for|how to|how do|tell me|show me|give me|"
    r"any (?:tips|advice|ideas|suggestions))\b",
    re.IGNORECASE,
)
_REQUEST_CUES_ZH = re.compile(
    r"吗|呢|什么|怎么|怎样|如何|为什么|为何|哪|多少|几[个种次天岁]|是否|请|"
    r"帮我|帮忙|能否|能不能|可以|可否|写|给出|解释|介绍|翻译|计算|求|设计|列出|列举|总结|分析|比较|推荐|"
    r"告诉我|生成|描述|说明|建议"
)
_WORD = re.compile(r"[A-Za-z\u00c0-\u024f0-9']+|[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


_DEFAULTS = CleaningConfig()  # the defaults of the `cleaning` setting are the rules' defaults


@dataclass(frozen=True)
class CleaningRules:
    """Settings of :func:`clean_instruction` (the YAML key ``cleaning`` of the ``magpie`` step, read by
    :class:`~joydataforge.methods.magpie.config.CleaningConfig`).

    ``min_units``/``max_units`` count words, with each CJK character one unit. ``languages`` keeps only
    instructions detected as one of them (``["zh"]``); ``None`` keeps all (the language is still recorded).
    ``require_request``: drop outputs that ask nothing (no question mark, no request wording).
    """

    min_units: int = _DEFAULTS.min_units
    max_units: int = _DEFAULTS.max_units
    languages: tuple[str, ...] | None = None
    require_request: bool = _DEFAULTS.require_request
    stops: tuple[str, ...] = ()  # the template's end-of-turn strings: cut there if a server ignored them

    @classmethod
    def from_config(cls, config: CleaningConfig) -> CleaningRules:
        """The rules a step's ``cleaning`` setting asks for."""
        languages = None if config.languages is None else tuple(str(x) for x in config.languages)
        return cls(
            min_units=config.min_units,
            max_units=config.max_units,
            languages=languages,
            require_request=config.require_request,
        )


@dataclass
class Cleaned:
    """An instruction after cleaning: ``drop`` is the reason it was dropped, else ``None``."""

    text: str
    drop: str | None
    language: str
    edits: list[str] = field(default_factory=list)  # which rewrites applied, in order

    @property
    def kept(self) -> bool:
        return self.drop is None


def cut_special_tokens(text: str, stops: tuple[str, ...] = ()) -> str:
    """Everything before the first template token or stop string (a server may ignore stop strings)."""
    cut = len(text)
    for stop in stops:
        if stop and stop in text:
            cut = min(cut, text.index(stop))
    match = _SPECIAL_TOKEN.search(text)
    if match:
        cut = min(cut, match.start())
    return text[:cut]


def cut_leaked_answer(text: str) -> str:
    """The question without the answer (or next speaker) the model went on to write."""
    for match in _ANSWER_START.finditer(text):
        if match.start() > 0:  # a label at the very start is a leaked prefix, not an answer
            return text[: match.start()]
    return text


def strip_leaked_prefixes(text: str) -> str:
    """Remove labels, headers and numbering in front of the instruction (repeatedly: "1. **Task:** ...")."""
    for _ in range(4):
        before = text
        for pattern in _LEAKED_PREFIXES:
            text = pattern.sub("", text, count=1).lstrip()
        if text == before:
            break
    return text


def strip_wrapping_quotes(text: str) -> str:
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]] and text.count(text[0]) <= 2:
        return text[1:-1].strip()
    return text


def units(text: str) -> int:
    """Words, each CJK character counting as one."""
    return len(_WORD.findall(text))


def is_repetitive(text: str) -> bool:
    """A decoding loop: one line over and over, or very few distinct words in a long text."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) >= 3 and max(lines.count(line) for line in set(lines)) >= 3:
        return True
    tokens = [t.lower() for t in _WORD.findall(text)]
    return len(tokens) >= 24 and len(set(tokens)) / len(tokens) < 0.3


def looks_like_request(text: str) -> bool:
    """A question or an instruction: a question mark, request wording, or an imperative/interrogative start."""
    if "?" in text or "？" in text or _REQUEST_CUES_EN.search(text) or _REQUEST_CUES_ZH.search(text):
        return True
    first = re.match(r"[A-Za-z']+", text)
    return bool(first and first.group(0).lower() in _REQUEST_START_EN)


def exact_key(text: str) -> str:
    """What two instructions must share to be exact duplicates: case, width, spacing and punctuation aside."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join("".join(c if c.isalnum() else " " for c in text).split())


def clean_instruction(raw: str, finish_reason: str | None = None, rules: CleaningRules = CleaningRules()) -> Cleaned:
    """Repair what can be repaired, then apply the filters in :data:`DROP_REASONS` order."""
    edits: list[str] = []

    def step(name: str, new: str, old: str) -> str:
        if new.strip() != old.strip():
            edits.append(name)
        return new

    if finish_reason == "length":
        # The model was cut off: the instruction is unfinished, and nothing after it can be trusted.
        return Cleaned(raw.strip(), "truncated", detect_language(raw), edits)
    text = raw
    text = step("cut_special_tokens", cut_special_tokens(text, rules.stops), text)
    text = step("cut_answer", cut_leaked_answer(text), text)
    text = step("strip_prefix", strip_leaked_prefixes(text.strip()), text)
    text = step("strip_quotes", strip_wrapping_quotes(text.strip()), text)
    text = text.strip()
    language = detect_language(text)

    def verdict(reason: str | None) -> Cleaned:
        return Cleaned(text, reason, language, edits)

    if not text:
        return verdict("empty")
    if not any(ch.isalpha() for ch in text):
        return verdict("no_text")
    count = units(text)
    if count < rules.min_units:
        return verdict("too_short")
    if count > rules.max_units:
        return verdict("too_long")
    if is_repetitive(text):
        return verdict("repetitive")
    if _ASSISTANT_VOICE.search(text):
        return verdict("assistant_voice")
    if rules.require_request and not looks_like_request(text):
        return verdict("not_a_request")
    if rules.languages is not None and language not in rules.languages:
        return verdict("language")
    return verdict(None)
