"""OpenAI's batch API on the mock server: ``/v1/files`` and ``/v1/batches``, in OpenAI's shapes.

- ``POST /v1/files``                   multipart upload (``purpose``, ``file``); the file object back.
- ``GET  /v1/files/{id}``              the file object; ``GET /v1/files/{id}/content`` its bytes.
- ``POST /v1/batches``                 ``{input_file_id, endpoint, completion_window, metadata}``: a batch
  (``validating``). Every line of the input file is checked as OpenAI does (JSON, a unique ``custom_id``,
  ``method`` POST, ``url`` equal to the batch's ``endpoint``, a ``body`` object); a bad line makes the batch
  ``failed`` with ``errors.data`` naming the line.
- ``GET  /v1/batches/{id}``            the batch. ``in_progress`` until ``batch_delay`` seconds after its
  creation; the first look after that runs every request through the mock's own chat, completions or
  embeddings logic (directives included: ``[[mock:status=500]]`` makes that one request fail), writes the
  output file (answers with status 200) and the error file (the other answers, and the expired requests)
  and returns the batch ``completed`` (``expired`` when some requests expired) with ``request_counts``.
- ``GET  /v1/batches``                 newest first; ``limit`` (default 20) and ``after`` (a batch id)
  page through them, with ``has_more``. Each batch carries the ``metadata`` it was created with.
- ``POST /v1/batches/{id}/cancel``     a running batch becomes ``cancelling``, then ``cancelled`` at the next
  look, with no output.

A test can also complete a batch with results made elsewhere (``MockServer.finish_batch``: vLLM's offline
``run_batch`` run over the batch's input file, in ``tests/test_vllm_real.py``).

Options (:class:`~tests.mock_openai.server.MockOptions`, also through ``/_config``): ``batch_delay`` (seconds
before a batch completes), ``batch_expire_after`` (-1: never; else the batch expires after answering that
many requests, the rest get ``batch_expired`` errors) and ``batch_order`` (``shuffled``, the default: the
output and error lines in a random order, seeded by the batch id, as a provider may return them; ``input``:
in input order). Requests answered through a batch are not model requests of ``/_stats`` (``total`` and
``by_endpoint`` count live calls only): ``batch_requests`` counts them, and ``batch_api`` counts the calls
to these endpoints, as ``"POST /v1/files"``, ``"GET /v1/batches/{id}"``, ``"POST /v1/batches"``...
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .server import MockApp, Reply

FINAL = {"completed", "expired", "cancelled", "failed"}
HANDLER_TIMEOUT = 10.0  # a ``hang`` directive in a batched request becomes a 504 result, not a stuck batch


def parse_multipart(raw: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, bytes)`` of a ``multipart/form-data`` body."""
    boundary = ""
    for part in content_type.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise ValueError("multipart body without a boundary")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for chunk in raw.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        name = filename = None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if line.lower().startswith("content-disposition"):
                for item in line.split(";")[1:]:
                    key, _, value = item.strip().partition("=")
                    if key == "name":
                        name = value.strip('"')
                    elif key == "filename":
                        filename = value.strip('"')
        if name is not None:
            fields[name] = (filename, body[:-2] if body.endswith(b"\r\n") else body)
    return fields


