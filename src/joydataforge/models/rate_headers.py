"""What a server says about its rate limits, read from reply headers (any status).

Hosted APIs send their budget with every reply, in OpenAI's dialect (also Groq's, Together's, DeepSeek's,
many gateways')::

    x-ratelimit-limit-requests: 500        x-ratelimit-limit-tokens: 30000
    x-ratelimit-remaining-requests: 499    x-ratelimit-remaining-tokens: 29900
    x-ratelimit-reset-requests: 120ms      x-ratelimit-reset-tokens: 6m0s

``reset`` is the time until the budget is full again: a Go duration (``1s``, ``6m0s``, ``59.5ms``,
``1h2m3s``), plain seconds, a Unix time, or an HTTP or ISO date. The suffix-less ``x-ratelimit-limit``,
``-remaining`` and ``-reset`` some gateways send count requests. ``retry-after-ms`` (OpenAI, Azure) is
preferred to ``Retry-After`` when both are there: it is exact, where ``Retry-After`` is whole seconds.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_EPOCH = 1e9  # a plain number this large is a Unix time, not a number of seconds to wait


@dataclass(frozen=True)
class Budget:
    """One of the server's budgets (requests or tokens) as a reply saw it."""

    limit: float | None
    remaining: float | None
    reset: float | None  # seconds until it is full again


@dataclass(frozen=True)
class RateLimitInfo:
    requests: Budget | None
    tokens: Budget | None


def parse_duration(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a reset or retry header value; ``None`` when it cannot be read (never raises)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if number != number or number < 0:  # NaN, negative
            return None
        if number >= _EPOCH:
            return max(0.0, number - (time.time() if now is None else now))
        return number
    parts = _DURATION.findall(text)
    if parts and "".join(a + b for a, b in parts) == text.replace(" ", ""):
        return sum(float(amount) * _UNIT_SECONDS[unit] for amount, unit in parts)
    return _date_seconds(text, time.time() if now is None else now)


def _date_seconds(text: str, now: float) -> float | None:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text).timestamp()
        except (TypeError, ValueError, IndexError):
            return None
    return max(0.0, when - now)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if number == number and number >= 0 else None


def _budget(headers: Mapping[str, str], limit: str, remaining: str, reset: str) -> Budget | None:
    budget = Budget(_number(headers.get(limit)), _number(headers.get(remaining)), parse_duration(headers.get(reset)))
    return budget if budget.remaining is not None else None


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """The budgets a reply names (``headers`` as a case-insensitive mapping, like aiohttp's), or ``None``."""
    requests = _budget(
        headers, "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"
    ) or _budget(headers, "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
    tokens = _budget(headers, "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
    if requests is None and tokens is None:
        return None
    return RateLimitInfo(requests, tokens)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """How long the server asks to wait: ``retry-after-ms`` if sent, else ``Retry-After`` (seconds or a date)."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    value = headers.get("Retry-After")
    if value is None:
        return None
    seconds = _number(value)
    return seconds if seconds is not None else _date_seconds(value.strip(), time.time())
