"""
The application, reached through Redis (the :class:`~redmessenger.core.ports.Application`
port; the exchange is in ``docs/protocol.md``, *Channels: the application's side*):

- a subscription request is one entry of the ``rm:requests`` stream, added by a
  script only if the stream has a consumer group (an application reading it):
  otherwise it is denied at once rather than after the timeout;
- the answer comes back as a PUBLISH on this daemon's own channel
  (``rm.answers.$run``, the request's ``reply_to``), read by the subscriber
  connection: one worker of the application's consumer group answers each request;
- a client's publish is a PUBLISH on ``rm.client.channels.$cid``, which every
  daemon (this one too) hears and delivers like a message on ``rm.channels.$cid``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from redmessenger.core.ports import NobodyListening, StoreUnavailable
from redmessenger.logs import make_logger
from redmessenger.model.channels import (
    Answer,
    BadAnswer,
    Sender,
    SubscriptionRequest,
    client_publish_json,
    parse_answer,
)
from redmessenger.model.keyspace import REQUESTS_MAXLEN, REQUESTS_STREAM, client_channel
from redmessenger.redis_edge.commands import RedisCommands
from redmessenger.redis_edge.errors import translated
from redmessenger.redis_edge.scripts import REQUEST


class RedisApplication:
    """Hands requests to the application through a stream, matches the answers, publishes clients' messages."""

    log = make_logger()

    def __init__(self, commands: RedisCommands, connected: Callable[[], bool], clock: IReactorTime, timeout: float) -> None:
        self._commands = commands
        #: Whether the command connection is up: txredisapi keeps commands while it is not, and
        #: sends them when it is back; a client's publish must fail now (unavailable), not go out late.
        self._connected = connected
        self._clock = clock
        self._timeout = timeout
        #: request id -> who waits for its answer.
        self._waiting: dict[str, Deferred[Answer]] = {}
        #: Answers that matched no waiting request (late, or for another daemon's run), since start.
        self.stray_answers = 0

    def ask(self, request: SubscriptionRequest) -> Deferred[Answer]:
        waiting = self._waiting

        def cancel(d: Deferred[Answer]) -> None:
            waiting.pop(request.id, None)

        answer: Deferred[Answer] = Deferred(canceller=cancel)
        if not self._connected():
            answer.errback(StoreUnavailable("the Redis command connection is down"))
            return answer
        waiting[request.id] = answer

        def added(result: Any) -> None:
            if not result and waiting.pop(request.id, None) is not None:
                answer.errback(NobodyListening())

        def failed(failure: Failure) -> None:
            if waiting.pop(request.id, None) is not None:
                answer.errback(failure)

        d = translated(self._commands.eval(REQUEST, [REQUESTS_STREAM], [REQUESTS_MAXLEN, *request.fields()]))
        d.addCallbacks(added, failed)
        return answer

    def on_answer(self, raw: bytes) -> None:
        """A message on this daemon's answers channel."""
        try:
            answer = parse_answer(raw)
        except BadAnswer as e:
            self.log.warn("Ignoring a message on the answers channel: {why}", why=str(e))
            return
        waiter = self._waiting.pop(answer.request_id, None)
        if waiter is None:
            self.stray_answers += 1  # answered after the timeout, or twice
            return
        waiter.callback(answer)

    def publish(self, cid: str, sender: Sender, payload: str) -> Deferred[None]:
        def heard(receivers: Any) -> None:
            if not receivers:
                # Not even this daemon's subscriber heard it (it is reconnecting): it reaches nobody.
                raise StoreUnavailable("no daemon is subscribed")

        if not self._connected():
            return fail(StoreUnavailable("the Redis command connection is down"))
        sent = self._commands.execute_command("PUBLISH", client_channel(cid), client_publish_json(sender, payload))
        # Redis slow to answer: the client hears "unavailable" (the PUBLISH may still land: at most once more).
        d: Deferred[None] = translated(sent.addTimeout(self._timeout, self._clock)).addCallback(heard)
        return d
