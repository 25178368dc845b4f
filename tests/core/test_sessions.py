"""
The client state machine both dialects drive (pure logic, on a fake clock):
identification, refusals (one log line, one count, one report), closes at any
stage.  Each dialect's framing of the same is tested with real clients in tests/dialects/.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import Clock

from redmessenger.core.hub import Hub
from redmessenger.core.ports import StoreUnavailable
from redmessenger.core.sessions import ClientSession, Stage
from redmessenger.model.errors import ClientError, CloseCode

from ..fakes import Link, MemoryDirectory, MemoryQueues


def session(secure_mode: bool = False) -> tuple[ClientSession, Link, Hub, MemoryDirectory, Clock]:
    clock, directory = Clock(), MemoryDirectory()
    hub = Hub(MemoryQueues(), directory, clock, secure_mode=secure_mode)
    link = Link(clock)
    client = ClientSession(hub, link, clock, identify_timeout=10)
    client.opened("test")
    return client, link, hub, directory, clock


def test_an_identified_socket_is_attached_and_told_so() -> None:
    client, link, hub, _, _ = session()
    client.identify("user1")
    assert client.stage is Stage.IDENTIFIED and link.accepted_uids == ["user1"]
    assert client.attachment is hub.presence.get("user1").attachments[0]
    assert link.refusals == [] and hub.counters.identified == 1


def test_no_identifier_in_time_is_refused_once_and_counted() -> None:
    client, link, hub, _, clock = session()
    clock.advance(9.9)
    assert link.refusals == []
    clock.advance(0.1)
    assert link.refusals == [(CloseCode.IDENTIFY_TIMEOUT, "no identifier within 10 seconds")]
    assert client.refused and hub.counters.refused == {"IDENTIFY_TIMEOUT": 1}
    client.identify("user1")
    assert len(link.refusals) == 1 and hub.presence.get("user1") is None, "a refused client gets nowhere"


def test_the_timer_stops_with_the_identifier() -> None:
    client, _, _, _, clock = session()
    client.identify("user1")
    assert not clock.getDelayedCalls()


def test_a_second_identifier_is_refused() -> None:
    client, link, hub, _, _ = session()
    client.identify("user1")
    client.identify("user2")
    assert link.refusals == [(CloseCode.ALREADY_IDENTIFIED, "this socket has sent its identifier already")]
    assert hub.presence.get("user2") is None


def test_a_bad_identifier_is_refused() -> None:
    client, link, _, _, _ = session()
    client.identify("not a uid")
    assert [code for code, _ in link.refusals] == [CloseCode.INVALID_IDENTIFIER]


def test_an_identifier_that_is_not_text_is_refused() -> None:
    client, link, _, _, _ = session()
    client.identify({"uid": "user1"})
    assert link.refusals == [(CloseCode.INVALID_IDENTIFIER, "the identifier must be a string 'uid:key'")]


def test_secure_mode_wants_the_stored_key() -> None:
    client, link, hub, directory, clock = session(secure_mode=True)
    directory.keys["user1"] = b"s3cret"
    client.identify("user1:wrong")
    assert [code for code, _ in link.refusals] == [CloseCode.BAD_KEY]
    for identifier in ("user1", "user1:", "user2:s3cret"):
        other_link = Link(clock)
        ClientSession(hub, other_link, clock, identify_timeout=10).identify(identifier)
        assert [code for code, _ in other_link.refusals] == [CloseCode.BAD_KEY], identifier
    right = Link(clock)
    ClientSession(hub, right, clock, identify_timeout=10).identify("user1:s3cret")
    assert right.accepted_uids == ["user1"] and right.refusals == []


def test_secure_mode_with_redis_away_says_try_again_later() -> None:
    client, link, _, directory, _ = session(secure_mode=True)
    directory.unavailable = True
    client.identify("user1:s3cret")
    assert [code for code, _ in link.refusals] == [CloseCode.TRY_AGAIN_LATER]


def test_a_socket_closed_while_its_key_is_checked_is_not_left_attached() -> None:
    client, link, hub, directory, _ = session(secure_mode=True)
    pending: Deferred[bytes | None] = Deferred()
    directory.user_key = lambda uid: pending  # type: ignore[method-assign]
    client.identify("user1:s3cret")
    assert client.stage is Stage.VERIFYING
    link.close()
    client.closed()
    pending.callback(b"s3cret")
    assert hub.presence.get("user1") is None and link.accepted_uids == []


def test_an_unexpected_failure_while_identifying_says_try_again_later() -> None:
    client, link, _, directory, _ = session(secure_mode=True)
    directory.user_key = lambda uid: fail(RuntimeError("a bug"))  # type: ignore[method-assign]
    client.identify("user1:s3cret")
    assert link.refusals == [(CloseCode.TRY_AGAIN_LATER, "internal error; try again later")]


def test_closing_an_identified_socket_detaches_it() -> None:
    client, link, hub, _, _ = session()
    client.identify("user1")
    client.closed()
    assert hub.presence.get("user1") is None and client.stage is Stage.CLOSED


def test_redis_away_is_the_only_store_failure_that_asks_to_retry() -> None:
    client, link, _, directory, _ = session(secure_mode=True)
    directory.user_key = lambda uid: fail(StoreUnavailable("timeout"))  # type: ignore[method-assign]
    client.identify("user1:x")
    assert [code for code, _ in link.refusals] == [CloseCode.TRY_AGAIN_LATER]


# -- the refusal's log line names the uid the client gave (issue 12) -----------------


def refusal_lines(act: Callable[[ClientSession, Hub, MemoryDirectory, Clock], None], secure: bool = False) -> list[str]:
    from twisted.logger import formatEvent, globalLogPublisher

    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "redmessenger.core.sessions.ClientSession" and "Closing" in event["log_format"]:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        client, _, hub, directory, clock = session(secure_mode=secure)
        act(client, hub, directory, clock)
    finally:
        globalLogPublisher.removeObserver(observe)
    return seen


def test_a_wrong_key_is_logged_with_the_uid() -> None:
    def wrong_key(client: ClientSession, hub: Hub, directory: MemoryDirectory, clock: Clock) -> None:
        directory.keys["user1"] = b"s3cret"
        client.identify("user1:wrong")

    assert refusal_lines(wrong_key, secure=True) == [
        "Closing 127.0.0.1:1 of user1: BAD_KEY (4401): authentication failed: wrong or missing key"
    ]


def test_a_second_identifier_is_logged_with_the_uid_of_the_first() -> None:
    def twice(client: ClientSession, hub: Hub, directory: MemoryDirectory, clock: Clock) -> None:
        client.identify("user1")
        client.identify("user2")

    assert refusal_lines(twice) == [
        "Closing 127.0.0.1:1 of user1: ALREADY_IDENTIFIED (4409): this socket has sent its identifier already"
    ]


def test_a_refusal_before_any_uid_says_none() -> None:
    def silent(client: ClientSession, hub: Hub, directory: MemoryDirectory, clock: Clock) -> None:
        clock.advance(10)

    assert refusal_lines(silent) == ["Closing 127.0.0.1:1: IDENTIFY_TIMEOUT (4408): no identifier within 10 seconds"]
    bad = refusal_lines(lambda client, *_: client.identify("a b"))
    assert bad == ["Closing 127.0.0.1:1: INVALID_IDENTIFIER (4400): invalid uid 'a b': 1-128 letters, digits or _-.@"]


class _OwnedElsewhere:
    """Peers for which node-b owns every user: a socket identified here is a relay (recorded)."""

    shared = listed = True

    def __init__(self) -> None:
        self.attached: list[tuple[str, str]] = []

    def owner(self, key: str) -> str | None:
        return "node-b"

    @property
    def owners(self) -> "_OwnedElsewhere":
        return self

    def elsewhere(self, key: str) -> str | None:
        return self.owner(key)

    def attach(self, owner: str, attachment: Any) -> None:
        self.attached.append((owner, attachment.uid))

    def detach(self, attachment: Any, received_all: bool) -> None:
        pass


def owned_elsewhere(passable: bool = True) -> tuple[ClientSession, Link, Hub, _OwnedElsewhere, Clock]:
    """A session whose uid node-b owns, identified as user1; its link can be passed (link.passing) or not."""
    client, link, hub, _, clock = session()
    peers = _OwnedElsewhere()
    hub.set_peers(peers)  # type: ignore[arg-type]
    link.passing = Deferred() if passable else None
    client.identify("user1")
    return client, link, hub, peers, clock


def test_a_user_owned_by_a_daemon_on_this_host_has_its_socket_passed_there_and_nothing_done_here() -> None:
    client, link, hub, peers, clock = owned_elsewhere()
    assert link.passing is not None and client.stage is Stage.PASSING and link.passed_to == ["node-b"]
    assert not clock.getDelayedCalls(), "no identify timeout: the owner starts its own"
    link.passing.callback(True)
    assert client.stage is Stage.PASSED and hub.presence.get("user1") is None and peers.attached == []
    client.refuse(ClientError(CloseCode.BAD_FRAME, "too late"))
    assert link.refusals == [] and link.accepted_uids == [], "nothing said to a client that is another daemon's now"


def test_a_socket_the_owner_did_not_take_is_identified_here_as_a_relay() -> None:
    client, link, _, peers, _ = owned_elsewhere()
    assert link.passing is not None
    link.passing.callback(False)
    assert client.stage is Stage.IDENTIFIED and link.accepted_uids == ["user1"] and peers.attached == [("node-b", "user1")]


def test_a_socket_closed_while_on_its_way_is_not_identified_when_the_pass_fails() -> None:
    client, link, _, peers, _ = owned_elsewhere()
    assert link.passing is not None
    client.closed()
    link.passing.callback(False)
    assert client.stage is Stage.CLOSED and peers.attached == [] and link.accepted_uids == []


def test_a_link_that_cannot_be_passed_is_identified_here() -> None:
    client, link, _, peers, _ = owned_elsewhere(passable=False)  # a Socket.IO session, TLS, another host
    assert link.passed_to == ["node-b"] and client.stage is Stage.IDENTIFIED and peers.attached == [("node-b", "user1")]
