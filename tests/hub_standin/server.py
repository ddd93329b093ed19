"""A small stand-in of the Hugging Face Hub's HTTP API, for testing pushes and ``hf://`` reads offline.

It implements what ``huggingface_hub`` (``HfApi.create_repo``, ``upload_folder``/``create_commit``,
``hf_hub_download``, ``HfFileSystem``) and ``datasets.load_dataset`` actually call -- found by running them
against it and reading :attr:`HubStandIn.log` -- and nothing more:

- ``POST /api/repos/create``; ``GET /api/whoami-v2``;
- ``GET /api/{type}s/{repo}[/revision/{rev}]`` (repo info), ``GET .../tree/{rev}[/{path}]``,
  ``POST .../paths-info/{rev}``, ``GET .../refs``;
- ``POST .../preupload/{rev}`` (regular or LFS, decided like the Hub: by size, by a NUL byte in the sample,
  by the LFS patterns of ``.gitattributes``), ``POST .../commit/{rev}`` (NDJSON with ``file`` (base64),
  ``lfsFile``, ``deletedFile`` and ``deletedFolder`` lines, an optional ``parentCommit``);
- the Git LFS batch API (``POST /{prefix}{repo}.git/info/lfs/objects/batch``, transfer ``basic``), the upload
  (``PUT``) and verify (``POST``) actions it hands out;
- ``HEAD``/``GET /{prefix}{repo}/resolve/{rev}/{path}`` with the headers the client reads (``X-Repo-Commit``,
  ``ETag``, ``X-Linked-Etag``/``X-Linked-Size`` for LFS files) and ``Range`` requests.

It does not implement Xet storage: with ``hf_xet`` installed, ``huggingface_hub`` sends every LFS-mode file
through Xet, so tests either set ``HF_HUB_DISABLE_XET=1`` (LFS files then go through the LFS batch API) or
start the stand-in with ``regular_only=True`` (every file goes inline in the commit, base64).

Writes need ``Authorization: Bearer <token>`` with the stand-in's token; private repos answer 404 to anyone
else, as the Hub does. Every commit is kept (``revision`` may be a branch or a commit id), blobs are stored
by content under ``root/blobs``, and the head of ``main`` of each repo is also checked out as plain files
under ``root/repos/{type}s/{owner}/{name}`` (:meth:`HubStandIn.checkout`), so a test can read what was
pushed without any client.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import hashlib
import hmac
import json
import re
import shutil
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

DEFAULT_TOKEN = "hf_standin_write_token"
DEFAULT_USER = "standin-user"
_LFS_SIZE = 10 * 1024 * 1024  # the Hub stores files from 10 MB on as LFS
_TYPES = {"datasets": "dataset", "models": "model", "spaces": "space"}
_PREFIX = {"dataset": "datasets/", "model": "", "space": "spaces/"}
SIZE_CATEGORIES = frozenset(
    [
        "n<1K",
        "1K<n<10K",
        "10K<n<100K",
        "100K<n<1M",
        "1M<n<10M",
        "10M<n<100M",
        "100M<n<1B",
        "1B<n<10B",
        "10B<n<100B",
        "100B<n<1T",
        "n>1T",
    ]
)
TASK_CATEGORIES = frozenset(
    [
        "text-classification",
        "token-classification",
        "table-question-answering",
        "question-answering",
        "zero-shot-classification",
        "translation",
        "summarization",
        "feature-extraction",
        "text-generation",
        "fill-mask",
        "sentence-similarity",
        "text-ranking",
        "text-retrieval",
        "multiple-choice",
        "other",
    ]
)
HUB_LICENSES = frozenset(
    [
        "apache-2.0",
        "mit",
        "openrail",
        "bigscience-openrail-m",
        "creativeml-openrail-m",
        "bigcode-openrail-m",
        "afl-3.0",
        "artistic-2.0",
        "bsl-1.0",
        "bsd",
        "bsd-2-clause",
        "bsd-3-clause",
        "bsd-3-clause-clear",
        "c-uda",
        "cc",
        "cc0-1.0",
        "cc-by-2.0",
        "cc-by-2.5",
        "cc-by-3.0",
        "cc-by-4.0",
        "cc-by-sa-3.0",
        "cc-by-sa-4.0",
        "cc-by-nc-2.0",
        "cc-by-nc-3.0",
        "cc-by-nc-4.0",
        "cc-by-nd-4.0",
        "cc-by-nc-nd-3.0",
        "cc-by-nc-nd-4.0",
        "cc-by-nc-sa-2.0",
        "cc-by-nc-sa-3.0",
        "cc-by-nc-sa-4.0",
        "cdla-sharing-1.0",
        "cdla-permissive-1.0",
        "cdla-permissive-2.0",
        "wtfpl",
        "ecl-2.0",
        "epl-1.0",
        "epl-2.0",
        "eupl-1.1",
        "eupl-1.2",
        "agpl-3.0",
        "gfdl",
        "gpl",
        "gpl-2.0",
        "gpl-3.0",
        "lgpl",
        "lgpl-2.1",
        "lgpl-3.0",
        "isc",
        "mpl-2.0",
        "odc-by",
        "odbl",
        "pddl",
        "unlicense",
        "zlib",
        "llama2",
        "llama3",
        "llama3.1",
        "llama3.2",
        "llama3.3",
        "gemma",
        "unknown",
        "other",
    ]
)
_DEFAULT_GITATTRIBUTES = "*.parquet filter=lfs diff=lfs merge=lfs -text\n*.arrow filter=lfs diff=lfs merge=lfs -text\n"


@dataclass
class Entry:
    """One file of a commit: its content's sha256 (the blob's name on disk), size, and whether it is LFS."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str  # sha1 of the git blob (for LFS: of the pointer file), as the Hub's tree shows it


