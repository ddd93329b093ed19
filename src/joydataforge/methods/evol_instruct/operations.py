"""Evol-Instruct's vocabulary: the evolution operations, the elimination rules and the selection rule.

Everything here is a pure function of text and numbers, so each rule is tested exactly, without a
model. The step (:mod:`.evol_instruct`) decides when to call a model; this module decides what the
replies mean.

Operations (WizardLM, Xu et al. 2023, section 3.1, plus the seed's own depth operation):

========================  =======  ===================================================================
name                      kind     what the evolving model is asked to do
========================  =======  ===================================================================
``constraints``           depth    add one more constraint or requirement
``deepen``                depth    ask about the issue in more depth and breadth
``concretize``            depth    replace general concepts with more specific ones
``reasoning``             depth    require explicit multi-step reasoning
``complicate_input``      depth    add structured input to work on (a table, code, data, a case)
``redirect``              depth    the seed's operation: change the direction or scope of the inquiry
                                   to a neighbouring category (the child gets that new category)
``breadth``               breadth  a new, rarer instruction of the same domain, similar length and tone
========================  =======  ===================================================================

Elimination (WizardLM section 3.3, "Elimination Evolving"): a child is dropped when it

1. adds no information over its parent (an LLM judges the pair: :data:`EQUAL` / :data:`NOT_EQUAL`);
2. makes the answering model refuse ("sorry" and a short reply; the paper uses < 80 words), or gets an
   answer with no content (punctuation and stop words only): :func:`is_unanswerable`;
3. copies words of the evolving prompt itself ("#Rewritten Prompt#", "given prompt"...): :func:`leaked_phrase`;
4. is a near-duplicate of an instruction already in the tree: :class:`TreeIndex`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ...text.minhash import exact_jaccard
from ...text.shingles import ShingleSpec, normalize, shingle_set

Kind = Literal["depth", "breadth"]


@dataclass(frozen=True)
class Operation:
    """One way to evolve an instruction; ``prompt`` is the prompt file's base name (per language)."""

    name: str
    kind: Kind
    prompt: str
    new_label: bool = False  # the reply names the child's category (the seed's ``changeType``)


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("constraints", "depth", "evol_depth"),
        Operation("deepen", "depth", "evol_depth"),
        Operation("concretize", "depth", "evol_depth"),
        Operation("reasoning", "depth", "evol_depth"),
        Operation("complicate_input", "depth", "evol_depth"),
        Operation("redirect", "depth", "evol_redirect", new_label=True),
        Operation("breadth", "breadth", "evol_breadth"),
    )
}

# ---------------------------------------------------------------- leaks of the evolving prompt

DEFAULT_LEAK_PHRASES: tuple[str, ...] = (
    "#the given prompt#",
    "#given prompt#",
    "#rewritten prompt#",
    "#created prompt#",
    "given prompt",
    "rewritten prompt",
    "created prompt",
    "the given instruction",
    "rewritten instruction",
    "#给定的提示#",
    "#重写后的提示#",
    "#创建的提示#",
    "给定的提示",
    "重写后的提示",
    "创建的提示",
    "给定的指令",
    "改写后的指令",
    "原始指令",
    "#category#",
    "#分类#",
)
_SPACES = re.compile(r"\s+")


def leaked_phrase(instruction: str, phrases: Iterable[str] = DEFAULT_LEAK_PHRASES) -> str | None:
    """The first phrase of the evolving prompt found in ``instruction`` (case and spacing ignored), else None."""
    text = _SPACES.sub(" ", instruction.lower())
    for phrase in phrases:
        if _SPACES.sub(" ", phrase.lower()) in text:
            return phrase
    return None


def copied_from_prompt(instruction: str, prompt_text: str, min_chars: int = 8) -> bool:
    """True when the instruction appears verbatim (normalised) in the evolving prompt's own text.

    Small models often hand back the prompt's worked example ("My hands and feet are always cold,
    why?") or a line of its rules; that is a leak of the prompt as much as "#Rewritten Prompt#" is.
    The caller removes the parent's own text (and any history) from ``prompt_text`` first, since
    repeating the parent is the equal rule's business. Very short instructions are not tested.
    """
    norm = normalize(instruction)
    return len(norm) >= min_chars and norm in normalize(prompt_text)


# ---------------------------------------------------------------- unanswerable instructions

REFUSAL_MARKERS: tuple[str, ...] = (
    "sorry",
    "apologize",
    "apologise",
    "i cannot",
    "i can't",
    "i can not",
    "i am unable",
    "i'm unable",
    "unable to answer",
    "cannot answer",
    "as an ai",
    "抱歉",
    "对不起",
    "无法回答",
    "不能回答",
    "我无法",
    "我不能",
    "很遗憾",
    "无法提供",
)
STOP_WORDS: frozenset[str] = frozenset(
    "a an the and or but of to in on at for with is are was were be been it this that these those i you he she "
    "we they me my your yes no ok okay not so as by from do does did have has had will would can could "
    "的 了 吗 呢 吧 啊 是 和 与 在 有 我 你 他 她 它 这 那 就 也 都 而 及 嗯 哦 好".split()
)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def count_words(text: str) -> int:
    """Words as the paper counts them, with each CJK character counted as one word (Chinese has no spaces)."""
    cjk = len(_CJK.findall(text))
    latin = len(_WORD.findall(_CJK.sub(" ", text)))
    return cjk + latin


def content_words(text: str) -> list[str]:
    """Tokens that are neither punctuation nor stop words (CJK characters one by one)."""
    tokens = _CJK.findall(text) + _WORD.findall(_CJK.sub(" ", text.lower()))
    return [t for t in tokens if t not in STOP_WORDS]


