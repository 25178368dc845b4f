"""The lean write path falls back to Twisted's ordinary write when it cannot be sure of the transport."""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from redmessenger.transport import leanws


def test_send_now_uses_the_ordinary_write_for_other_transports() -> None:
    transport = StringTransport()
    leanws.send_now(transport, b"frame")
    assert transport.value() == b"frame"


def test_twisteds_tcp_internals_are_still_there() -> None:
    """If this fails after a Twisted upgrade, writes take the slower ordinary path: look at send_now."""
    import socket

    from twisted.internet import reactor
    from twisted.internet.protocol import Protocol

    left, right = socket.socketpair()
    transport = leanws.Server(left, Protocol(), ("127.0.0.1", 1), None, 1, reactor)
    try:
        assert [n for n in leanws._SERVER_INTERNALS if not hasattr(transport, n)] == []
        assert leanws.has_server_internals(transport)
    finally:
        transport.stopReading()  # the constructor registered it with the reactor
        left.close()
        right.close()


def test_text_frame_lengths() -> None:
    assert leanws.text_frame(b"x") == b"\x81\x01x"
    assert leanws.text_frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert leanws.text_frame(b"x" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")