@dataclass
class Commit:
    oid: str
    message: str
    parent: str | None
    files: dict[str, Entry]
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]


@dataclass
class Logged:
    """A request as the stand-in saw it; ``authorized`` says whether it carried the stand-in's token (the token
    itself is never kept)."""

    method: str
    path: str
    query: str
    status: int = 0
    authorized: bool = False
    range: str | None = None  # the Range header: files read by parts say which bytes


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class HubStandIn:
    """The stand-in's state and its aiohttp application; :func:`start_hub_standin` runs it on a thread."""

    def __init__(
        self,
        root: str | Path,
        *,
        token: str = DEFAULT_TOKEN,
        user: str = DEFAULT_USER,
        regular_only: bool = False,
        lfs_size: int = _LFS_SIZE,
    ):
        self.root = Path(root)
        self.token = token
        self.user = user
        self.regular_only = regular_only
        self.lfs_size = lfs_size
        self.repos: dict[tuple[str, str], Repo] = {}
        self.log: list[Logged] = []
        self.base_url = ""
        self._lock = threading.Lock()
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)

    # --- what tests read -----------------------------------------------------------------------------

    def checkout(self, repo_id: str, repo_type: str = "dataset") -> Path:
        """The folder holding the head of ``main`` of ``repo_id`` as plain files."""
        return self.root / "repos" / f"{repo_type}s" / repo_id

    def requests(self, method: str | None = None, contains: str = "") -> list[Logged]:
        return [r for r in list(self.log) if (method is None or r.method == method) and contains in r.path]

    def files(self, repo_id: str, repo_type: str = "dataset") -> dict[str, Entry]:
        return dict(self.repos[(repo_type, repo_id)].head.files)

    # --- the application -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 34)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        logged = Logged(request.method, request.raw_path.split("?")[0], request.query_string)
        logged.authorized = self._authorized(request)
        logged.range = request.headers.get("Range")
        self.log.append(logged)
        try:
            response = await self._dispatch(request, logged.authorized)
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            body = {"error": error.message, **error.extra}
            response = web.json_response(body, status=error.status, headers=headers)
        logged.status = response.status
        return response

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.token}"

    async def _dispatch(self, request: web.Request, authorized: bool) -> web.StreamResponse:
        parts = [unquote(p) for p in request.raw_path.split("?")[0].strip("/").split("/")]
        method = request.method
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(await request.json(), authorized)
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml(await request.json())
        if parts[:2] == ["api", "whoami-v2"]:
            if not authorized:
                raise HubError(401, "Invalid credentials in Authorization header")
            return web.json_response({"type": "user", "name": self.user, "auth": {"type": "access_token"}})
        if parts[0] == "api" and len(parts) >= 4 and parts[1] in _TYPES:
            repo = self._repo(_TYPES[parts[1]], f"{parts[2]}/{parts[3]}", authorized)
            return await self._api(request, repo, parts[4:], authorized)
        if parts[0] in ("lfs-upload", "lfs-verify") and len(parts) == 2:
            return await self._lfs_object(request, parts[0], parts[1], authorized)
        repo_type, rest = ("dataset", parts[1:]) if parts[0] == "datasets" else ("model", parts)
        if parts[0] == "spaces":
            repo_type, rest = "space", parts[1:]
        if len(rest) >= 3 and rest[1].endswith(".git") and rest[2:] == ["info", "lfs", "objects", "batch"]:
            repo = self._repo(repo_type, f"{rest[0]}/{rest[1][: -len('.git')]}", authorized)
            return self._lfs_batch(request, repo, await request.json(), authorized)
        if len(rest) >= 5 and rest[2] == "resolve":
            repo = self._repo(repo_type, f"{rest[0]}/{rest[1]}", authorized)
            return self._resolve(request, repo, rest[3], "/".join(rest[4:]))
        raise HubError(404, f"the stand-in does not implement {method} /{'/'.join(parts)}")

    # --- repos ---------------------------------------------------------------------------------------

    def _create_repo(self, body: dict[str, Any], authorized: bool) -> web.Response:
        if not authorized:
            raise HubError(401, "Invalid username or password.")
        repo_type = body.get("type") or "model"
        owner = body.get("organization") or self.user
        repo_id = f"{owner}/{body['name']}"
        url = f"{self.base_url}/{_PREFIX[repo_type]}{repo_id}"
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo", url=url)
            private = body.get("visibility") == "private" or bool(body.get("private"))
            repo = Repo(repo_type, repo_id, private)
            gitattributes = _DEFAULT_GITATTRIBUTES.encode()
            entry = self._store(gitattributes, lfs=False)
            repo.commits.append(self._commit_object(None, "initial commit", {".gitattributes": entry}))
            self.repos[(repo_type, repo_id)] = repo
            self._check_out(repo)
        return web.json_response({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, body: dict[str, Any]) -> web.Response:
        """The checks of the Hub's metadata validation that a dataset card can fail: parseable YAML, known
        license, size category and task categories, ``configs`` with ``data_files`` the loader understands."""
        import yaml

        errors: list[str] = []
        match = re.match(r"^---\n(.*?)\n---\n", str(body.get("content", "")), re.S)
        data: Any = {}
        if match:
            try:
                data = yaml.safe_load(match.group(1)) or {}
            except yaml.YAMLError as error:
                errors.append(f"the YAML metadata does not parse: {error}")
        if not isinstance(data, dict):
            errors.append("the YAML metadata is not a mapping")
            data = {}
        licenses = data.get("license")
        for name in [licenses] if isinstance(licenses, str) else licenses or []:
            if name not in HUB_LICENSES:
                errors.append(f'"license" must be a known license id, not {name!r}')
        for key, allowed in (("size_categories", SIZE_CATEGORIES), ("task_categories", TASK_CATEGORIES)):
            value = data.get(key, [])
            for item in [value] if isinstance(value, str) else value:
                if item not in allowed:
                    errors.append(f'"{key}" has an unknown value {item!r}')
        language = data.get("language", [])
        for item in [language] if isinstance(language, str) else language:
            if not (isinstance(item, str) and re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]+)*", item)):
                errors.append(f'"language" must hold language codes, not {item!r}')
        for config in data.get("configs", []) or []:
            if not isinstance(config, dict) or not isinstance(config.get("config_name"), str):
                errors.append('"configs" entries need a config_name')
                continue
            for files in config.get("data_files", []) or []:
                if not (isinstance(files, dict) and isinstance(files.get("split"), str) and files.get("path")):
                    errors.append(f'"configs" {config["config_name"]}: data_files entries need a split and a path')
        if errors:
            return web.json_response({"errors": [{"message": m} for m in errors]}, status=400)
        return web.json_response({"errors": [], "warnings": []})

    def _repo(self, repo_type: str, repo_id: str, authorized: bool) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        if revision in ("main", "refs/heads/main"):
            return repo.head
        for commit in repo.commits:
            if commit.oid == revision or (len(revision) >= 7 and commit.oid.startswith(revision)):
                return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    async def _api(self, request: web.Request, repo: Repo, rest: list[str], authorized: bool) -> web.Response:
        if not rest or rest[0] == "revision":
            commit = self._commit_at(repo, rest[1] if len(rest) > 1 else "main")
            return web.json_response(self._info(repo, commit))
        action = rest[0]
        if action == "tree" and len(rest) >= 2:
            commit = self._commit_at(repo, rest[1])
            recursive = request.query.get("recursive", "").lower() in ("1", "true")
            return web.json_response(self._tree(commit, "/".join(rest[2:]), recursive))
        if action == "paths-info" and len(rest) == 2:
            commit = self._commit_at(repo, rest[1])
            if request.content_type == "application/json":
                paths = (await request.json()).get("paths", [])
            else:
                paths = (await request.post()).getall("paths", [])
            return web.json_response(self._paths_info(commit, [str(p) for p in paths]))
        if action == "refs":
            branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head.oid}
            return web.json_response({"branches": [branch], "converts": [], "tags": []})
        if action == "preupload" and len(rest) == 2:
            if not authorized:
                raise HubError(401, "Invalid username or password.")
            return web.json_response(self._preupload(repo, self._commit_at(repo, rest[1]), await request.json()))
        if action == "commit" and len(rest) == 2:
            if not authorized:
                raise HubError(401, "Invalid username or password.")
            if rest[1] != "main":
                raise HubError(400, "the stand-in commits to main only")
            return web.json_response(self._commit(repo, await request.read()))
        raise HubError(404, f"the stand-in does not implement {request.method} api .../{'/'.join(rest)}")

    def _info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        card = self._card_data(commit)
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.commits[0].date,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "cardData": card,
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    def _card_data(self, commit: Commit) -> dict[str, Any] | None:
        entry = commit.files.get("README.md")
        if entry is None:
            return None
        text = self._blob(entry.sha256).read_text("utf-8")
        match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
        if not match:
            return None
        import yaml

        data = yaml.safe_load(match.group(1))
        return data if isinstance(data, dict) else None

    def _tree(self, commit: Commit, folder: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        if prefix and not any(path.startswith(prefix) for path in commit.files):
            if prefix.rstrip("/") in commit.files:
                raise HubError(400, f"{folder} is a file, not a folder")
            raise HubError(404, f"{folder} does not exist", "EntryNotFound")
        entries: dict[str, dict[str, Any]] = {}
        for path in sorted(commit.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):  # the folders on the way
                sub = prefix + "/".join(rest[:depth])
                if depth == 1 or recursive:
                    entries.setdefault(sub, {"type": "directory", "oid": _sha1(sub.encode()), "size": 0, "path": sub})
                if not recursive:
                    break
            if len(rest) == 1 or recursive:
                entries[path] = self._file_entry(path, commit.files[path])
        return list(entries.values())

    def _paths_info(self, commit: Commit, paths: list[str]) -> list[dict[str, Any]]:
        found = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                found.append(self._file_entry(path, commit.files[path]))
            elif path == "" or any(p.startswith(path + "/") for p in commit.files):
                found.append({"type": "directory", "oid": _sha1(path.encode()), "size": 0, "path": path})
        return found

    def _file_entry(self, path: str, entry: Entry) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
        if entry.lfs:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(_pointer(entry))}
        return item

    # --- uploads -------------------------------------------------------------------------------------

    def _preupload(self, repo: Repo, commit: Commit, body: dict[str, Any]) -> dict[str, Any]:
        patterns = self._lfs_patterns(commit)
        files = []
        for item in body.get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            lfs = not self.regular_only and (
                int(item.get("size", 0)) >= self.lfs_size
                or b"\x00" in sample
                or any(fnmatch.fnmatch(item["path"].rsplit("/", 1)[-1], p) for p in patterns)
            )
            existing = commit.files.get(item["path"])
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": existing.git_oid if existing is not None else None,
                }
            )
        return {"files": files, "commitOid": commit.oid}

    def _lfs_patterns(self, commit: Commit) -> list[str]:
        entry = commit.files.get(".gitattributes")
        if entry is None:
            return []
        lines = self._blob(entry.sha256).read_text("utf-8").splitlines()
        return [line.split()[0] for line in lines if "filter=lfs" in line]

    def _lfs_batch(self, request: web.Request, repo: Repo, body: dict[str, Any], authorized: bool) -> web.Response:
        if not authorized:
            raise HubError(401, "Invalid username or password.")
        if body.get("operation") != "upload":
            raise HubError(400, "the stand-in only takes uploads through the LFS batch API")
        if "basic" not in body.get("transfers", ["basic"]):
            raise HubError(400, "the stand-in only offers the basic transfer")
        objects = []
        for item in body.get("objects", []):
            oid, size = str(item["oid"]), int(item["size"])
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not self._blob(oid).exists():
                answer["actions"] = {
                    # like S3's presigned URLs: the PUT carries no token, the URL is the permission
                    "upload": {"href": f"{self.base_url}/lfs-upload/{oid}?signature={self._sign(oid)}"},
                    "verify": {"href": f"{self.base_url}/lfs-verify/{oid}", "header": {}},
                }
            objects.append(answer)
        return web.json_response({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _sign(self, oid: str) -> str:
        return hmac.new(self.token.encode(), oid.encode(), hashlib.sha256).hexdigest()

    async def _lfs_object(self, request: web.Request, action: str, oid: str, authorized: bool) -> web.Response:
        if action == "lfs-upload":
            if not hmac.compare_digest(request.query.get("signature", ""), self._sign(oid)):
                raise HubError(403, "the upload URL's signature is not valid")
            if request.method != "PUT":
                raise HubError(405, "PUT the object")
            data = await request.read()
            if hashlib.sha256(data).hexdigest() != oid:
                raise HubError(400, "the uploaded bytes do not match the object id")
            self._store(data, lfs=True)
            return web.Response(status=200)
        if not authorized:
            raise HubError(401, "Invalid username or password.")
        body = await request.json()
        blob = self._blob(oid)
        if not blob.exists() or blob.stat().st_size != int(body.get("size", -1)):
            raise HubError(404, f"object {oid} was not uploaded")
        return web.json_response({"success": True})

    def _commit(self, repo: Repo, payload: bytes) -> dict[str, Any]:
        lines = [json.loads(line) for line in payload.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "a commit starts with its header line")
        header = lines[0]["value"]
        with self._lock:
            parent = header.get("parentCommit")
            if parent and not repo.head.oid.startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.head.files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"unknown encoding {value.get('encoding')}")
                    files[value["path"]] = self._store(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    blob = self._blob(value["oid"])
                    if not blob.exists():
                        raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                    files[value["path"]] = self._entry(value["oid"], blob.stat().st_size, lfs=True)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, f"{value['path']} does not exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for path in [p for p in files if p.startswith(prefix)]:
                        del files[path]
                else:
                    raise HubError(400, f"the stand-in does not implement commit lines of kind {key!r}")
            message = header.get("summary") or "commit"
            if header.get("description"):
                message += "\n\n" + header["description"]
            commit = self._commit_object(repo.head.oid, message, files)
            repo.commits.append(commit)
            self._check_out(repo)
        url = f"{self.base_url}/{_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.oid}"
        return {"commitUrl": url, "commitOid": commit.oid, "success": True, "pullRequestUrl": None}

    # --- downloads -----------------------------------------------------------------------------------

    def _resolve(self, request: web.Request, repo: Repo, revision: str, path: str) -> web.Response:
        commit = self._commit_at(repo, revision)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{entry.git_oid}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        start, end = 0, entry.size - 1
        status = 200
        wanted = request.headers.get("Range")
        if wanted and entry.size:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
            if match is None:
                raise HubError(416, f"cannot serve Range {wanted}")
            first, last = match.groups()
            if first == "":
                start = max(0, entry.size - int(last))
            else:
                start = int(first)
                end = min(end, int(last)) if last else end
            if start >= entry.size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{entry.size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        with open(self._blob(entry.sha256), "rb") as handle:
            handle.seek(start)
            body = handle.read(length)
        return web.Response(status=status, body=body, headers=headers)

    # --- storage -------------------------------------------------------------------------------------

    def _blob(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise HubError(400, f"not a sha256: {sha256}")
        return self.root / "blobs" / sha256

    def _store(self, data: bytes, *, lfs: bool) -> Entry:
        sha256 = hashlib.sha256(data).hexdigest()
        blob = self._blob(sha256)
        if not blob.exists():
            temporary = blob.with_suffix(".tmp")
            temporary.write_bytes(data)
            temporary.replace(blob)
        return self._entry(sha256, len(data), lfs=lfs)

    def _entry(self, sha256: str, size: int, *, lfs: bool) -> Entry:
        if lfs:
            entry = Entry(sha256, size, True, "")
            entry.git_oid = _git_blob_oid(_pointer(entry))
            return entry
        return Entry(sha256, size, False, _git_blob_oid(self._blob(sha256).read_bytes()))

    def _commit_object(self, parent: str | None, message: str, files: dict[str, Entry]) -> Commit:
        listing = json.dumps([parent, message, sorted((p, e.sha256) for p, e in files.items())])
        oid = _sha1((listing + str(len(self.log))).encode())
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return Commit(oid, message, parent, files, date)

    def _check_out(self, repo: Repo) -> None:
        folder = self.checkout(repo.repo_id, repo.repo_type)
        if folder.exists():
            shutil.rmtree(folder)
        for path, entry in repo.head.files.items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._blob(entry.sha256), target)


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _git_blob_oid(data: bytes) -> str:
    return _sha1(b"blob %d\0" % len(data) + data)


def _pointer(entry: Entry) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{entry.sha256}\nsize {entry.size}\n".encode()


class RunningStandIn:
    """A :class:`HubStandIn` served on 127.0.0.1 from a thread of its own; ``close()`` stops it."""

    def __init__(self, hub: HubStandIn, port: int = 0):
        self.hub = hub
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._port = port
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hub-standin", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the Hub stand-in did not start: {self._error}")

    @property
    def url(self) -> str:
        return self.hub.base_url

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as error:  # reported by __init__
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.hub.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.hub.base_url = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def start_hub_standin(root: str | Path, **options: Any) -> RunningStandIn:
    """Start a stand-in storing under ``root``; see :class:`HubStandIn` for ``options``."""
    return RunningStandIn(HubStandIn(root, **options))