def is_unanswerable(answer: str, max_words: int = 80, markers: Iterable[str] = REFUSAL_MARKERS) -> str | None:
    """Why the answering model could not answer (``"refusal"``, ``"no_content"``), or None if it did.

    A refusal is a marker ("sorry", "抱歉"...) in a reply shorter than ``max_words``: long answers that
    apologise in passing are still answers, as in the paper.
    """
    if not content_words(answer):
        return "no_content"
    lowered = answer.lower()
    if count_words(answer) < max_words and any(m in lowered for m in markers):
        return "refusal"
    return None


# ---------------------------------------------------------------- near-duplicates in the tree


class TreeIndex:
    """The instructions of one evolution tree, for near-duplicate checks.

    Two instructions are duplicates when their normal forms (NFKC, lower case, punctuation collapsed)
    are equal, or when the exact Jaccard similarity of their shingle sets (character 4-grams for
    Chinese, word 3-grams otherwise: the MinHash module's shingling) reaches ``threshold``. A tree holds
    tens of instructions, so exact Jaccard is cheaper than signatures and has no estimation error.
    """

    def __init__(self, threshold: float = 0.7, spec: ShingleSpec | None = None):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"duplicate threshold must be in (0, 1], not {threshold!r}")
        self.threshold = threshold
        self.spec = spec or ShingleSpec()
        self._items: list[tuple[str, str, set[str]]] = []  # (id, normal form, shingles)

    def __len__(self) -> int:
        return len(self._items)

    def find(self, instruction: str) -> tuple[str, float] | None:
        """``(id, similarity)`` of the most similar instruction at or above the threshold, else None."""
        norm = normalize(instruction)
        shingles = shingle_set(instruction, self.spec)
        best: tuple[str, float] | None = None
        for node_id, other_norm, other_shingles in self._items:
            similarity = 1.0 if norm == other_norm else exact_jaccard(shingles, other_shingles)
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (node_id, similarity)
        return best

    def add(self, node_id: str, instruction: str) -> None:
        self._items.append((node_id, normalize(instruction), shingle_set(instruction, self.spec)))


# ---------------------------------------------------------------- judging

VALID_SCALE = {1: "valid", -1: "wrong tone or incomplete", -2: "vague reference"}
INVALID_SCORE_CAP = 30
EQUAL, NOT_EQUAL = "equal", "not_equal"
_NUMBER = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(?:分|points?|pts?|/\s*100|%)?\s*$", re.IGNORECASE)


class JudgingError(ValueError):
    """A judge reply whose ``valid`` or ``score`` is not a usable number."""


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or value is None:
        raise JudgingError(f"{field} is {value!r}, not a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _NUMBER.match(value)
        if not match:
            raise JudgingError(f"{field} is {value!r}, not a number")
        number = float(match.group(1))
    else:
        raise JudgingError(f"{field} is a {type(value).__name__}, not a number")
    if not math.isfinite(number):
        raise JudgingError(f"{field} is {value!r}, not a finite number")
    return number


def parse_judgement(reply: Any) -> tuple[int, int, bool]:
    """``(valid, score, capped)`` from a judge's JSON reply; raises :class:`JudgingError` when unusable.

    Accepts numbers and numeric strings ("65", "65分", "65/100"); ``valid`` must be one of the seed's
    -2, -1, 1 and ``score`` lie in 0..100 (rounded to an integer). An invalid child's score is capped
    at 30, as the seed's rubric requires; ``capped`` says whether that happened.
    """
    if not isinstance(reply, dict):
        raise JudgingError(f"reply is a {type(reply).__name__}, not an object")
    valid_number = _number(reply.get("valid"), "valid")
    if valid_number not in VALID_SCALE:
        raise JudgingError(f"valid is {reply.get('valid')!r}, not one of -2, -1, 1")
    valid = int(valid_number)
    score_number = _number(reply.get("score"), "score")
    if not 0 <= score_number <= 100:
        raise JudgingError(f"score {reply.get('score')!r} is outside 0..100")
    score = int(round(score_number))
    capped = valid < 1 and score > INVALID_SCORE_CAP
    return valid, (INVALID_SCORE_CAP if capped else score), capped


def parse_verdict(reply: Any) -> bool:
    """True when the equal-judge says the child is equal to its parent (no information gain)."""
    verdict = reply.get("verdict") if isinstance(reply, dict) else reply
    if not isinstance(verdict, str):
        raise JudgingError(f"verdict is {verdict!r}, not '{EQUAL}' or '{NOT_EQUAL}'")
    key = _SPACES.sub("_", verdict.strip().lower()).replace("-", "_")
    if key in (EQUAL, "相同", "等价"):
        return True
    if key in (NOT_EQUAL, "不同", "不等价"):
        return False
    raise JudgingError(f"verdict is {verdict!r}, not '{EQUAL}' or '{NOT_EQUAL}'")


# ---------------------------------------------------------------- selection


def carry_count(n_valid: int, top_fraction: float) -> int:
    """How many valid children go on to the next round: ``floor(n * p)``, but at least one if any is valid.

    Computed on the valid children only (the seed computed it before filtering, so invalid children
    shrank nothing but inflated the count).
    """
    if n_valid <= 0:
        return 0
    return max(1, math.floor(n_valid * top_fraction + 1e-9))


def select_top(candidates: Sequence[dict[str, Any]], top_fraction: float) -> list[dict[str, Any]]:
    """The valid candidates to carry on: highest score first; ties keep generation order (stable sort)."""
    valid = [c for c in candidates if c.get("valid") == 1 and isinstance(c.get("score"), int)]
    ranked = sorted(valid, key=lambda c: -c["score"])
    return ranked[: carry_count(len(valid), top_fraction)]
