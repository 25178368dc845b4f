"""
Client input is untrusted: every mistake gets its documented close code and
touches no other socket; secure_mode keys; conn_limit and Origin refusals at the handshake.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from redmessenger.model.errors import CloseCode

from ..conftest import publish
from ..httpclient import http_get

QUEUE = "rm:users:{}:messages"


def websockets_handshake_status(url: str, origin: str | None = None) -> int:
    """Open a WebSocket with the `websockets` library (in a thread); the HTTP status it got."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        kwargs: dict[str, Any] = {"open_timeout": 5}
        if origin is not None:
            kwargs["origin"] = origin
        with connect(url, **kwargs) as ws:
            ws.close()
            return 101
    except InvalidStatus as e:
        return int(e.response.status_code)


async def handshake_status(url: str, origin: str | None = None) -> int:
    from twisted.internet.threads import deferToThread

    return await deferToThread(websockets_handshake_status, url, origin)


@pytest.mark.parametrize(
    "identifier",
    ["", ":key", "user one", "user/1", "a" * 129, "üser", "user\x00"],
    ids=["empty", "no-uid", "space", "slash", "too-long", "non-ascii", "nul"],
)
@pytest_twisted.ensureDeferred
async def test_invalid_uid_is_refused_with_4400(daemon, identifier):
    client = await daemon.client()
    client.send(identifier)
    code, reason = await client.close_code()
    assert code == CloseCode.INVALID_IDENTIFIER == 4400
    assert "invalid uid" in reason
    assert len(daemon.service.presence) == 0


@pytest_twisted.ensureDeferred
async def test_longest_valid_uid_and_every_allowed_character_are_accepted(daemon, redis):
    uid = ("Az09_.@-" * 16)[:128]
    client = await daemon.client(uid)
    publish(redis, f"rm.users.{uid}", "hi")
    assert (await client.next())["payload"] == "hi"
    client.close()


@pytest.mark.parametrize(
    "typed, secure", [("user1\n", False), ("user1\r\n", False), ("user1:s3cret\n", True)], ids=["lf", "crlf", "key-lf"]
)
@pytest_twisted.ensureDeferred
async def test_an_identifier_typed_in_a_terminal_with_its_line_end_is_accepted(daemon_factory, redis, typed, secure):
    # websocat sends "user1\n" when user1 + Enter is typed: it used to be closed with 4400 (issue 12)
    daemon = await daemon_factory(secure_mode=secure)
    redis.set("rm:users:user1:key", "s3cret")
    publish(redis, "rm.users.user1", "queued")
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 1)
    client = await daemon.client()
    client.send(typed)
    assert (await client.next())["payload"] == "queued"
    publish(redis, "rm.users.user1", "live")
    assert (await client.next())["payload"] == "live"
    assert daemon.service.hub.counters.refused == {}
    client.close()


@pytest_twisted.ensureDeferred
async def test_binary_frame_is_refused_with_1003(daemon):
    client = await daemon.client()
    client.send_binary(b"user1")
    code, _ = await client.close_code()
    assert code == CloseCode.UNSUPPORTED_DATA == 1003


@pytest_twisted.ensureDeferred
async def test_oversized_frame_is_refused_with_1009(daemon_factory):
    daemon = await daemon_factory(max_frame_bytes=1024)
    client = await daemon.client()
    client.send("u" * 2000)
    code, _ = await client.close_code()
    assert code == CloseCode.MESSAGE_TOO_BIG == 1009


@pytest_twisted.ensureDeferred
async def test_second_identifier_is_refused_with_4409_and_other_sockets_keep_going(daemon, redis):
    bystander = await daemon.client("user2")
    client = await daemon.client("user1")
    client.send("user2")
    code, _ = await client.close_code()
    assert code == CloseCode.ALREADY_IDENTIFIED == 4409
    publish(redis, "rm.users.user2", "still here")
    assert (await bystander.next())["payload"] == "still here"
    bystander.close()


@pytest_twisted.ensureDeferred
async def test_silence_is_closed_with_4408_after_identify_timeout(daemon_factory):
    daemon = await daemon_factory(identify_timeout=0.3)
    client = await daemon.client()
    code, reason = await client.close_code()
    assert code == CloseCode.IDENTIFY_TIMEOUT == 4408
    assert "0.3" in reason


@pytest_twisted.ensureDeferred
async def test_per_user_socket_limit_closes_the_extra_socket_with_4429(daemon_factory, redis):
    daemon = await daemon_factory(user_socket_limit=2)
    first = await daemon.client("user1")
    second = await daemon.client("user1")
    third = await daemon.client()
    third.send("user1")
    code, _ = await third.close_code()
    assert code == CloseCode.TOO_MANY_SOCKETS == 4429
    publish(redis, "rm.users.user1", "m")
    assert [(await c.next())["payload"] for c in (first, second)] == ["m", "m"]
    first.close()
    second.close()


@pytest_twisted.ensureDeferred
async def test_wrong_path_is_refused_with_404(daemon):
    assert await handshake_status(f"ws://127.0.0.1:{daemon.port}/elsewhere") == 404


@pytest_twisted.ensureDeferred
async def test_plain_get_on_the_route_answers_a_reachability_text(daemon):
    code, _, body = await http_get(daemon.port, "/rm")
    assert (code, body) == (200, b"Hey, you're connected!")


