"""The level filter in front of the daemon's loggers (redmessenger.logs)."""

from __future__ import annotations

from typing import Any

from twisted.logger import globalLogPublisher

from redmessenger.logs import debugging, informing, make_logger, set_level


def events_at(level: str) -> list[str]:
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "redmessenger.test":
            seen.append(event["log_format"])

    log = make_logger("redmessenger.test")
    globalLogPublisher.addObserver(observe)
    try:
        set_level(level)
        log.debug("debug")
        log.info("info")
        log.warn("warn")
        log.error("error")
    finally:
        set_level("info")
        globalLogPublisher.removeObserver(observe)
    return seen


def test_each_level_keeps_its_events_and_the_ones_above() -> None:
    assert events_at("debug") == ["debug", "info", "warn", "error"]
    assert events_at("info") == ["info", "warn", "error"]
    assert events_at("warn") == ["warn", "error"]
    assert events_at("error") == ["error"]


def test_the_guards_follow_the_level() -> None:
    try:
        set_level("warn")
        assert (debugging(), informing()) == (False, False)
        set_level("debug")
        assert (debugging(), informing()) == (True, True)
    finally:
        set_level("info")
    assert (debugging(), informing()) == (False, True)
