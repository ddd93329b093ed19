"""Reading a server's rate-limit headers: OpenAI's x-ratelimit-*, retry-after-ms, Retry-After, durations."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from joydataforge.models.rate_headers import Budget, parse_duration, parse_rate_limit_headers, retry_after_seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("59.5ms", 0.0595),
        ("1h2m3s", 3723.0),
        ("2m59.56s", 179.56),
        ("0.250s", 0.25),
        ("20", 20.0),
        ("0.5", 0.5),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


def test_times_and_dates_are_seconds_from_now():
    assert parse_duration("2000000010", now=2_000_000_000) == pytest.approx(10.0)
    assert parse_duration("2033-05-18T03:33:30Z", now=2_000_000_000) == pytest.approx(10.0)
    assert parse_duration("Wed, 18 May 2033 03:33:30 GMT", now=2_000_000_000) == pytest.approx(10.0)
    assert parse_duration("2033-05-18T03:33:10Z", now=2_000_000_000) == 0.0  # past: no wait


@pytest.mark.parametrize("text", ["", "soon", "-3", "nan", "5 parsecs", "1x"])
def test_unreadable_values_are_none_never_an_error(text):
    assert parse_duration(text) is None


def test_openai_headers():
    headers = CIMultiDict(
        {
            "X-RateLimit-Limit-Requests": "500",
            "X-RateLimit-Remaining-Requests": "499",
            "X-RateLimit-Reset-Requests": "120ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "29900",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    info = parse_rate_limit_headers(headers)
    assert info is not None
    assert info.requests == Budget(500, 499, pytest.approx(0.12))
    assert info.tokens == Budget(30000, 29900, 360.0)


def test_suffix_less_headers_count_requests_and_no_headers_is_none():
    info = parse_rate_limit_headers(CIMultiDict({"x-ratelimit-limit": "60", "x-ratelimit-remaining": "0"}))
    assert info is not None and info.requests == Budget(60, 0, None) and info.tokens is None
    assert parse_rate_limit_headers(CIMultiDict({"content-type": "application/json"})) is None
    assert parse_rate_limit_headers(CIMultiDict({"x-ratelimit-remaining-requests": "lots"})) is None


def test_retry_after_ms_is_preferred_to_whole_seconds():
    assert retry_after_seconds(CIMultiDict({"Retry-After": "1", "retry-after-ms": "250"})) == pytest.approx(0.25)
    assert retry_after_seconds(CIMultiDict({"Retry-After": "3"})) == 3.0
    assert retry_after_seconds(CIMultiDict({})) is None
