"""
core.channels in memory, on a fake clock: deny by default, the answer's mode,
the publish checks, subscriptions ending with their connection.  The same
against a real daemon and Redis is in tests/test_channels.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import Clock
from twisted.python.failure import Failure

from redmessenger.core.channels import MAX_ASKING, Channels, Rate
from redmessenger.core.counters import Counters
from redmessenger.core.ports import NobodyListening, StoreUnavailable
from redmessenger.core.presence import Attachment
from redmessenger.model.channels import Answer, Mode, RequestError, Sender, Subscribed, SubscriptionRequest


class Application:
    """Keeps each request's Deferred for the test to answer; records publishes."""

    def __init__(self) -> None:
        self.asked: list[tuple[SubscriptionRequest, Deferred[Answer]]] = []
        self.published: list[tuple[str, Sender, str]] = []

    def ask(self, request: SubscriptionRequest) -> Deferred[Answer]:
        d: Deferred[Answer] = Deferred()
        self.asked.append((request, d))
        return d

    def publish(self, cid: str, sender: Sender, payload: str) -> Deferred[None]:
        self.published.append((cid, sender, payload))
        return succeed(None)


def outcome(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not fired yet"
    result = results[0]
    if isinstance(result, Failure):
        assert isinstance(result.value, RequestError), result
        return result.value.code, result.value.reason
    return result


@pytest.fixture
def setup() -> tuple[Channels, Application, Clock]:
    app, clock = Application(), Clock()
    return Channels(app, clock, Counters(), reply_to="rm.answers.x", timeout=2.0, publish_rate=2.0, run="r"), app, clock


def attachment(uid: str = "") -> Attachment:
    return Attachment(uid, None)  # type: ignore[arg-type]  # the sink is not used here


def test_no_answer_within_the_timeout_is_a_denial_and_a_late_answer_changes_nothing(setup: Any) -> None:
    channels, app, clock = setup
    a = attachment("alice")
    d = channels.subscribe(a, "room", "token")
    [(request, asked)] = app.asked
    assert (request.channel, request.client_auth, request.uid, request.reply_to) == ("room", "token", "alice", "rm.answers.x")
    assert request.deadline == 2000 and request.client_id == a.client_id == "r.1"
    clock.advance(1.9)
    assert not d.called
    clock.advance(0.1)
    assert outcome(d) == ("denied", "the application did not answer within 2 seconds")
    counters = channels.counters
    assert channels.readers("room") is None and (counters.subscriptions_denied, counters.subscriptions_timed_out) == (1, 1)
    assert channels.waiting == 0, "the request is forgotten"


def test_the_answer_sets_the_mode_and_only_readers_receive(setup: Any) -> None:
    channels, app, clock = setup
    reader, writer = attachment(), attachment()
    r, w = channels.subscribe(reader, "c"), channels.subscribe(writer, "c")
    app.asked[0][1].callback(Answer(app.asked[0][0].id, Mode.READ_ONLY))
    app.asked[1][1].callback(Answer(app.asked[1][0].id, Mode.WRITE_ONLY))
    assert (outcome(r), outcome(w)) == (Subscribed(Mode.READ_ONLY), Subscribed(Mode.WRITE_ONLY)), "no secret key: no grant"
    assert list(channels.readers("c") or ()) == [reader]
    assert outcome(channels.publish(reader, "c", '"x"')) == ("read_only", "the subscription to c is read_only")
    assert outcome(channels.publish(writer, "c", '"x"')) is None
    assert app.published == [("c", Sender(writer.client_id or "", None), '"x"')]


def test_nobody_listening_is_denied_at_once(setup: Any) -> None:
    channels, app, clock = setup
    d = channels.subscribe(attachment(), "c")
    app.asked[0][1].errback(NobodyListening())
    code, reason = outcome(d)
    assert code == "denied" and "no application" in reason


def test_a_connection_that_closes_takes_its_subscriptions_with_it(setup: Any) -> None:
    channels, app, clock = setup
    a = attachment("u")
    d = channels.subscribe(a, "c")
    app.asked[0][1].callback(Answer(app.asked[0][0].id, Mode.READ_WRITE))
    assert outcome(d) == Subscribed(Mode.READ_WRITE) and channels.client("r.1") is a
    channels.drop(a)
    assert channels.readers("c") is None and channels.client("r.1") is None and a.channels is None
    # a request still waiting when its connection closes is cancelled: nothing registered, whatever comes later
    b = attachment()
    late = channels.subscribe(b, "c")
    channels.drop(b)
    assert outcome(late) == ("cancelled", "unsubscribed before the application answered")
    assert app.asked[1][1].called and channels.readers("c") is None and channels.waiting == 0


def test_unsubscribing_while_the_application_is_asked_cancels_the_subscribe(setup: Any) -> None:
    channels, app, clock = setup
    a = attachment()
    d = channels.subscribe(a, "c")
    channels.unsubscribe(a, "c")  # no error: the subscribe under way is what it takes back
    assert outcome(d) == ("cancelled", "unsubscribed before the application answered")
    assert channels.readers("c") is None and a.channels is None and channels.waiting == 0
    counters = channels.counters
    assert (counters.subscriptions_denied, counters.subscriptions_permitted) == (0, 0)


def test_a_connection_may_have_only_so_many_requests_waiting(setup: Any) -> None:
    channels, app, clock = setup
    a, b = attachment(), attachment()
    waiting = [channels.subscribe(a, f"c{i}") for i in range(MAX_ASKING)]
    assert outcome(channels.subscribe(a, "one-more"))[0] == "rate_limited"
    assert len(app.asked) == MAX_ASKING, "the one too many never reached the application"
    assert not channels.subscribe(b, "c0").called, "another connection is not held back"
    request, asked = app.asked[0]
    asked.callback(Answer(request.id, Mode.READ_WRITE))
    assert outcome(waiting[0]) == Subscribed(Mode.READ_WRITE)
    assert not channels.subscribe(a, "one-more").called, "an answer frees a place"


def test_a_request_cancelled_keeps_its_place_until_its_deadline(setup: Any) -> None:
    """
    Its entry stays in the application's stream, whose length is capped: subscribing and unsubscribing in a loop
    must not let one connection add requests without end (other connections' would be trimmed away unread).
    """
    channels, app, clock = setup
    a = attachment()
    for i in range(100):
        asked = channels.subscribe(a, "churn")
        if asked.called:
            assert outcome(asked)[0] == "rate_limited"
            break
        channels.unsubscribe(a, "churn")
        assert outcome(asked)[0] == "cancelled"
    assert len(app.asked) == MAX_ASKING, "no more than MAX_ASKING reached the application"
    clock.advance(2.0)  # the requests' deadline (timeout=2.0)
    again = channels.subscribe(a, "churn")
    assert not again.called and len(app.asked) == MAX_ASKING + 1, "past their deadline, their places are free"
    channels.drop(a)
    assert outcome(again)[0] == "cancelled"
    assert not channels._cancelled, "nothing kept for a connection gone"


def test_redis_away_is_unavailable_not_a_denial(setup: Any) -> None:
    channels, app, clock = setup
    d = channels.subscribe(attachment(), "c")
    app.asked[0][1].errback(StoreUnavailable("connection lost"))
    assert outcome(d)[0] == "unavailable"
    assert channels.counters.subscriptions_denied == 0


def test_the_publish_rate_is_a_token_bucket() -> None:
    rate = Rate(2.0, now=0.0)
    assert [rate.take(2.0, 0.0) for _ in range(3)] == [True, True, False]
    assert rate.take(2.0, 0.49) is False and rate.take(2.0, 0.5) is True
    assert [rate.take(2.0, 10.0) for _ in range(3)] == [True, True, False], "a long pause saves at most one burst"


def test_a_publish_rate_under_one_a_second_lets_one_through_every_so_often() -> None:
    """client_publish_rate 0.5: one publish every two seconds (the bucket held under a token and refused them all)."""
    rate = Rate(0.5, now=0.0)
    assert [rate.take(0.5, 0.0) for _ in range(2)] == [True, False]
    assert rate.take(0.5, 1.99) is False and rate.take(0.5, 2.0) is True
    assert [rate.take(0.5, 100.0) for _ in range(2)] == [True, False], "a long pause saves one"
