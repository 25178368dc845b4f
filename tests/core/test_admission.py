"""Who may connect: ``allowed_origins`` and ``conn_limit`` (pure logic; the dialects' refusals are tested with real clients)."""

from __future__ import annotations

import pytest

from redmessenger.core.admission import ConnectionLimit, OriginPolicy


def test_any_origin_with_a_star() -> None:
    assert OriginPolicy(["*"]).allows("https://evil.example")


def test_wildcards_match_the_whole_origin_and_nothing_else_is_special() -> None:
    policy = OriginPolicy(["https://*.example.com", "http://localhost:8000"])
    assert policy.allows("https://app.example.com")
    assert policy.allows("http://localhost:8000")
    assert not policy.allows("https://example.com.evil.net")
    assert not policy.allows("https://app.example.com.evil.net")
    assert not policy.allows("http://localhost:80000")
    assert not OriginPolicy(["https://a+b.com"]).allows("https://aab.com"), "'+' is a character, not a repeat"
    assert OriginPolicy(["https://a+b.com"]).allows("https://a+b.com")


def test_requests_without_an_origin_are_not_browsers_and_pass() -> None:
    assert OriginPolicy(["https://example.com"]).allows(None)


def test_the_limit_counts_slots_and_refusals() -> None:
    limit = ConnectionLimit(2)
    assert limit.acquire() and limit.acquire()
    assert not limit.acquire() and limit.refused == 1
    limit.release()
    assert limit.acquire() and limit.in_use == 2
    limit.release()
    limit.release()
    with pytest.raises(RuntimeError):
        limit.release()
