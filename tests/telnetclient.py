"""A real telnet client (Twisted's telnet transport over TCP) that records what the server shows."""

from __future__ import annotations

import re
from typing import Any

from twisted.conch import telnet
from twisted.internet.defer import Deferred

#: VT102 control sequences the manhole's terminal emits (colours, cursor moves).
_ESCAPES = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Za-z0-9]|[A-Za-z=>])")


class _Terminal(telnet.TelnetProtocol):
    """Accepts what a line-mode telnet client accepts (server echo, no go-ahead), refuses the rest."""

    def __init__(self, echo: bool = True) -> None:
        #: Whether to let the server echo (and so hide the password); some clients refuse.
        self.echo = echo
        self.raw = b""
        self.changed: Deferred[None] | None = None
        self.closed: Deferred[None] = Deferred()

    def enableRemote(self, option: bytes) -> bool:
        return option == telnet.SGA or (self.echo and option == telnet.ECHO)

    def disableRemote(self, option: bytes) -> None:
        pass

    def enableLocal(self, option: bytes) -> bool:
        return False

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        self._wake()

    def connectionLost(self, reason: Any) -> None:
        self._wake()
        if not self.closed.called:
            self.closed.callback(None)

    def _wake(self) -> None:
        waiting, self.changed = self.changed, None
        if waiting is not None:
            waiting.callback(None)


class TelnetClient:
    """What tests use: type a line, wait for text on the screen."""

    def __init__(self, terminal: _Terminal) -> None:
        self._terminal = terminal
        self._seen = 0

    @property
    def screen(self) -> str:
        """Everything received, with terminal escapes removed."""
        text = _ESCAPES.sub(b"", self._terminal.raw).replace(b"\r", b"")
        return text.decode("utf-8", "replace")

    @property
    def connected(self) -> bool:
        return not self._terminal.closed.called

    def type(self, line: str) -> None:
        # the telnet transport turns "\n" into the CR LF a telnet client sends
        self._terminal.transport.write(line.encode("utf-8") + b"\n")

    async def expect(self, text: str, timeout: float = 10.0) -> str:
        """Wait until ``text`` appears after what earlier expects consumed; return the screen up to it."""
        from twisted.internet import reactor

        deadline = reactor.seconds() + timeout
        while True:
            screen = self.screen
            found = screen.find(text, self._seen)
            if found >= 0:
                start, self._seen = self._seen, found + len(text)
                return screen[start : self._seen]
            if not self.connected:
                raise AssertionError(f"connection closed before {text!r} appeared; screen: {screen!r}")
            if reactor.seconds() > deadline:
                raise AssertionError(f"{text!r} did not appear within {timeout}s; screen: {screen!r}")
            waiting: Deferred[None] = Deferred()
            self._terminal.changed = waiting
            waiting.addTimeout(max(0.01, deadline - reactor.seconds()), reactor, onTimeoutCancel=lambda *_: None)
            await waiting
            if self._terminal.changed is waiting:  # timed out: nothing may fire it again
                self._terminal.changed = None

    async def closed(self, timeout: float = 5.0) -> None:
        from twisted.internet import reactor

        d: Deferred[None] = Deferred()
        self._terminal.closed.addCallback(lambda _: d.called or d.callback(None))
        d.addTimeout(timeout, reactor)
        await d

    def close(self) -> None:
        self._terminal.transport.loseConnection()


async def connect_telnet(host: str, port: int, echo: bool = True) -> TelnetClient:
    """``echo=False``: a client that refuses to let the server echo (it shows what is typed itself)."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory

    terminal = _Terminal(echo)
    factory = Factory.forProtocol(lambda: telnet.TelnetTransport(lambda: terminal))
    await TCP4ClientEndpoint(reactor, host, port, timeout=5).connect(factory)
    return TelnetClient(terminal)
