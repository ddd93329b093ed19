"""Read earlier outputs as reference data: the records a new dataset must not repeat.

``joyforge dedup --reference`` and the ``minhash_dedup`` step's ``reference:`` setting both read their
reference through :func:`iter_reference` / :func:`read_reference`, so a path means the same thing in
both places: a file of any readable type, or a folder of them, or several such paths.

Why a folder is read differently from an input folder: the natural reference is the output folder of an
earlier run, and that folder also holds records that are *not* part of the dataset (``failures.jsonl``),
bookkeeping (``ledger.jsonl``, ``run.json``, ``summary.json``) and, with ``formats: [jsonl, parquet]``,
the same records twice. A folder that holds ``run.json`` and ``ledger.jsonl`` is therefore read as a run
folder: only its kept records (``data.jsonl``, or ``data.parquet`` when there is no JSONL). Any other
supported file under a folder is read whole, as :func:`~joydataforge.io.readers.input_files` lists them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError, Location
from .readers import input_files, iter_records

Record = dict[str, Any]

#: The files that make a folder a run's output folder, and its data files in order of preference. The
#: names are those of :mod:`joydataforge.engine.run_state` (a test checks they agree; io may not import
#: the engine).
RUN_FOLDER_MARKERS = ("run.json", "ledger.jsonl")
RUN_DATA_FILES = ("data.jsonl", "data.parquet")


def _is_run_folder(folder: Path) -> bool:
    return all((folder / name).is_file() for name in RUN_FOLDER_MARKERS)


def _run_data(folder: Path) -> list[Path]:
    for name in RUN_DATA_FILES:
        if (folder / name).is_file():
            return [folder / name]
    return []  # a run that kept nothing yet


def reference_files(path: str | Path) -> list[Path]:
    """The files that make up the reference at ``path`` (see the module docstring), in a stable order.

    A missing path, an unsupported file type or a folder with nothing to read raises :class:`InputError`.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise InputError("no such file or folder", Location(str(root)))
    if root.is_file():
        return input_files(root)
    if _is_run_folder(root):
        return _run_data(root)
    runs = sorted(
        (marker.parent for marker in root.rglob(RUN_FOLDER_MARKERS[0]) if _is_run_folder(marker.parent)),
        key=lambda folder: folder.relative_to(root).parts,
    )
    runs = [run for run in runs if not any(part.startswith(".") for part in run.relative_to(root).parts)]
    files: list[Path] = []
    try:
        listed = input_files(root)
    except InputError:
        listed = []
    for file in listed:
        if not any(run in file.parents for run in runs):
            files.append(file)
    for run in runs:
        files.extend(_run_data(run))
    if not files and not runs:
        raise InputError("the folder holds no input files", Location(str(root)))
    return sorted(files, key=lambda file: file.relative_to(root).parts)


def iter_reference(
    paths: str | Path | Sequence[str | Path], *, skip_bad: bool = False, bad: list[InputError] | None = None
) -> Iterator[Record]:
    """The records of every reference path, lazily, in path order then file order.

    A record that cannot be read raises its :class:`InputError` (file and line), unless ``skip_bad``; skipped
    errors are appended to ``bad`` when given. Missing paths fail before any record is yielded.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = [file for path in paths for file in reference_files(path)]
    for file in files:
        for item in iter_records(file):
            if item.error is not None:
                if not skip_bad:
                    raise item.error
                if bad is not None:
                    bad.append(item.error)
            elif item.record is not None:
                yield item.record


def read_reference(
    paths: str | Path | Sequence[str | Path], *, skip_bad: bool = False
) -> tuple[list[Record], list[InputError]]:
    """All reference records and the errors skipped (always empty unless ``skip_bad``)."""
    bad: list[InputError] = []
    records = list(iter_reference(paths, skip_bad=skip_bad, bad=bad))
    return records, bad
