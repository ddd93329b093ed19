"""Run folders made of real example outputs, and the viewer's server on a thread, for the view tests.

``tests/fixtures/golden/`` holds what the example pipelines wrote (data.jsonl, failures.jsonl, summary.json),
recorded on the mock OpenAI server and on the vLLM test double. A run folder also has a ledger; it is
rebuilt here from the records themselves exactly as the executor writes it (one line per input record,
``ok`` for one with outputs, ``failed`` for one in failures.jsonl), so the viewer reads the folder as it
would read the example's own output folder.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path
from typing import Any

from joydataforge.view.dataset import open_dataset
from joydataforge.view.index import ViewIndex
from joydataforge.view.server import serve

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def run_folder(target: Path, *examples: str, filtered: tuple[str, ...] = ()) -> Path:
    """A run folder at ``target`` with the records of the golden ``examples`` (``fake_vllm/dpo``, ``vote``...)
    one after the other, its ledger, and the first example's summary.json. ``filtered`` ids get a
    ``filtered`` ledger line (records a filter step dropped)."""
    target.mkdir(parents=True, exist_ok=True)
    data: list[str] = []
    failures: list[str] = []
    for example in examples:
        folder = GOLDEN / example
        data += [line for line in (folder / "data.jsonl").read_text("utf-8").splitlines() if line.strip()]
        if (folder / "failures.jsonl").exists():
            failures += [line for line in (folder / "failures.jsonl").read_text("utf-8").splitlines() if line.strip()]
    (target / "data.jsonl").write_text("".join(line + "\n" for line in data), "utf-8")
    (target / "failures.jsonl").write_text("".join(line + "\n" for line in failures), "utf-8")
    ledger: dict[str, str] = {}
    for line in data:
        record = json.loads(line)
        meta = record.get("_meta") or {}
        ledger.setdefault(str(meta.get("source_id") or record.get("id")), "ok")
    for line in failures:
        ledger[str(json.loads(line)["source_id"])] = "failed"
    for source in filtered:
        ledger[source] = "filtered"
    (target / "ledger.jsonl").write_text(
        "".join(json.dumps({"id": k, "status": v}) + "\n" for k, v in ledger.items()), "utf-8"
    )
    summary = GOLDEN / examples[0] / "summary.json"
    if summary.exists():
        shutil.copy(summary, target / "summary.json")
    return target


def built_index(path: Path, **options: Any) -> ViewIndex:
    """The index of ``path``, built (synchronously, as far as the caller can tell)."""
    index = ViewIndex(open_dataset(path, input_path=options.pop("input_path", None)), **options)
    index.start()
    assert index.wait(120), "the index build did not finish"
    assert index.progress.error is None, index.progress.error
    return index


class ServerThread:
    """``joyforge view``'s server on its own thread and event loop, on a free port of 127.0.0.1."""

    def __init__(self, index: ViewIndex):
        self.index = index
        self.url = ""
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()

            def ready(url: str) -> None:
                self.url = url
                self._ready.set()

            await serve(self.index, "127.0.0.1", 0, ready=ready, stop=self._stop)

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