@pytest_twisted.ensureDeferred
async def test_conn_limit_refuses_the_next_handshake_with_503(daemon_factory):
    daemon = await daemon_factory(conn_limit=2)
    first = await daemon.client("user1")
    second = await daemon.client("user2")
    assert await handshake_status(daemon.url) == 503
    # Nothing of the refused connection stays: after one closes, a new one gets in.
    first.close()
    await first.close_code()
    await daemon.until(lambda: len(daemon.service.websockets.sockets) == 1 and daemon.service.limit.in_use == 1)
    assert await handshake_status(daemon.url) == 101
    second.close()


@pytest_twisted.ensureDeferred
async def test_disallowed_origin_is_refused_with_403(daemon_factory):
    daemon = await daemon_factory(allowed_origins=["https://app.example.com"])
    assert await handshake_status(daemon.url, origin="https://evil.example.net") == 403
    assert await handshake_status(daemon.url, origin="https://app.example.com") == 101
    assert await handshake_status(daemon.url) == 101, "no Origin: not a browser, let in"
    assert await handshake_status(daemon.url, origin="null") == 403, "a sandboxed or file:// page: not listed"


@pytest_twisted.ensureDeferred
async def test_the_null_origin_is_an_origin_like_any_other(daemon_factory):
    """Sandboxed iframes and file:// pages send ``Origin: null`` (Chrome: ``file://``): let in by ``*``, or if listed."""
    anyone = await daemon_factory()
    for origin in ("null", "file://"):
        assert await handshake_status(anyone.url, origin=origin) == 101, origin
    listed = await daemon_factory(allowed_origins=["https://app.example.com", "null"])
    assert await handshake_status(listed.url, origin="null") == 101
    assert await handshake_status(listed.url, origin="https://evil.example.net") == 403


# -- secure_mode -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_secure_mode_delivers_to_the_right_key(daemon_factory, redis):
    daemon = await daemon_factory(secure_mode=True)
    redis.set("rm:users:user1:key", "s3cret")
    publish(redis, "rm.users.user1", "for user1")
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 1)
    client = await daemon.client("user1:s3cret")
    assert (await client.next())["payload"] == "for user1"
    client.close()


@pytest.mark.parametrize("identifier", ["user1:wrong", "user1", "user1:", "user1:s3cret2", "user1:s3cre"])
@pytest_twisted.ensureDeferred
async def test_secure_mode_refuses_a_wrong_or_missing_key_and_leaves_the_queue(daemon_factory, redis, identifier):
    daemon = await daemon_factory(secure_mode=True)
    redis.set("rm:users:user1:key", "s3cret")
    publish(redis, "rm.users.user1", "private")
    await daemon.until(lambda: redis.llen(QUEUE.format("user1")) == 1)
    client = await daemon.client()
    client.send(identifier)
    code, reason = await client.close_code()
    assert code == CloseCode.BAD_KEY == 4401
    assert client.received == []
    assert redis.llen(QUEUE.format("user1")) == 1


@pytest_twisted.ensureDeferred
async def test_secure_mode_refuses_a_user_without_a_stored_key(daemon_factory, redis):
    daemon = await daemon_factory(secure_mode=True)
    client = await daemon.client()
    client.send("nokey:anything")
    code, _ = await client.close_code()
    assert code == CloseCode.BAD_KEY


@pytest_twisted.ensureDeferred
async def test_secure_mode_key_never_appears_in_the_logs(daemon_factory, redis):
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event) + repr(event))

    globalLogPublisher.addObserver(observe)
    try:
        from redmessenger.logs import set_level

        set_level("debug")
        daemon = await daemon_factory(secure_mode=True)
        redis.set("rm:users:user1:key", "TopSecretKey42")
        good = await daemon.client("user1:TopSecretKey42")
        bad = await daemon.client()
        bad.send("user1:WrongSecretKey99")
        await bad.close_code()
        good.close()
        await good.close_code()
    finally:
        set_level("info")
        globalLogPublisher.removeObserver(observe)
    assert any("Assigning id user1" in line for line in lines)
    assert not [line for line in lines if "TopSecretKey42" in line or "WrongSecretKey99" in line]


@pytest_twisted.ensureDeferred
async def test_a_key_stored_as_a_non_string_is_a_refusal_not_a_crash(daemon_factory, redis):
    daemon = await daemon_factory(secure_mode=True)
    redis.rpush("rm:users:user1:key", "not-a-string")
    client = await daemon.client()
    client.send("user1:x")
    code, _ = await client.close_code()
    assert code == CloseCode.BAD_KEY
    other = await daemon.client()
    other.send("user2:y")
    assert (await other.close_code())[0] == CloseCode.BAD_KEY


@pytest_twisted.ensureDeferred
async def test_refusals_are_counted_by_reason(daemon):
    client = await daemon.client()
    client.send("bad uid")
    await client.close_code()
    assert daemon.service.hub.counters.refused == {"INVALID_IDENTIFIER": 1}


@pytest_twisted.ensureDeferred
async def test_a_plain_websocket_disconnect_is_logged_with_its_uid_and_code(daemon):
    # Socket.IO sessions logged their end; a plain WebSocket's went unsaid (issue 12)
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("redmessenger.dialects.plain"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        identified = await daemon.client("user1")
        peer = identified.protocol.transport.getHost()
        identified.close()
        anonymous = await daemon.client()
        stranger = anonymous.protocol.transport.getHost()
        anonymous.drop()
        await daemon.until(lambda: len(lines) == 2, what="two close lines")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert sorted(lines) == sorted([
        f"Connection {peer.host}:{peer.port} of user1 closed (1000)",
        f"Connection {stranger.host}:{stranger.port} closed (1006)",  # gone without a close frame
    ])
