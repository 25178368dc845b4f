"""A daemon anyone can read from says so at start (issue 12: the quickstart was open to the network silently)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from ..conftest import free_port


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_listening_on_every_interface_without_secure_mode_is_warned_about(daemon_factory, redis, warnings):
    await daemon_factory(listen=f"tcp:{free_port()}")
    (warning,) = [w for w in warnings if "secure_mode off" in w]
    assert "anyone who reaches this port can read and drain any user's queue" in warning


@pytest.mark.parametrize("overrides", [{"secure_mode": True}, {}], ids=["secure_mode", "loopback"])
@pytest_twisted.ensureDeferred
async def test_loopback_or_secure_mode_is_not_warned_about(daemon_factory, redis, warnings, overrides):
    await daemon_factory(**overrides)  # the tests' daemons listen on 127.0.0.1
    assert not [w for w in warnings if "secure_mode off" in w]
