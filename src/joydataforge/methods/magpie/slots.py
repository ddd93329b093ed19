"""The input of a Magpie run: one record per instruction to write, and nothing else.

Magpie needs no seed data, but the engine is built around input records: ids that make a run resumable,
a ledger line per record, per-record seeds. So a run of N instructions reads N *slots*
(``{"id": "magpie-000001"}`` ...). The slot id seeds the sample index: re-running asks the same
questions (cache hits), and a resumed run skips finished slots. Growing N keeps the first slots' ids, so
``-n 1000`` after ``-n 100`` in the same folder writes only the 900 new ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def slot_id(index: int, prefix: str = "magpie") -> str:
    return f"{prefix}-{index:06d}"


def write_slots(path: str | Path, n: int, prefix: str = "magpie") -> Path:
    """Write ``n`` slot records (1-based ids), replacing the file atomically."""
    if n < 1:
        raise ValueError(f"the number of instructions must be >= 1, not {n}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for index in range(1, n + 1):
            handle.write(json.dumps({"id": slot_id(index, prefix)}) + "\n")
    os.replace(temporary, path)
    return path
