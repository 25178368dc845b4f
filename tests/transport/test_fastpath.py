"""
The fast path reads Twisted's and Autobahn's internals: its self-test must pass
on the versions installed (if an upgrade breaks it, this fails first), and with
it switched off the daemon must work the same on public APIs alone.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet.testing import StringTransport

from redmessenger.transport import fastpath, selftest

from ..conftest import publish


@pytest.fixture
def fast_path_off() -> Iterator[None]:
    fastpath.disable("test")
    try:
        yield
    finally:
        fastpath.enable()


def test_send_now_uses_the_ordinary_write_for_other_transports() -> None:
    transport = StringTransport()
    fastpath.send_now(transport, b"frame")
    assert transport.value() == b"frame"


def test_send_now_leaves_what_the_kernel_does_not_take_to_twisted_and_nothing_overtakes_it() -> None:
    """A frame the kernel takes in part, or not at all (its buffer full): the rest goes through Twisted, in order."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Protocol
    from twisted.internet.tcp import Server

    left, right = socket.socketpair()
    left.setblocking(False)
    right.settimeout(5)
    transport = Server(left, Protocol(), ("127.0.0.1", 0), cast(Any, None), 0, reactor)
    transport.stopReading()
    try:
        filler = b"f" * 100_000
        taken = 0
        while True:  # fill the kernel's buffer: the next send() raises EAGAIN
            try:
                taken += left.send(filler)
            except BlockingIOError:
                break
        fastpath.send_now(transport, b"refused whole")
        assert transport.dataBuffer or transport._tempDataLen, "kept by Twisted"
        fastpath.send_now(transport, b"behind it")
        received = bytearray()
        while len(received) < taken:
            received += right.recv(1 << 20)
        while transport.dataBuffer or transport._tempDataLen:
            transport.doWrite()
        expected = b"refused whole" + b"behind it"
        while len(received) < taken + len(expected):
            received += right.recv(1 << 20)
        assert bytes(received[taken:]) == expected
        big = bytes(range(256)) * 16384  # 4 MB: more than the kernel takes in one send()
        fastpath.send_now(transport, big)
        assert transport.dataBuffer or transport._tempDataLen, "the rest kept by Twisted"
        fastpath.send_now(transport, b"last")
        got = bytearray()
        while len(got) < len(big) + 4:
            transport.doWrite()
            got += right.recv(1 << 20)
        assert bytes(got) == big + b"last"
    finally:
        transport.stopWriting()
        left.close()
        right.close()


def test_the_self_test_passes_on_the_installed_twisted_and_autobahn() -> None:
    from twisted.internet import reactor

    assert selftest.self_test(reactor), fastpath.SWITCH.reason
    assert fastpath.SWITCH.enabled


def test_a_failed_self_test_switches_everything_to_public_apis(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet import reactor

    monkeypatch.setattr(fastpath, "_SERVER_INTERNALS", fastpath._SERVER_INTERNALS + ("renamed_in_a_future_twisted",))
    try:
        assert not selftest.self_test(reactor)
        assert not fastpath.SWITCH.enabled
        assert "renamed_in_a_future_twisted" in (fastpath.SWITCH.reason or "")
        assert not isinstance(fastpath.LeanServerProtocol.__dict__.get("maxFramePayloadSize"), fastpath._FactoryOption)
        transport = StringTransport()
        fastpath.send_now(transport, b"frame")
        assert transport.value() == b"frame"
    finally:
        fastpath.enable()
    assert isinstance(fastpath.LeanServerProtocol.__dict__["maxFramePayloadSize"], fastpath._FactoryOption)


@pytest_twisted.ensureDeferred
async def test_with_the_fast_path_off_queue_live_messages_and_confirmations_work(daemon_factory, redis, fast_path_off):
    daemon = await daemon_factory()
    for n in range(3):
        publish(redis, "rm.users.user1", f"queued {n}")
    await daemon.idle()
    client = await daemon.client("user1")
    for n in range(3):
        publish(redis, "rm.users.user1", f"live {n}")
    got = [envelope["payload"] for envelope in await client.receive(6)]
    assert got == [f"queued {n}" for n in range(3)] + [f"live {n}" for n in range(3)]
    await daemon.idle()
    assert not redis.exists("rm:users:user1:messages"), "the queue left Redis once the client confirmed it (pongs read by Autobahn)"
    (attachment,) = daemon.service.presence.get("user1").attachments
    await daemon.until(lambda: not attachment.unconfirmed, what="the live messages confirmed")