class MockBatches:
    """Files and batches of one mock server (kept across ``reset()``, like a provider's)."""

    def __init__(self, app: MockApp) -> None:
        self.app = app
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._ids = 0

    def _id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_mock{self._ids}"

    def _json(self, status: int, value: Any) -> Reply:
        from .server import Reply

        return Reply(status, json.dumps(value).encode())

    def _error(self, status: int, message: str) -> Reply:
        from .server import Reply, error_body

        return Reply(status, error_body(status, message))

    async def handle(self, method: str, path: str, raw: bytes, headers: Mapping[str, str] | None) -> Reply:
        route, _, query = path.partition("?")
        parts = route.strip("/").split("/")  # v1, files|batches, id?, content|cancel?
        shape = "/" + "/".join("{id}" if i == 2 else part for i, part in enumerate(parts))
        self.app.state.batch_calls[f"{method} {shape}"] += 1
        params = dict(item.partition("=")[::2] for item in query.split("&") if item)
        kind, item, action = parts[1], (parts[2] if len(parts) > 2 else None), (parts[3] if len(parts) > 3 else None)
        if len(parts) > 4 or (
            action is not None and (kind, action) not in (("files", "content"), ("batches", "cancel"))
        ):
            return self._error(404, f"unknown path {route}")
        if kind == "files":
            if item is None:
                return await self._upload(raw, headers) if method == "POST" else self._error(405, "method not allowed")
            if method != "GET":
                return self._error(405, "method not allowed")
            return self._file(item, content=action == "content")
        if item is None:
            if method == "POST":
                return self._create(raw)
            return self._list(params) if method == "GET" else self._error(405, "method not allowed")
        batch = self.batches.get(item)
        if batch is None:
            return self._error(404, f"no batch {item}")
        if action == "cancel":
            return self._cancel(batch) if method == "POST" else self._error(405, "method not allowed")
        if method != "GET":
            return self._error(405, "method not allowed")
        await self._advance(batch)
        return self._json(200, batch)

    # ---- files ---------------------------------------------------------------------------------

    async def _upload(self, raw: bytes, headers: Mapping[str, str] | None) -> Reply:
        content_type = ""
        if headers is not None:
            content_type = headers.get("content-type") or headers.get("Content-Type") or ""
        try:
            fields = parse_multipart(raw, content_type)
        except ValueError as exc:
            return self._error(400, str(exc))
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if "file" not in fields or purpose != "batch":
            return self._error(400, "an upload needs a 'file' and purpose=batch")
        filename, content = fields["file"]
        return self._json(200, self._store(content, filename or "upload.jsonl", "batch"))

    def _store(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = self._id("file")
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
        }
        self.contents[file_id] = content
        return self.files[file_id]

    def _file(self, file_id: str, *, content: bool) -> Reply:
        from .server import Reply

        if file_id not in self.files:
            return self._error(404, f"no file {file_id}")
        return Reply(200, self.contents[file_id]) if content else self._json(200, self.files[file_id])

    # ---- batches -------------------------------------------------------------------------------

    def _create(self, raw: bytes) -> Reply:
        try:
            body = json.loads(raw)
        except ValueError:
            return self._error(400, "body is not valid JSON")
        file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
        if file_id not in self.files:
            return self._error(400, f"no file {file_id}")
        if endpoint not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            return self._error(400, f"endpoint {endpoint!r} is not supported")
        if body.get("completion_window") != "24h":
            return self._error(400, "completion_window must be '24h'")
        now = time.time()
        batch_id = self._id("batch")
        lines, errors = self._check(self.contents[file_id], endpoint)
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": endpoint,
            "errors": {"object": "list", "data": errors} if errors else None,
            "input_file_id": file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(now),
            "completed_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata") or {},
            "_created": now,
            "_lines": lines,
        }
        return self._json(200, self._shown(self.batches[batch_id]))

    def _check(self, content: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The requests of an input file, and the problems that fail the batch (one per bad line)."""
        lines, errors, seen = [], [], set()
        for number, raw in enumerate(content.splitlines(), 1):
            try:
                line = json.loads(raw)
            except ValueError:
                errors.append({"code": "invalid_json_line", "message": "not valid JSON", "line": number})
                continue
            cid = line.get("custom_id") if isinstance(line, dict) else None
            problem = None
            if not isinstance(cid, str) or cid in seen:
                problem = ("duplicate_custom_id" if cid in seen else "missing_custom_id", "custom_id")
            elif line.get("method") != "POST":
                problem = ("invalid_method", "method must be POST")
            elif line.get("url") != endpoint:
                problem = ("mismatched_url", f"url must be the batch's endpoint {endpoint}")
            elif not isinstance(line.get("body"), dict):
                problem = ("invalid_body", "body must be an object")
            if problem is not None:
                errors.append({"code": problem[0], "message": problem[1], "line": number})
                continue
            seen.add(cid)
            lines.append(line)
        return lines, errors

    @staticmethod
    def _shown(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _list(self, params: dict[str, str]) -> Reply:
        newest = sorted(self.batches.values(), key=lambda b: (b["_created"], b["id"]), reverse=True)
        after = params.get("after")
        if after:
            ids = [b["id"] for b in newest]
            newest = newest[ids.index(after) + 1 :] if after in ids else []
        limit = int(params.get("limit") or 20)
        page = newest[:limit]
        return self._json(
            200,
            {
                "object": "list",
                "data": [self._shown(b) for b in page],
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(newest) > limit,
            },
        )

    def _cancel(self, batch: dict[str, Any]) -> Reply:
        if batch["status"] in ("validating", "in_progress"):
            batch["status"] = "cancelling"
        return self._json(200, self._shown(batch))

    async def _advance(self, batch: dict[str, Any]) -> None:
        """What time has done to a batch since it was last looked at."""
        status = batch["status"]
        if status == "cancelling":
            batch.update(status="cancelled", cancelled_at=int(time.time()))
        elif status == "validating":
            batch["status"] = "failed" if batch["errors"] else "in_progress"
            if batch["errors"]:
                batch["failed_at"] = int(time.time())
        if batch["status"] == "in_progress" and time.time() - batch["_created"] >= self.app.state.options.batch_delay:
            await self._run(batch)

    def finish(self, batch_id: str, results: bytes) -> None:
        """Complete a batch with results made elsewhere (lines in OpenAI's output format: another engine ran its
        input file, e.g. vLLM's offline ``run_batch``); lines without status 200 go to its error file."""
        batch = self.batches[batch_id]
        output, errors = [], []
        for raw in results.splitlines():
            if raw.strip():
                response = json.loads(raw).get("response") or {}
                (output if response.get("status_code") == 200 else errors).append(raw + b"\n")
        name = batch["id"]
        if output:
            batch["output_file_id"] = self._store(b"".join(output), f"{name}_output.jsonl", "batch_output")["id"]
        if errors:
            batch["error_file_id"] = self._store(b"".join(errors), f"{name}_error.jsonl", "batch_output")["id"]
        batch["request_counts"] = {"total": len(batch["_lines"]), "completed": len(output), "failed": len(errors)}
        batch.update(status="completed", completed_at=int(time.time()))

    async def _run(self, batch: dict[str, Any]) -> None:
        """Answer every request, as the live endpoints would, into an output and an error file."""
        options = self.app.state.options
        handlers = {
            "/v1/chat/completions": self.app.chat,
            "/v1/completions": self.app.completions,
            "/v1/embeddings": self.app.embeddings,
        }
        handler = handlers[batch["endpoint"]]
        output, errors = [], []
        expired = False
        for index, line in enumerate(batch["_lines"]):
            request_id = f"batch_req_{batch['id']}_{index}"
            if 0 <= options.batch_expire_after <= index:
                expired = True
                message = "This request could not be executed before the completion window expired."
                errors.append(
                    {
                        "id": request_id,
                        "custom_id": line["custom_id"],
                        "response": None,
                        "error": {"code": "batch_expired", "message": message},
                    }
                )
                continue
            self.app.state.batch_requests += 1
            try:
                reply = await asyncio.wait_for(handler(json.dumps(line["body"]).encode(), {}), HANDLER_TIMEOUT)
                status, body = reply.status or 500, json.loads(reply.payload or b'{"error": {"message": "dropped"}}')
            except asyncio.TimeoutError:
                status, body = 504, {"error": {"message": "mock: request timed out in the batch"}}
            result = {
                "id": request_id,
                "custom_id": line["custom_id"],
                "response": {"status_code": status, "request_id": request_id, "body": body},
                "error": None,
            }
            (output if status == 200 else errors).append(result)
        if options.batch_order != "input":
            order = random.Random(f"{options.seed}:{batch['id']}")
            order.shuffle(output)
            order.shuffle(errors)
        name = f"{batch['id']}"
        if output:
            content = "".join(json.dumps(r) + "\n" for r in output).encode()
            batch["output_file_id"] = self._store(content, f"{name}_output.jsonl", "batch_output")["id"]
        if errors:
            content = "".join(json.dumps(r) + "\n" for r in errors).encode()
            batch["error_file_id"] = self._store(content, f"{name}_error.jsonl", "batch_output")["id"]
        failed = len(errors)
        batch["request_counts"] = {"total": len(batch["_lines"]), "completed": len(output), "failed": failed}
        batch["status"] = "expired" if expired else "completed"
        batch["completed_at" if not expired else "expired_at"] = int(time.time())
