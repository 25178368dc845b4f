"""The part of a txredisapi connection handler the edge's modules use (so that tests can record it)."""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred


class RedisCommands(Protocol):
    def eval(self, script: bytes, keys: list[Any] = ..., args: list[Any] = ...) -> Deferred[Any]: ...

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]: ...
