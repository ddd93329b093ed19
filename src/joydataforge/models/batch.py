"""Calls that wait for a provider batch instead of being sent: the pending-request collector and the results.

A batched run (docs/cost.md, "Batch") goes through the pipeline as usual, with a :class:`BatchCollector` on
the gateway. A call answered by the cache returns as always. A call that is not, to a model the collector
takes, is not sent: its request (the very body a live call would send, built by the backend's ``request``)
is appended to the stage's batch input file as one line of OpenAI's batch format, its ``custom_id`` being the
call's cache key, and the call raises :class:`CallDeferred`, which leaves its record unfinished. Once the
batch is done, each result is written into the call cache under its ``custom_id``
(:func:`cache_entry`), so the next pass finds every answer of that stage in the cache and goes one stage
further. The cache is what makes this exact: a batched answer is indistinguishable from a live one.

A call whose batched request failed (an error result, an expired or cancelled batch) is in the run's
``failed`` map; the model's ``batch_failed`` says what the next pass does with it: batch it again (at most
:data:`BATCH_TRIES` tries in all), send it live, or fail it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import JoyForgeError, ModelError
from .backends.openai_compat import error_text
from .config import ModelConfig
from .prices import Price

if TYPE_CHECKING:
    from .gateway import ModelClient

BATCH_TRIES = 3
"""Tries of one request through batches (``batch_failed: retry_batch``) before the call fails."""
MAX_REQUESTS = 50_000
"""Requests in one batch at most (OpenAI's limit); a stage with more goes out as several batches."""
MAX_BYTES = 190 * 1024 * 1024
"""Bytes of one batch input file at most (OpenAI's limit is 200 MB)."""
API_ROOT = "/v1"  # a batch line's url is the endpoint under the API root, whatever the provider's base_url


class CallDeferred(JoyForgeError):
    """This call's answer will come from a provider batch: its record cannot finish in this pass.

    Deliberately not a :class:`ModelError`: steps that record a failed call and go on (a voter, a judge)
    must not turn "answered later" into a finished record with degraded content.
    """


def has_batch_api(config: ModelConfig) -> bool:
    return config.capabilities.batch_api


def batch_price(price: Price | None) -> Price | None:
    """What a batched call costs: the batch prices where the model has them (``pricing:``, or the price table's
    batch discount), else the standard ones."""
    if price is None or not price.has_batch:
        return price
    assert price.batch_input_per_mtok is not None and price.batch_output_per_mtok is not None
    return Price(price.batch_input_per_mtok, price.batch_output_per_mtok, price.source + " (batch)")


@dataclass
class Chunk:
    """One batch input file being written: the requests of one model to one endpoint."""

    name: str
    model: str
    url: str
    path: Path
    requests: int = 0
    size: int = 0
    tokens: int = 0  # the most its requests can take, and cost at the batch price (counted under run.budget only)
    cost: float = 0.0
    handle: IO[bytes] | None = field(default=None, repr=False)


class BatchCollector:
    """The calls of one pass that wait for a batch, written as batch input files in ``folder``.

    One file per model and endpoint (a batch serves one endpoint), split at :data:`MAX_REQUESTS` and
    :data:`MAX_BYTES`; a request asked twice in a pass (two records with the same prompt) is written once.
    ``every_model``: ``joyforge run --batch`` (every model with a batch API), else only models with
    ``batch: true``. ``failed``: the cache keys of requests that failed in earlier batches, with
    ``error`` and ``tries``. ``new_name`` names each new file (its batch's local id).
    """

    def __init__(
        self,
        folder: Path,
        new_name: Callable[[], str],
        failed: Mapping[str, Mapping[str, Any]],
        *,
        every_model: bool,
        max_requests: int = MAX_REQUESTS,
        max_bytes: int = MAX_BYTES,
    ):
        self.folder = folder
        self.new_name = new_name
        self.failed = failed
        self.every_model = every_model
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.keys: set[str] = set()
        self.chunks: list[Chunk] = []
        self._open: dict[tuple[str, str], Chunk] = {}

    def takes(self, config: ModelConfig) -> bool:
        """Whether calls to this model wait for a batch."""
        return has_batch_api(config) and (self.every_model or config.batch)

    def intercept(
        self,
        client: ModelClient,
        key: str,
        verb: str,
        payload: Any,
        params: dict[str, Any],
        schema: dict[str, Any] | None,
        n: int,
        seed: int,
    ) -> None:
        """Called by the gateway for a call the cache does not answer: defer it (raise :class:`CallDeferred`),
        fail it (a request whose batches failed, per ``batch_failed``), or return: send it live."""
        request = getattr(client.backend, "request", None)
        if request is None or verb not in ("chat", "chat_tools", "complete"):
            return  # embeddings, rewards, a backend that cannot write a batch line: live
        failed = self.failed.get(key)
        if failed is not None:
            policy = client.config.batch_failed
            if policy == "live":
                return
            if policy == "fail" or int(failed.get("tries", 1)) >= BATCH_TRIES:
                tries = int(failed.get("tries", 1))
                raise ModelError(
                    f"model '{client.name}': batched request failed ({failed.get('error')}; "
                    f"{tries} {'try' if tries == 1 else 'tries'}, batch_failed: {policy})",
                    model=client.name,
                )
        if key not in self.keys:
            path, body = request(verb, payload, params, json_schema=schema, seed=seed, n=n)
            url = API_ROOT + path
            line = json.dumps({"custom_id": key, "method": "POST", "url": url, "body": body}, ensure_ascii=False)
            chunk = self._append(client.name, url, (line + "\n").encode("utf-8"))
            self.keys.add(key)
            if client.budget is not None:  # what run.budget holds against before the batch is sent
                _, prompt, completion = client.reservation(payload, params, n)
                price = batch_price(client.price)
                chunk.tokens += prompt + completion
                chunk.cost += price.cost(prompt, completion) if price is not None else 0.0
        raise CallDeferred(f"model '{client.name}': call deferred to a batch")

    def _append(self, model: str, url: str, line: bytes) -> Chunk:
        chunk = self._open.get((model, url))
        if chunk is not None and (chunk.requests >= self.max_requests or chunk.size + len(line) > self.max_bytes):
            self._seal(chunk)
            chunk = None
        if chunk is None:
            name = self.new_name()
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{name}.jsonl"
            chunk = Chunk(name, model, url, path, handle=path.open("wb"))
            self._open[(model, url)] = chunk
            self.chunks.append(chunk)
        assert chunk.handle is not None
        chunk.handle.write(line)
        chunk.requests += 1
        chunk.size += len(line)
        return chunk

    def _seal(self, chunk: Chunk) -> None:
        """Flush the file to disk (it is named in the intent written next) and close it."""
        if chunk.handle is not None:
            chunk.handle.flush()
            os.fsync(chunk.handle.fileno())
            chunk.handle.close()
            chunk.handle = None
        self._open.pop((chunk.model, chunk.url), None)

    def close(self) -> list[Chunk]:
        """Every file of this pass, on disk; an empty list when nothing was deferred."""
        for chunk in list(self._open.values()):
            self._seal(chunk)
        return self.chunks

    def discard(self) -> None:
        """Forget this pass's files (the run stopped before they were submitted)."""
        for chunk in self.close():
            chunk.path.unlink(missing_ok=True)
        self.chunks = []
        self.keys.clear()


# ----------------------------------------------------------------------------------------------- results


@dataclass
class Result:
    """One request's result in a batch's output or error file: the reply body, or why there is none."""

    body: dict[str, Any] | None = None
    error: str | None = None


def read_results(*contents: bytes) -> dict[str, Result]:
    """Results by ``custom_id`` from the output and error files of a batch (lines in any order); a request with
    a good result somewhere keeps it."""
    results: dict[str, Result] = {}
    for content in contents:
        for raw in content.splitlines():
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # a torn line names no request: that request counts as not answered
            if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
                continue
            result = _result_of(line)
            known = results.get(line["custom_id"])
            if known is None or known.body is None:
                results[line["custom_id"]] = result
    return results


def _result_of(line: dict[str, Any]) -> Result:
    response = line.get("response") if isinstance(line.get("response"), dict) else {}
    status = response.get("status_code")
    body = response.get("body")
    error = line.get("error")
    if not error and status == 200 and isinstance(body, dict):
        return Result(body=body)
    if isinstance(error, dict):  # OpenAI's {code, message}; vLLM's whole error response {error: {message...}}
        said = error_text(error) or " ".join(str(error.get(k)) for k in ("code", "message") if error.get(k))
    elif error:
        said = str(error)
    else:
        said = error_text(body) or (json.dumps(body)[:200] if body is not None else "no reply body")
    return Result(error=f"HTTP {status}: {said}" if status else said)


def verb_of(url: str, body: dict[str, Any]) -> str:
    """The gateway verb of a batch line, from its endpoint and body (``tools`` marks ``chat_tools``)."""
    if url.endswith("/chat/completions"):
        return "chat_tools" if "tools" in body else "chat"
    if url.endswith("/completions"):
        return "complete"
    raise ModelError(f"a batch line for {url}: not an endpoint this gateway batches")


def cache_entry(
    backend: Any, url: str, request: dict[str, Any], reply: dict[str, Any]
) -> tuple[dict[str, Any], int, int, int]:
    """The call-cache value a live call would have stored for this reply, and its prompt, completion and reasoning
    tokens (the last are part of the completion's, counted apart as a live call counts them).

    Raises :class:`ModelError` when the reply holds no usable answer (no choices, fewer samples than ``n``).
    """
    verb = verb_of(url, request)
    n = int(request.get("n") or 1) if verb == "complete" else 1
    completions = backend.reply(verb, reply, n)
    if len(completions) != n:
        raise ModelError(f"{len(completions)} samples for n={n}")
    prompt = sum(c.usage.prompt_tokens for c in completions)
    completion = sum(c.usage.completion_tokens for c in completions)
    reasoning = sum(c.usage.reasoning_tokens for c in completions)
    entry = {"choices": [c.to_cache() for c in completions]} if n > 1 else completions[0].to_cache()
    return entry, prompt, completion, reasoning
