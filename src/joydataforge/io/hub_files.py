"""Input files on the Hugging Face Hub: ``hf://datasets/OWNER/NAME[@REVISION][/PATH]`` as a path to read.

A Hub path stands for what a local path would: one file, or every supported file under a folder of the
repo (the whole repo when no PATH is given), in name order, with the same rules as local folders (names
starting with ``.`` are skipped; README.md and other unsupported files are ignored). A glob (``*``, ``?``,
``[``) picks files by pattern: ``hf://datasets/OWNER/NAME/data/train-*.parquet`` reads one split.

Files are read through ``huggingface_hub``'s :class:`~huggingface_hub.HfFileSystem`, never downloaded
whole before reading starts: JSONL and CSV stream over one HTTP request (a million-line file costs the
same memory as a local one), Parquet is read by ranges (the footer, then the row groups of the window),
and the other formats (a JSON array, XLSX, a YAML taxonomy) are read into memory as they would be locally.
The endpoint is ``huggingface_hub``'s (``HF_ENDPOINT``, default https://huggingface.co); the token is its
own (``HF_TOKEN``, or the login cache of ``hf auth login``), needed only for private or gated datasets.

:class:`HubFile` quacks like the :class:`~pathlib.Path` of a local file where the readers need it
(``name``, ``suffix``, ``read_bytes``, ``read_text``, ``str``), plus :meth:`HubFile.open` for streams.
"""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import InputError, Location
from .encodings import _WIDE_BOMS, SAMPLE_BYTES, UTF8, UTF8_BOM, sniff_encoding

HUB_SCHEME = "hf://"
_HUB_PREFIX = re.compile(r"^hf:/+")  # pathlib turns "hf://x" into "hf:/x": accept both spellings
_GLOB_CHARS = re.compile(r"[*?\[]")
_STREAM_BUFFER = 1 << 20


def is_hub_path(path: str | Path | HubFile) -> bool:
    """True for ``hf://...`` (also after :class:`~pathlib.Path` folded its slashes to ``hf:/...``)."""
    return isinstance(path, HubFile) or bool(_HUB_PREFIX.match(str(path)))


def hub_url(path: str | Path) -> str:
    """``path`` spelt as the canonical ``hf://`` URL."""
    return _HUB_PREFIX.sub(HUB_SCHEME, str(path), count=1)


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub repository, named by its ``hf://`` URL."""

    url: str
    size: int | None = None
    _fs: Any = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        # open() and os functions must never take the URL for a local path
        raise TypeError(f"{self.url} is a file on the Hugging Face Hub, not a local path")

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def open(self, *, stream: bool = True) -> IO[bytes]:
        """A binary file object: a buffered stream over one GET (``stream``), or one that seeks by HTTP ranges."""
        fs = self._fs or hub_filesystem()
        path = self.url[len(HUB_SCHEME) :]
        try:
            if stream:
                return io.BufferedReader(_RawStream(fs.open(path, "rb", block_size=0)), _STREAM_BUFFER)
            return fs.open(path, "rb")
        except FileNotFoundError as exc:
            raise InputError(_not_found(str(exc)), Location(self.url)) from None

    def read_bytes(self) -> bytes:
        with self.open() as handle:
            return handle.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def encoding(self, wanted: str | None) -> str:
        """Like :func:`~joydataforge.io.encodings.resolve_encoding`, from the first MiB of the file."""
        if wanted is not None:
            try:
                name = codecs.lookup(wanted).name
            except LookupError:
                raise InputError(f"unknown encoding {wanted!r}", Location(self.url)) from None
            if name != UTF8:
                return name
        with self.open() as handle:
            sample = handle.read(SAMPLE_BYTES + 1)
        if wanted is not None:
            return UTF8_BOM if sample.startswith(codecs.BOM_UTF8) else UTF8
        for bom, name in _WIDE_BOMS.items():
            if sample.startswith(bom):
                raise InputError(
                    f"the file is {name} encoded; convert it to UTF-8 (e.g. `iconv -f {name} -t UTF-8`)",
                    Location(self.url),
                )
        return sniff_encoding(sample[:SAMPLE_BYTES], complete=len(sample) <= SAMPLE_BYTES)


class HubPath(str):
    """An ``hf://`` input path where code expects a :class:`~pathlib.Path` of the input (``exists``, ``is_dir``,
    ``parent``, ``resolve``, ``name``, ``suffix``), so that :meth:`Pipeline.resolve
    <joydataforge.config.pipeline.Pipeline.resolve>` can hand one to the engine: a pipeline file's relative
    paths are joined to its folder, which would turn ``hf://x`` into ``<folder>/hf:/x``.

    A ``str`` (the URL), because the readers take ``str | Path`` and :func:`is_hub_path` recognises it.
    """

    def __new__(cls, url: str | Path) -> HubPath:
        return super().__new__(cls, hub_url(url).rstrip("/"))

    def exists(self) -> bool:
        """True when the Hub has input files there (a lookup on the Hub; False also when it cannot be reached)."""
        from .readers import SUPPORTED_SUFFIXES

        try:
            hub_files(self, SUPPORTED_SUFFIXES)
        except InputError:
            return False
        return True

    def is_dir(self) -> bool:
        return not Path(self).suffix or bool(_GLOB_CHARS.search(self))

    def is_file(self) -> bool:
        return not self.is_dir()

    def is_absolute(self) -> bool:
        return True

    def expanduser(self) -> HubPath:
        return self

    def resolve(self) -> HubPath:
        return self

    @property
    def parent(self) -> HubPath:
        head = self.rsplit("/", 1)[0]
        return HubPath(head) if head.count("/") >= 4 else self  # hf://datasets/OWNER/NAME is the top

    @property
    def name(self) -> str:
        return self.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix


