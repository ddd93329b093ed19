"""A math-verify worker process: one JSON request per line on stdin, one JSON answer per line on stdout.

Run as ``python -m joydataforge.methods.verify.math_worker`` by :mod:`.math_pool`. Comparisons run in this
process's main thread, the only place math-verify's ``signal.alarm`` time limits work.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


def _shown(parsed: list[Any]) -> str | None:
    """How a parse is shown in the verdict: the text math-verify matched (its last item), else the value."""
    if not parsed:
        return None
    return str(parsed[-1]) if isinstance(parsed[-1], str) else str(parsed[0])


def compare(reference: list[str] | None, candidates: list[list[str]], precision: int, timeout_s: int) -> dict[str, Any]:
    """Parse the reference and the first readable answer candidate, then compare them.

    ``reference``: forms of the reference to try in order (as written, then as LaTeX). ``candidates``: ``[text,
    where it came from]``, best first. Without a reference the answer passes when it has a final answer that
    parses. Returns plain data: ``status`` (passed, failed, error), ``reason``, what was read.
    """
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    gold = None
    if reference is not None:
        gold = next((found for found in (parse(r, parsing_timeout=timeout_s) for r in reference) if found), [])
    if reference is not None and not gold:
        reference = reference[0]
        return {"status": "error", "reason": f"no math could be read from the reference {reference[:80]!r}"}
    parses = ((parse(text, parsing_timeout=timeout_s), where) for text, where in candidates)
    answer, where = next(((found, where) for found, where in parses if found), ([], ""))
    if not answer:
        return {"status": "failed", "reason": "no final answer found in the reply"}
    read: dict[str, Any] = {"answer": _shown(answer), "value": str(answer[0]), "found_in": where}
    if gold is None:
        return {"status": "passed", "reason": f"final answer {read['answer']} read (no reference)", **read}
    read["reference"] = _shown(gold)
    try:
        same = verify(gold, answer, float_rounding=precision, timeout_seconds=timeout_s, raise_on_error=True)
    except TimeoutException:
        return {"status": "error", "reason": f"the comparison took more than {timeout_s} s", **read}
    except Exception as exc:  # a comparison SymPy cannot make (e.g. a matrix with a set) is a difference
        same, read["compare_error"] = False, f"{type(exc).__name__}: {exc}"[:200]
    if same:
        return {"status": "passed", "reason": f"{read['answer']} equals the reference {read['reference']}", **read}
    return {"status": "failed", "reason": f"{read['answer']} differs from the reference {read['reference']}", **read}


def main() -> None:
    import math_verify  # noqa: F401  (imported before the first request, so its time is the start's)

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # per-comparison warnings are in the verdict
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            answer = compare(**json.loads(line))
        except Exception as exc:  # a bug here must reach the caller as a verdict, not end the worker
            answer = {"status": "error", "reason": f"math check crashed: {type(exc).__name__}: {exc}"[:300]}
        out.write(json.dumps(answer, ensure_ascii=False, default=str) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
