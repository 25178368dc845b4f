"""
The pub/sub probe: a subscription that died without a word is noticed.

A subscription can die silently: a NAT or a proxy between the daemon and Redis
drops the connection and never closes it, or a server forgets it.  The daemon
then hears nothing, which looks the same as no traffic.  Every ``interval``
seconds the probe PUBLISHes on the daemon's own channel and expects the
subscriber to hear it.  When Redis answers that nobody received it, or the
subscriber has read nothing at all by the next tick, the subscription is silent:
the probe counts it (``LinkState.probe_silences``), says why in
``LinkState.last_error`` (``/health`` shows it) and closes the subscriber
connection, which opens again.  A subscriber that is reading but has not reached
the probe yet (behind a burst) is alive and left alone.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from redmessenger.core.ports import LinkState
from redmessenger.logs import make_logger

#: What a probe carries on the daemon's own channel (then its number): no answer from the
#: application starts with a NUL byte, so the two cannot be taken for each other.
PROBE_PREFIX = b"\x00redmessenger-probe:"


class SubscriptionProbe:
    log = make_logger()

    def __init__(
        self,
        reactor: Any,
        interval: float,
        channel: bytes,
        state: LinkState,
        publish: Callable[[bytes, bytes], Deferred[Any]],
        resubscribe: Callable[[], None],
    ) -> None:
        self._reactor = reactor
        self._interval = interval
        self._channel = channel
        self._state = state
        self._publish = publish
        self._resubscribe = resubscribe
        #: Reads of the subscriber connection, counted by the link: one since a probe went out shows it alive.
        self.reads = 0
        self._sent = 0
        #: The probe Redis delivered and the subscriber has not heard yet: (token, when, reads then).
        self._out: tuple[bytes, float, int] | None = None
        self._last_heard: bytes | None = None
        self._silence: str | None = None
        self._loop = LoopingCall(self.tick)
        self._loop.clock = reactor
        self._stopped = False

    def start(self) -> None:
        self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        self._stopped = True
        if self._loop.running:
            self._loop.stop()

    def tick(self) -> None:
        state, out = self._state, self._out
        if not (state.subscribed and state.commands_connected) or self._stopped:
            self._out = None
            return
        if out is not None and self.reads == out[2]:
            self._silent(f"a probe published {self._reactor.seconds() - out[1]:.1f}s ago was not heard")
            return
        self._sent += 1
        token = PROBE_PREFIX + str(self._sent).encode("ascii")
        self._out = None
        self._publish(self._channel, token).addCallbacks(self._published, lambda f: None, callbackArgs=(token,))

    def _published(self, receivers: Any, token: bytes) -> None:
        """Redis delivered the probe to ``receivers`` subscribers (ours, if it is alive), or to none."""
        if self._stopped or not self._state.subscribed or token == self._last_heard:
            return
        if int(receivers) == 0:
            self._silent("Redis says nobody is subscribed to this daemon's channel")
            return
        self._out = (token, self._reactor.seconds(), self.reads)

    def heard(self, token: bytes) -> None:
        self._last_heard = token
        self._out = None
        self._state.probe_heard_at = self._reactor.seconds()

    def take_silence(self) -> str | None:
        """Why the subscriber connection was closed, if it was for its silence (once)."""
        silence, self._silence = self._silence, None
        return silence

    def _silent(self, why: str) -> None:
        self._out = None
        self._state.probe_silences += 1
        self._state.last_error = self._silence = f"pub/sub silent: {why}"
        self.log.warn("Redis pub/sub is silent ({why}); subscribing again", why=why)
        self._resubscribe()
