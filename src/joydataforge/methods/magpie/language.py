"""Which language an instruction is in, from the scripts its characters belong to.

A script count is exact for what Magpie users filter on most (Chinese against English; the seed's users
wanted Chinese), needs no model or download, and costs microseconds. It names a language only where the
script implies it: Han without kana is ``zh``, kana ``ja``, Hangul ``ko``; Latin-script text is ``en``
when English function words carry it, else ``latin`` (French, Spanish...: the script cannot tell them
apart). Other scripts get their script's name (``cyrillic``, ``arabic``...); nothing readable, ``unknown``.

Chinese characters count one each and Latin letters count per *word*: a Han character carries about a
word's meaning, so "用Python写一个排序函数" is Chinese although it holds six Latin letters.
"""

from __future__ import annotations

import re

_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+")
_ENGLISH = frozenset(
    """
a about above after all also am an and any are as at be because been before being below between both but by
can could did do does doing down during each few for from further had has have having he her here hers him his
how i if in into is it its just me more most my no nor not now of off on once only or other our out over own
please same she should so some such than that the their them then there these they this those through to too
under until up very was we were what when where which while who whom why will with would you your
""".split()
)

_RANGES: list[tuple[str, tuple[tuple[int, int], ...]]] = [
    ("kana", ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))),
    ("han", ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))),
    ("hangul", ((0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F))),
    ("cyrillic", ((0x0400, 0x04FF),)),
    ("arabic", ((0x0600, 0x06FF), (0x0750, 0x077F))),
    ("devanagari", ((0x0900, 0x097F),)),
    ("thai", ((0x0E00, 0x0E7F),)),
    ("greek", ((0x0370, 0x03FF),)),
    ("hebrew", ((0x0590, 0x05FF),)),
]


def _script(char: str) -> str | None:
    code = ord(char)
    if code < 0x0370:
        return None  # ASCII and Latin-1/Extended: counted per word below
    for name, ranges in _RANGES:
        for low, high in ranges:
            if low <= code <= high:
                return name
    return None


def script_counts(text: str) -> dict[str, int]:
    """Characters per script (Latin: words), the evidence :func:`detect_language` decides on."""
    counts: dict[str, int] = {}
    for char in text:
        script = _script(char)
        if script is not None:
            counts[script] = counts.get(script, 0) + 1
    words = _LATIN_WORD.findall(text)
    if words:
        counts["latin"] = len(words)
    return counts


def detect_language(text: str) -> str:
    """``zh``, ``ja``, ``ko``, ``en``, ``latin``, a script name, or ``unknown``."""
    counts = script_counts(text)
    if not counts:
        return "unknown"
    if counts.get("kana", 0) and counts.get("kana", 0) + counts.get("han", 0) >= max(counts.values()):
        return "ja"
    top = max(counts, key=lambda k: counts[k])  # ties go to the first counted script, Han before Latin
    if top == "han":
        return "zh"
    if top == "hangul":
        return "ko"
    if top != "latin":
        return top
    words = [w.lower() for w in _LATIN_WORD.findall(text)]
    english = sum(w in _ENGLISH for w in words)
    # Short requests ("Explain recursion") may hold no function word at all: ASCII-only counts then.
    if english / len(words) >= 0.15 or (len(words) <= 4 and all(w.isascii() for w in words)):
        return "en"
    return "latin"
