"""Text normalisation and shingling for near-duplicate detection, in English, Chinese and both at once.

Why one token stream for every script: English separates words with spaces, so a word is the natural
token; Chinese (and Japanese) writes no spaces, so splitting on whitespace would turn a whole paragraph
into one "word", and the character is the natural token there. Mixed text (``请解释Python中的装饰器``,
prompts that quote code, drug names or English terms) needs both at once, so the default ``mixed`` mode
makes every Han/kana character a token and every run of other letters or digits a token, and takes
n-grams over that one stream, the same way for every record. Two records that differ by one token thus
share all shingles but the few that cover it, whatever their share of Han characters.

The earlier default, ``auto``, chose per record between word shingles and character shingles by a 30%
share of CJK characters; two near-identical records on either side of that cutoff got different kinds of
shingle and shared none, so they were never matched (2.6% of one-token edits lost on mixed prompts, see
``bench/mixed_shingles.py``). ``auto`` is kept for comparing with runs made before; ``word`` and ``char``
fix the kind for every record.

Normalisation, before any shingling: Unicode NFKC (full-width ``ＡＢＣ１２３`` and ``，`` become ASCII),
lower case, and every character that is not a letter or digit (``str.isalnum``) -- ASCII and
full-width punctuation such as ``，。、；：？！“”《》【】``, symbols, underscores, all whitespace --
becomes a separator. Two texts that differ only in case, punctuation or spacing therefore get the same
shingles.

Tokens:
  * ``mixed`` and ``word`` modes: a maximal run of non-CJK letters/digits is one token, and every CJK
    character is a token by itself. The two modes are the same shingling (``word`` is its older name).
  * ``char`` mode: every letter/digit is a token (separators are dropped), Latin letters included.
A shingle is ``n`` consecutive tokens of one record (``n`` = ``ngram``; by default 3, and 4 in ``char``
mode); a record with fewer than ``n`` tokens has one shingle made of all its tokens, so short records are
still compared; an empty record has none.

Two implementations of the same definition live here: :func:`shingle_set` (readable, one text, Python
strings; used by tests, by exact-Jaccard checks and to feed other libraries) and
:func:`shingle_hashes` (a whole batch at once with numpy, returning 32-bit shingle hashes; what
:class:`~joydataforge.text.minhash.MinHasher` uses). Tests check that they agree.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Mode = Literal["mixed", "auto", "word", "char"]
MODES: tuple[str, ...] = ("mixed", "auto", "word", "char")
DEFAULT_MODE: Mode = "mixed"

DEFAULT_NGRAM = {"word": 3, "char": 4}
"""Defaults sized for instruction-length records: one changed token (word or Han character) in a 30-token
text keeps the Jaccard similarity of 3-token shingles above about 0.8; ``char`` mode, whose tokens are
single letters, needs 4."""

DEFAULT_CJK_RATIO = 0.3
"""``auto`` uses character shingles when at least this share of a record's letters are CJK."""

_SEPARATORS = re.compile(r"[\W_]+")

# Scripts written without spaces between words: CJK ideographs (all extension blocks) and kana.
# Hangul is left out on purpose: Korean separates words with spaces.
_CJK_RANGES = (
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3134F),  # extensions B..H
)

