"""A provider's batch API in OpenAI's shapes: ``/files`` (upload, content) and ``/batches`` (create, retrieve,
list, cancel), under a model's ``base_url`` and with its key.

OpenAI serves it, and so do several OpenAI-compatible providers (Groq, Together, Mistral's compatible
endpoint, vLLM's own server in recent versions...). Only what a batched run needs is here; what a batch is
made of and what becomes of its results is :mod:`.batch`, the run folder's record of batches is
:mod:`joydataforge.engine.batches`.

Failures are sorted like the live backend's: a 429, a 5xx, a timeout or a dropped connection is retried with
backoff (honouring ``Retry-After``); anything else raises :class:`BatchAPIError` at once, with the provider's
own words. No call here costs money by itself but :meth:`BatchAPI.create`, which is why the caller records
an intent before it and looks the batch up by its metadata after a crash (:meth:`BatchAPI.find`).
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import aiohttp

from ..errors import JoyForgeError
from .backends.openai_compat import error_text, parse_retry_after
from .config import ModelConfig
from .retry import RetryPolicy

_TRANSIENT = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524}
COMPLETION_WINDOW = "24h"  # the only window OpenAI's batches offer
LIST_PAGE = 100
LOOKBACK_SECONDS = 3600.0  # a batch listed as created this long before its intent cannot be ours (clock skew)


class BatchAPIError(JoyForgeError):
    """The provider's batch API refused a request, or could not be reached after the retries."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class BatchAPI:
    """The files and batches endpoints of one model's provider."""

    def __init__(self, config: ModelConfig, *, retry: RetryPolicy | None = None, timeout: float = 300.0):
        if not config.base_url:
            raise BatchAPIError(f"model '{config.name}': a batch API needs base_url")
        self.config = config
        self.base = config.base_url.rstrip("/")
        self.retry = retry or RetryPolicy(max_retries=config.max_retries)
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._jitter = random.Random(config.name)

    async def _session_get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {}
            key = self.config.api_key()
            if key:
                headers["Authorization"] = f"Bearer {key}"
            self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def _request(self, method: str, path: str, *, body: Any = None, form: Any = None, raw: bool = False) -> Any:
        """One request with retries; JSON back (bytes with ``raw``). ``form`` is a callable making a fresh
        :class:`aiohttp.FormData` per try (a form's file can be read once)."""
        session = await self._session_get()
        name = self.config.name
        tries = 0
        while True:
            retry_after: float | None = None
            try:
                data = form() if form is not None else None
                async with session.request(method, self.base + path, json=body, data=data) as response:
                    payload = await response.read()
                    status = response.status
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status, payload = 0, f"{type(exc).__name__}: {exc}".encode()
            if 200 <= status < 300:
                if raw:
                    return payload
                try:
                    return json.loads(payload)
                except ValueError:
                    raise BatchAPIError(
                        f"model '{name}': {method} {path} did not answer JSON: {payload[:200]!r}", status=status
                    ) from None
            text = payload.decode("utf-8", errors="replace")
            said = _said(text)
            if (status == 0 or status in _TRANSIENT) and tries < self.retry.max_retries:
                await asyncio.sleep(self.retry.delay(tries, retry_after, self._jitter))
                tries += 1
                continue
            how = "no connection" if status == 0 else f"HTTP {status}"
            hint = " (does this provider offer the batch API at this base_url?)" if status in (404, 405) else ""
            raise BatchAPIError(f"model '{name}': {how} from {method} {path}: {said[:300]}{hint}", status=status)

    async def upload(self, path: Path, filename: str) -> str:
        """Upload a batch input file (``purpose=batch``); its file id."""

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field("file", path.read_bytes(), filename=filename, content_type="application/jsonl")
            return data

        reply = await self._request("POST", "/files", form=form)
        return str(reply["id"])

    async def create(self, input_file_id: str, endpoint: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Create a batch over an uploaded file (the one call that commits money)."""
        body = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": COMPLETION_WINDOW,
            "metadata": metadata,
        }
        return await self._request("POST", "/batches", body=body)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/batches/{batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return await self._request("POST", f"/batches/{batch_id}/cancel")

    async def content(self, file_id: str) -> bytes:
        """A file's bytes (a batch's output or error file)."""
        return await self._request("GET", f"/files/{file_id}/content", raw=True)

    async def find(self, metadata: dict[str, str], since: float) -> dict[str, Any] | None:
        """The batch whose metadata holds all of ``metadata``, among those created after ``since`` (a Unix time)
        less :data:`LOOKBACK_SECONDS`; newest first, page by page, as the provider lists them."""
        after: str | None = None
        while True:
            query = f"?limit={LIST_PAGE}" + (f"&after={after}" if after else "")
            page = await self._request("GET", "/batches" + query)
            batches = page.get("data") or []
            for batch in batches:
                found = batch.get("metadata") or {}
                if all(found.get(k) == v for k, v in metadata.items()):
                    return batch
            oldest = min((b.get("created_at") or 0 for b in batches), default=0)
            if not page.get("has_more") or not batches or oldest < since - LOOKBACK_SECONDS:
                return None
            after = str(batches[-1]["id"])


def _said(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())
    return error_text(data) or " ".join(text.split())
