"""Which text encoding an input file uses, decided once per file from a sample.

Chinese data arrives in three encodings in practice: UTF-8, UTF-8 with a byte-order mark (Excel's
"CSV UTF-8" and Windows Notepad) and GB18030 (the superset of GBK/GB2312 that Chinese Windows tools
write). A strict UTF-8 decode of a sample tells them apart reliably: GB18030 text of any length is
almost never valid UTF-8. We guess from a sample rather than the whole file so that opening a file
of millions of lines stays instant; a bad byte later in the file is reported on its own line by the
reader, with a hint to pass ``encoding=``.

UTF-16/32 (recognised by their BOM) are refused with a clear message: their newlines are two or four
bytes wide, which the byte-level line splitting of the JSONL reader cannot handle, and they are rare
enough in training data that converting the file is the better answer.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from ..errors import InputError, Location

SAMPLE_BYTES = 1 << 20  # 1 MiB: enough to see non-ASCII text in nearly every real file, instant to read

UTF8 = "utf-8"
UTF8_BOM = "utf-8-sig"
GB18030 = "gb18030"

_WIDE_BOMS = {
    codecs.BOM_UTF32_LE: "UTF-32-LE",
    codecs.BOM_UTF32_BE: "UTF-32-BE",
    codecs.BOM_UTF16_LE: "UTF-16-LE",
    codecs.BOM_UTF16_BE: "UTF-16-BE",
}


def sniff_encoding(sample: bytes, *, complete: bool = False) -> str:
    """Name the encoding of ``sample``: ``utf-8-sig``, ``utf-8`` or ``gb18030``.

    ``complete`` says the sample is the whole file; otherwise a multi-byte character cut at the end of
    the sample is not held against UTF-8. When neither decoding is clean, UTF-8 is returned so that the
    reader reports the bad bytes with their line rather than silently misreading the text.
    """
    if sample.startswith(codecs.BOM_UTF8):
        return UTF8_BOM
    if _decodes(sample, UTF8, complete):
        return UTF8
    if _decodes(sample, GB18030, complete):
        return GB18030
    return UTF8


def detect_encoding(path: str | Path, *, sample_bytes: int = SAMPLE_BYTES) -> str:
    """Read the start of ``path`` and return the codec name the readers should use for it."""
    with open(path, "rb") as handle:
        sample = handle.read(sample_bytes + 1)
    complete = len(sample) <= sample_bytes
    sample = sample[:sample_bytes]
    for bom, name in _WIDE_BOMS.items():
        if sample.startswith(bom):
            raise InputError(
                f"the file is {name} encoded; convert it to UTF-8 (e.g. `iconv -f {name} -t UTF-8`)",
                Location(str(path)),
            )
    return sniff_encoding(sample, complete=complete)


def resolve_encoding(path: str | Path, encoding: str | None) -> str:
    """The user's ``encoding`` when given (checked to be a real codec), else the detected one."""
    if encoding is None:
        return detect_encoding(path)
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise InputError(f"unknown encoding {encoding!r}", Location(str(path))) from None
    if name == UTF8:
        # "utf-8" for a file with a BOM means the user knows it is UTF-8, not that the BOM is data.
        with open(path, "rb") as handle:
            if handle.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8:
                return UTF8_BOM
    return name


def describe_decode_error(error: UnicodeDecodeError, encoding: str) -> str:
    """A message that shows the offending bytes and what to try instead."""
    bad = error.object[error.start : error.end][:8]
    hint = "gb18030" if encoding.replace("_", "-").startswith("utf") else "utf-8"
    return (
        f"bytes {bad.hex(' ')} at byte {error.start + 1} of the line are not valid {encoding} "
        f"(pass encoding={hint!r} if the file uses another encoding)"
    )


def _decodes(sample: bytes, encoding: str, complete: bool) -> bool:
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        decoder.decode(sample, final=complete)
    except UnicodeDecodeError:
        return False
    return True
