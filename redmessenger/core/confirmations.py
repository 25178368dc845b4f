"""
Confirmations of live messages (SPEC §3.4).

A message written to a socket may still be lost with the connection (in
buffers, in flight).  Each socket keeps its live messages until the client
confirms them (one confirmation under way per socket, asked for at most every
``confirm_delay``); if it goes away first, the unconfirmed ones are delivered
again or queued (:meth:`redmessenger.core.hub.Hub.detach`).  Duplicates
are then possible for what was sent during the last ``confirm_delay`` and round
trip; losses are not.

Each socket is asked ``confirm_delay`` after its first unconfirmed message, not
all of them at once: a thousand pings (and pongs) in one turn held every
message behind them for 50-130 ms.  A message written to the socket in the
second half of that delay carries the request along instead (the ping goes out
in the same send() as the message): a ping of its own costs a send() and wakes
the client once more.
"""

from __future__ import annotations

import math
from collections import deque

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from redmessenger.core.budget import Budget
from redmessenger.core.presence import Attachment, Sent, confirmed


class Confirmations:
    """Asks each socket, in time, to confirm what it was sent; forgets what it confirmed."""

    #: Seconds live messages wait before their socket is asked to confirm them:
    #: one ping then covers every message sent meanwhile.  Under load a ping per
    #: reactor turn per socket cost as much as the messages themselves; the price
    #: is that a dropped connection may see this much more delivered twice.
    confirm_delay = 0.5
    #: Seconds: sockets due for a confirmation within this of each other are asked in the same turn.
    confirm_tick = 0.01

    def __init__(self, clock: IReactorTime, budget: Budget) -> None:
        self._clock = clock
        self._budget = budget
        #: Sockets to ask: (by when, the socket, its ask_from then), in that
        #: order since the delay is the same for all.  An entry whose ask_from
        #: no longer matches the socket's is spent: a message carried the request.
        self._due: deque[tuple[float, Attachment, float]] = deque()
        self._call: IDelayedCall | None = None
        self._stopped = False

    def sent(self, attachment: Attachment, now: float) -> None:
        """A live message was just written to the socket (and recorded in ``attachment.unconfirmed``)."""
        if not attachment.confirming:
            self.want(attachment)
        elif now >= attachment.ask_from:
            self.ask_now(attachment)

    def want(self, attachment: Attachment) -> None:
        """The socket has unconfirmed messages: ask it within ``confirm_delay``."""
        if attachment.confirming:
            return
        attachment.confirming = True
        now = self._clock.seconds()
        attachment.ask_from = ask_from = now + self.confirm_delay / 2
        self._due.append((now + self.confirm_delay, attachment, ask_from))
        if self._call is None and not self._stopped:
            self._call = self._clock.callLater(self.confirm_delay, self._ask_due)

    def ask_now(self, attachment: Attachment) -> None:
        attachment.ask_from = math.inf
        unconfirmed = attachment.unconfirmed
        last = unconfirmed[-1] if unconfirmed else None
        attachment.sink.confirm().addCallback(self._confirmed, attachment, last)

    def stop(self) -> None:
        self._stopped = True
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _ask_due(self) -> None:
        self._call = None
        due = self._clock.seconds() + self.confirm_tick
        queue = self._due
        while queue and queue[0][0] <= due:
            _, attachment, ask_from = queue.popleft()
            # Not if a message carried the request already (the entry is spent).
            if attachment.attached and attachment.ask_from == ask_from:
                self.ask_now(attachment)
        if queue and not self._stopped:
            delay = max(queue[0][0] - self._clock.seconds(), self.confirm_tick)
            self._call = self._clock.callLater(delay, self._ask_due)

    def _confirmed(self, received: bool, attachment: Attachment, last: Sent | None) -> None:
        attachment.confirming = False
        if not received or not attachment.attached:
            return  # Hub.detach has taken care of what was unconfirmed
        self.read_up_to(attachment, last)
        if attachment.unconfirmed:
            self.want(attachment)

    def read_up_to(self, attachment: Attachment, last: Sent | None) -> None:
        """
        The client read everything written to the socket before a request it answered yes, whoever asked (this,
        or a queue handover): the live messages up to ``last``, the last of them then, are confirmed.
        """
        unconfirmed = attachment.unconfirmed
        # Up to the last one sent before the request (acks by id may have trimmed some meanwhile: Hub.acknowledged).
        count = 0
        if last is not None:
            for index in range(len(unconfirmed) - 1, -1, -1):
                if unconfirmed[index] is last:
                    count = index + 1
                    break
        if count:
            self._budget.give_back(attachment, confirmed(attachment.uid, unconfirmed[:count]))
            del unconfirmed[:count]