class _RawStream(io.RawIOBase):
    """The raw side of a buffered reader over ``HfFileSystem``'s streaming file (which reads but has no lines)."""

    def __init__(self, remote: Any):
        self._remote = remote

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._remote.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._remote.close()
        super().close()


def hub_filesystem() -> Any:
    """A fresh :class:`~huggingface_hub.HfFileSystem` on the current endpoint.

    Fresh, not fsspec's cached instance: that one keeps directory listings (a file pushed a moment ago
    would be missing) and the endpoint it was first made with.
    """
    try:
        from huggingface_hub import HfFileSystem, constants
    except ImportError:  # pragma: no cover - a dependency of datasets, and of the `hub` extra
        raise InputError("reading hf:// paths needs huggingface_hub: pip install 'joydataforge[hub]'") from None
    return HfFileSystem(endpoint=constants.ENDPOINT, skip_instance_cache=True)


def hub_files(path: str | Path, suffixes: frozenset[str] | set[str]) -> list[HubFile]:
    """The files ``path`` (an ``hf://`` URL) stands for, with one of ``suffixes``, in name order.

    Raises :class:`InputError` (one line, no traceback) for a repo, revision or path that does not exist, a
    folder without input files, or a Hub that cannot be reached.
    """
    url = hub_url(path).rstrip("/")
    fs = hub_filesystem()
    target = url[len(HUB_SCHEME) :]
    try:
        if _GLOB_CHARS.search(target):
            found = fs.glob(target, detail=True)
            entries = [info for info in found.values() if info.get("type") == "file"]
            base = target[: _GLOB_CHARS.search(target).start()].rsplit("/", 1)[0]  # type: ignore[union-attr]
        else:
            info = fs.info(target)
            if info.get("type") == "file":
                if Path(target).suffix.lower() not in suffixes:
                    raise InputError(
                        f"unsupported file type {Path(target).suffix or '(none)'!r}; use {_listed(suffixes)}",
                        Location(url),
                    )
                return [HubFile(url, info.get("size"), fs)]
            entries = [entry for entry in fs.find(target, detail=True).values() if entry.get("type") == "file"]
            base = target
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise InputError(_not_found(str(exc)), Location(url)) from None
    except (ValueError, NotImplementedError) as exc:
        raise InputError(
            f"not a Hub path: {_first_line(exc)}; write hf://datasets/OWNER/NAME[/PATH]", Location(url)
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read from the Hub: {_first_line(exc)}", Location(url)) from None
    except Exception as exc:  # huggingface_hub's HTTP errors (HfHubHTTPError and kin) and httpx's connection errors
        raise InputError(f"cannot read from the Hub: {type(exc).__name__}: {_first_line(exc)}", Location(url)) from None
    files = []
    for entry in entries:
        name = str(entry["name"])
        relative = name[len(base) :].strip("/") if name.startswith(base) else name
        if Path(name).suffix.lower() in suffixes and not any(
            part.startswith((".", "~$")) for part in relative.split("/")
        ):
            files.append(HubFile(HUB_SCHEME + _with_revision(name, target), entry.get("size"), fs))
    if not files:
        raise InputError(f"no input files there ({_listed(suffixes)})", Location(url))
    return sorted(files, key=lambda file: file.url.split("/"))


def _with_revision(name: str, target: str) -> str:
    """``HfFileSystem`` lists ``datasets/o/n/x`` even when asked for ``datasets/o/n@rev``: keep the revision."""
    match = re.match(r"^((?:datasets|spaces|models)/)?([^/@]+/[^/@]+)(@[^/]+)", target)
    if match is None:
        return name
    repo = (match.group(1) or "") + match.group(2)
    if name.startswith(repo + "/") or name == repo:
        return repo + match.group(3) + name[len(repo) :]
    return name


def _not_found(message: str) -> str:
    if "(repository not found)" in message:
        return "no such dataset on the Hub, or a private one: set HF_TOKEN (or `hf auth login`) to read private data"
    if "(revision not found)" in message:
        return "no such revision (branch, tag or commit) in the dataset"
    return "no such file or folder in the dataset"


def _listed(suffixes: frozenset[str] | set[str]) -> str:
    return ", ".join(sorted(suffixes))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
