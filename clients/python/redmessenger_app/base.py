"""
What the three flavours share, whatever their Redis client: the settings, the
consumer's name, the subscription-request handler, the channel callbacks and
how a pub/sub message reaches them, grants and page tags.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Optional

from redmessenger_app.protocol import (
    DEFAULT_GROUP,
    Sender,
    Settings,
    SubscriptionRequest,
    app_message,
    client_channel,
    client_message,
    group_channel,
    identity_grant,
    page_tags,
    subscription_grant,
)

#: The subscription-request handler: calls permit() or deny() (the flavours say what it may return).
Handler = Callable[[SubscriptionRequest], Any]
#: A channel subscription's callback: the message, and who sent it (None: the application's bare PUBLISH).
Callback = Callable[[Any, Optional[Sender]], Any]

#: The channel subscriptions' connection lost (Redis restarted, a failover): the first wait before connecting
#: and subscribing again, in seconds, doubled after each failed attempt up to the second.
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 2.0


class Application:
    """The application's handle on RedMessenger, less the Redis client each flavour brings."""

    def __init__(self, settings: Optional[Settings], group: str = DEFAULT_GROUP, consumer: Optional[str] = None) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._handler: Optional[Handler] = None
        self._callbacks: dict[str, Callback] = {}
        self._group_ready = False

    # -- subscription requests ------------------------------------------------------------------

    def on(self, event: str, handler: Optional[Handler] = None) -> Any:
        """``on("subscription_request", handler)``, or as a decorator.  The handler calls permit() or deny()."""
        if event != "subscription_request":
            raise ValueError(f"unknown event {event!r}: only 'subscription_request'")

        def register(function: Handler) -> Handler:
            self._accepts(function)
            self._handler = function
            return function

        return register(handler) if handler is not None else register

    def _accepts(self, handler: Handler) -> None:
        """A flavour that cannot run this kind of handler raises TypeError."""

    @staticmethod
    def _group_gone(error: BaseException) -> bool:
        """
        Whether reading requests failed because the consumer group is not there (NOGROUP): Redis restarted
        without its data, a FLUSHDB, ``rm:requests`` deleted.  The flavours create it again, as at start.
        """
        return "NOGROUP" in str(error)

    # -- the application's own channel subscriptions ------------------------------------------

    def subscribe(self, channel: str, callback: Callback) -> None:
        """
        ``callback(message, sender)`` for what clients publish on ``channel`` (sender:
        their client id and uid) and for bare PUBLISHes there (sender None).
        Messages sent through the durable intake (publish()) are not seen here.
        """
        self._callbacks[channel] = callback
        self._subscribed(channel)

    def unsubscribe(self, channel: str) -> None:
        self._callbacks.pop(channel, None)
        self._unsubscribed(channel)

    def _subscribed(self, channel: str) -> None:
        """A running flavour subscribes at once; the others at start()."""

    def _unsubscribed(self, channel: str) -> None:
        pass

    def _pubsub_channels(self) -> list[str]:
        """Every pub/sub channel the callbacks need: what clients publish, and bare PUBLISHes."""
        channels = list(self._callbacks)  # a copy: another thread may subscribe() meanwhile
        return [name for channel in channels for name in (client_channel(channel), group_channel(channel))]

    def _incoming(self, name: Any, data: bytes) -> Optional[tuple[Callback, Any, Optional[Sender]]]:
        """The callback a pub/sub message on ``name`` goes to, with the message and its sender; None if none."""
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        for channel, callback in list(self._callbacks.items()):
            if text == client_channel(channel):
                message, sender = client_message(data)
                return callback, message, sender
            if text == group_channel(channel):
                return callback, app_message(data), None
        return None

    # -- pages and grants -----------------------------------------------------------------------

    def page_tags(self, script: str = "/redmessenger.js") -> str:
        return page_tags(self.settings, script)

    def subscription_grant(self, channel: str, mode: str = "read_write", ttl: int = 3600, uid: Optional[str] = None) -> str:
        return subscription_grant(self._secret(), channel, mode, ttl, uid)

    def identity_grant(self, uid: str, ttl: int = 3600) -> str:
        return identity_grant(self._secret(), uid, ttl)

    def _secret(self) -> str:
        if not self.settings.secret_key:
            raise ValueError("no secret key: set REDMESSENGER_SKEY")
        return self.settings.secret_key
