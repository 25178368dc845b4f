"""The registry of online users: order of sockets, the bubble, the per-user limit (pure logic)."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, succeed

from redmessenger.core.presence import Presence
from redmessenger.model.envelope import Message
from redmessenger.model.errors import ClientError, CloseCode


class Sink:
    client_address = "127.0.0.1:1"
    writable = True
    acknowledges = False

    def send_message(self, message: Message, bubble: bool) -> bool:
        return True

    def confirm(self) -> Deferred[bool]:
        return succeed(True)


def test_the_oldest_socket_carries_the_bubble_and_hands_it_on() -> None:
    presence = Presence()
    a, b, c = (presence.attach("u", Sink()) for _ in range(3))
    assert [presence.carries_bubble(x) for x in (a, b, c)] == [True, False, False]
    presence.detach(a)
    assert [presence.carries_bubble(x) for x in (b, c)] == [True, False]
    presence.detach(b)
    presence.detach(c)
    assert presence.get("u") is None and len(presence) == 0


def test_detaching_twice_is_harmless() -> None:
    presence = Presence()
    a = presence.attach("u", Sink())
    presence.detach(a)
    presence.detach(a)
    assert len(presence) == 0


def test_user_socket_limit() -> None:
    presence = Presence(user_socket_limit=1)
    presence.attach("u", Sink())
    with pytest.raises(ClientError) as raised:
        presence.attach("u", Sink())
    assert raised.value.code == CloseCode.TOO_MANY_SOCKETS
    presence.attach("other", Sink())