# Classes in the code-point table: separator, word character, CJK word character.
SEP, WORD, CJK = 0, 1, 2
_TABLES: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
_HANGUL_JAMO = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xD7B0, 0xD7FF), (0xFFA0, 0xFFDC))
_TABLE_LIMIT = 0x30000  # above this only CJK extensions and rarely used scripts: NFKC/lower are identity


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-code-point lookup tables, built once per process (well under a second).

    * ``classes`` (uint8): 0 separator, 1 letter/digit, 2 CJK letter.
    * ``fold`` (uint32): ``NFKC(c).lower()`` for characters where that is one character.
    * ``hard`` (bool): characters whose normal form depends on their neighbours or is longer than one
      character (combining marks, Hangul jamo, ligatures such as ``ﬁ``, final sigma...). A text with one
      of them is normalised by Python's ``unicodedata`` instead; every other text is normalised by one
      numpy lookup, which gives the same result far faster (NFKC of a long Chinese text with full-width
      punctuation otherwise costs more than everything else together).
    """
    global _TABLES
    if _TABLES is None:
        size = 0x110000
        fold = np.arange(size, dtype=np.uint32)
        hard = np.zeros(size, dtype=bool)
        alnum = np.zeros(size, dtype=bool)
        nfkc, category = unicodedata.normalize, unicodedata.category
        for code in range(_TABLE_LIMIT):
            char = chr(code)
            alnum[code] = char.isalnum()
            cat = category(char)
            if cat == "Cn" or cat == "Cs":
                continue
            folded = nfkc("NFKC", char).lower()
            if len(folded) != 1 or cat[0] == "M" or category(folded)[0] == "M":
                hard[code] = True
            elif folded != char:
                fold[code] = ord(folded)
        upper = np.fromiter(
            (chr(c).isalnum() for c in range(_TABLE_LIMIT, size)), dtype=bool, count=size - _TABLE_LIMIT
        )
        alnum[_TABLE_LIMIT:] = upper
        hard[0xE0000:0xE1000] = True  # tags and variation selectors
        hard[0x03A3] = True  # capital sigma: lower() depends on whether it ends a word
        for low, high in _HANGUL_JAMO:
            hard[low : high + 1] = True
        classes = alnum.astype(np.uint8)
        for low, high in _CJK_RANGES:
            block = slice(low, high + 1)
            classes[block] = np.where(alnum[block], CJK, SEP)
        _TABLES = (classes, fold, hard)
    return _TABLES


def char_classes() -> np.ndarray:
    """The uint8 class table over all code points (see :func:`_tables`)."""
    return _tables()[0]


_CJK_CLASS = "".join(f"{chr(low)}-{chr(high)}" for low, high in _CJK_RANGES)
_CJK_CHAR = re.compile(f"[{_CJK_CLASS}]")
_WORD_TOKEN = re.compile(f"[{_CJK_CLASS}]|[^\\W_{_CJK_CLASS}]+")  # a CJK letter, or a run of other letters


def prenormalize(text: str) -> str:
    """NFKC then lower case: the part of normalisation done on Python strings.

    Separators are not collapsed here; the batch path treats every non-alphanumeric character as a
    separator when it classifies code points, which is the same thing and cheaper.
    """
    return unicodedata.normalize("NFKC", text).lower()


def normalize(text: str) -> str:
    """The full normal form: NFKC, lower case, punctuation/symbols/whitespace collapsed to one space."""
    return _SEPARATORS.sub(" ", prenormalize(text)).strip()


def _ratio_of_normalized(norm: str) -> float:
    letters = len(norm) - norm.count(" ")
    return len(_CJK_CHAR.findall(norm)) / letters if letters else 0.0


def cjk_ratio(text: str) -> float:
    """Share of CJK characters among the letters and digits of ``text`` (0.0 for no letters)."""
    return _ratio_of_normalized(normalize(text))


def _mode_error(mode: object) -> str:
    return f"shingle mode must be 'mixed', 'auto', 'word' or 'char', not {mode!r}"


def _mode_of_normalized(norm: str, mode: Mode, ratio: float) -> Literal["word", "char"]:
    if mode == "auto":
        letters = len(norm) - norm.count(" ")
        return "char" if letters and _ratio_of_normalized(norm) >= ratio else "word"
    if mode == "mixed":
        return "word"  # the same tokens (see the module docstring)
    if mode not in ("word", "char"):
        raise ValueError(_mode_error(mode))
    return mode


def choose_mode(text: str, mode: Mode = "auto", ratio: float = DEFAULT_CJK_RATIO) -> Literal["word", "char"]:
    """The token kind for one text: ``auto`` looks at its share of CJK letters; ``mixed`` is ``word``."""
    return _mode_of_normalized(normalize(text), mode, ratio)


def _tokens_of_normalized(norm: str, mode: Literal["word", "char"]) -> list[str]:
    if mode == "char":
        return list(norm.replace(" ", ""))
    return _WORD_TOKEN.findall(norm)


def tokens(text: str, mode: Literal["word", "char"]) -> list[str]:
    """The tokens of one text after normalisation (see the module docstring for the definition)."""
    return _tokens_of_normalized(normalize(text), mode)


def token_spans(text: str, mode: Mode = DEFAULT_MODE) -> list[tuple[int, int, str]]:
    """Each token of ``text`` as ``(start, end, normalised token)``, positions in the text as written.

    What a reader is shown (the report's cluster diffs) must differ only where dedup sees a difference: the
    tokens are those of :func:`tokens` (a Han/kana character, a run of other letters and digits, or every
    letter in ``char`` mode), a combining mark stays with the character before it, and each token is
    compared by its normal form, so case, full-width forms, punctuation and spacing never count.
    """
    by_char = (choose_mode(text, mode) if mode == "auto" else mode) == "char"
    spans: list[tuple[int, int]] = []
    run: int | None = None  # start of an open run of non-CJK letters (word tokens)
    for i, char in enumerate(text):
        if char.isalnum():
            if by_char or _CJK_CHAR.match(char):
                if run is not None:
                    spans.append((run, i))
                    run = None
                spans.append((i, i + 1))
            elif run is None:
                run = i
        elif unicodedata.category(char)[0] == "M" and (run is not None or (spans and spans[-1][1] == i)):
            if run is None:
                spans[-1] = (spans[-1][0], i + 1)
        elif run is not None:
            spans.append((run, i))
            run = None
    if run is not None:
        spans.append((run, len(text)))
    return [(start, end, normalize(text[start:end]).replace(" ", "")) for start, end in spans]


@dataclass(frozen=True)
class ShingleSpec:
    """How to shingle: mode, n-gram sizes per kind, and the CJK share that switches ``auto``."""

    mode: Mode = DEFAULT_MODE
    ngram: int | None = None
    cjk_ratio: float = DEFAULT_CJK_RATIO

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(_mode_error(self.mode))
        if self.ngram is not None and (not isinstance(self.ngram, int) or self.ngram < 1):
            raise ValueError(f"ngram must be a positive integer or None, not {self.ngram!r}")

    def size(self, kind: Literal["word", "char"]) -> int:
        return self.ngram if self.ngram is not None else DEFAULT_NGRAM[kind]


def shingle_set(text: str, spec: ShingleSpec = ShingleSpec()) -> set[str]:
    """The shingles of one text as strings (tokens joined by a space). Readable; not the fast path."""
    norm = normalize(text)
    kind = _mode_of_normalized(norm, spec.mode, spec.cjk_ratio)
    toks = _tokens_of_normalized(norm, kind)
    if not toks:
        return set()
    n = spec.size(kind)
    if len(toks) <= n:
        return {" ".join(toks)}
    return {" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1)}


# ---------------------------------------------------------------- the vectorised batch path

_M = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial token hash
_NGRAM_MULT = np.array(
    [
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0xD6E8FEB86659FD93,
        0xFF51AFD7ED558CCD,
        0xC4CEB9FE1A85EC53,
        0x94D049BB133111EB,
        0xBF58476D1CE4E5B9,
        0x2127599BF4325C37,
    ],
    dtype=np.uint64,
)
_powers = np.ones(1, np.uint64)


def _powers_of_m(length: int) -> np.ndarray:
    """``M**j`` modulo 2**64 for j < length (the longest token so far), cached."""
    global _powers
    if len(_powers) < length:
        size = max(length, 2 * len(_powers), 64)
        steps = np.full(size, _M, dtype=np.uint64)
        steps[0] = 1
        _powers = np.cumprod(steps, dtype=np.uint64)
    return _powers[:length]


def mix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, vectorised: turns structured integers into uniform bits."""
    x = x ^ (x >> np.uint64(33))
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


@dataclass
class ShingleBatch:
    """Shingle hashes of a batch of texts, flat: text ``i`` owns ``hashes[offsets[i]:offsets[i+1]]``.

    Hashes within one text may repeat (a repeated phrase); MinHash takes minima, so repeats are harmless
    and removing them would cost a sort.
    """

    hashes: np.ndarray  # uint32
    offsets: np.ndarray  # int64, len(texts) + 1
    char_mode: np.ndarray  # bool per text: True where character shingles were used

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def shingle_hashes(texts: Sequence[str], spec: ShingleSpec = ShingleSpec()) -> ShingleBatch:
    """Shingle a batch of texts with numpy and return 32-bit shingle hashes.

    How: the pre-normalised texts are joined with a separator and read as one array of code points; a
    table lookup classifies every code point (separator / letter / CJK letter); token boundaries are
    where the class changes; a token's hash is a polynomial hash ``sum c_j M^j`` (j from the token's
    start, so the value does not depend on where the token sits) summed per token by ``reduceat``; an
    n-gram's hash combines its tokens' hashes with fixed odd multipliers, then a 64-bit finaliser mixes
    it and the top 32 bits are kept. No Python work is done per token or per shingle.
    """
    n_texts = len(texts)
    if n_texts == 0:
        return ShingleBatch(np.zeros(0, np.uint32), np.zeros(1, np.int64), np.zeros(0, bool))
    texts = [t.replace("\x00", " ") if "\x00" in t else t for t in texts] if any("\x00" in t for t in texts) else texts
    classes_table, fold, hard = _tables()
    joined = "\x00".join(texts) + "\x00"  # NUL separates texts and ends the last one
    codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    hard_chars = np.flatnonzero(hard[codes])
    if len(hard_chars):
        # Texts with context-dependent characters go through unicodedata; the rest through the table.
        ends = np.flatnonzero(codes == 0)
        slow = set(np.searchsorted(ends, hard_chars).tolist())
        parts = [prenormalize(t) if i in slow else t for i, t in enumerate(texts)]
        joined = "\x00".join(parts) + "\x00"
        codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        lengths = np.fromiter((len(p) + 1 for p in parts), dtype=np.int64, count=n_texts)
        is_slow = np.zeros(n_texts, dtype=bool)
        is_slow[list(slow)] = True
        codes = np.where(np.repeat(is_slow, lengths), codes, fold[codes])
    else:
        codes = fold[codes]
    classes = classes_table[codes]
    text_end = np.flatnonzero(codes == 0)  # index of each text's terminating NUL
    text_begin = np.empty(n_texts, dtype=np.int64)
    text_begin[0] = 0
    text_begin[1:] = text_end[:-1] + 1

    # Mode per text, from running counts of letters and of CJK letters.
    is_letter = classes > SEP
    if spec.mode == "auto":
        running = np.zeros((2, len(codes) + 1), dtype=np.int32)
        np.cumsum(is_letter, out=running[0, 1:])
        np.cumsum(classes == CJK, out=running[1, 1:])
        letters = running[0, text_end] - running[0, text_begin]
        cjk = running[1, text_end] - running[1, text_begin]
        char_mode = (letters > 0) & (cjk >= spec.cjk_ratio * np.maximum(letters, 1))
    else:  # mixed, word, char: one kind for every text
        char_mode = np.full(n_texts, spec.mode == "char")

    # Token starts and ends (end = index one past the last character).
    is_letter = classes > SEP
    if char_mode.all():
        single = is_letter  # one-character tokens
    elif char_mode.any():
        single = (classes == CJK) | (np.repeat(char_mode, text_end - text_begin + 1) & is_letter)
    else:
        single = classes == CJK
    prev_run = np.zeros_like(is_letter)
    prev_run[1:] = is_letter[:-1] & ~single[:-1]
    starts_mask = single | (is_letter & ~prev_run)
    next_run = np.zeros_like(is_letter)
    next_run[:-1] = is_letter[1:] & ~single[1:]
    ends_mask = single | (is_letter & ~next_run)
    starts = np.flatnonzero(starts_mask)
    ends = np.flatnonzero(ends_mask) + 1

    # Polynomial hash of each token, sum c_j * M**j over its characters (j counted from the token's
    # start), summed per token with one reduceat; separators between tokens weigh zero.
    if len(starts) == 0:  # nothing but separators in the whole batch
        return ShingleBatch(np.zeros(0, np.uint32), np.zeros(n_texts + 1, np.int64), char_mode)
    token_of_char = np.cumsum(starts_mask, dtype=np.int32) - 1
    inside = is_letter & (token_of_char >= 0)
    offset_in_token = np.arange(len(codes), dtype=np.int32) - starts[np.maximum(token_of_char, 0)]
    weighted = (
        codes.astype(np.uint64)
        * _powers_of_m(int(offset_in_token.max(initial=0)) + 1)[np.where(inside, offset_in_token, 0)]
    )
    weighted[~inside] = 0
    token_hash = np.add.reduceat(weighted, starts)
    token_hash = mix64(token_hash + (ends - starts).astype(np.uint64))
    token_text = np.cumsum(codes == 0, dtype=np.int32)[starts]  # NULs before a token = its text

    # n-grams of consecutive tokens of the same text.
    tokens_per_text = np.bincount(token_text, minlength=n_texts)
    token_offsets = np.zeros(n_texts + 1, dtype=np.int64)
    np.cumsum(tokens_per_text, out=token_offsets[1:])
    n_of_text = np.where(char_mode, spec.size("char"), spec.size("word")).astype(np.int64)
    n_max = int(n_of_text.max())
    if n_max > len(_NGRAM_MULT):
        raise ValueError(f"ngram may be at most {len(_NGRAM_MULT)}, not {n_max}")
    n_tok = len(token_hash)
    # A shingle starts at token i of text t when i + n(t) <= end of t, or, for a text shorter than n,
    # at its first token only (one shingle of all its tokens).
    token_n = n_of_text[token_text]
    token_end = token_offsets[1:][token_text]
    position = np.arange(n_tok, dtype=np.int64)
    full = position + token_n <= token_end
    short = (tokens_per_text < n_of_text)[token_text] & (position == token_offsets[:-1][token_text])
    width = np.where(full, token_n, token_end - position)  # tokens in the shingle starting here
    keep = full | short
    acc = token_hash * _NGRAM_MULT[0]
    if n_max == 1:
        shingle = acc
    else:
        shingle = np.zeros(n_tok, dtype=np.uint64)
        for d in range(1, n_max):
            done = width == d  # shingles of d tokens are complete now
            shingle[done] = acc[done]
            acc[: n_tok - d] += token_hash[d:] * _NGRAM_MULT[d]
        done = width == n_max
        shingle[done] = acc[done]
    hashes = (mix64(shingle[keep]) >> np.uint64(32)).astype(np.uint32)
    per_text = np.bincount(token_text[keep], minlength=n_texts)
    offsets = np.zeros(n_texts + 1, dtype=np.int64)
    np.cumsum(per_text, out=offsets[1:])
    return ShingleBatch(hashes, offsets, char_mode)
