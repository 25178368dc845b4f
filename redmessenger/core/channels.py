"""
Channels that clients ask for (SPEC §7): who subscribed to what, with which
mode, and the rules of asking, unsubscribing and publishing.  No I/O: the
application is reached through the :class:`~redmessenger.core.ports.Application` port.

- **Asking.** A subscription is granted only by the application's answer within
  ``subscription_timeout`` seconds; no answer, an error, nobody listening, Redis
  away: denied (deny by default, §7.2).
- **Modes.** ``read_write`` and ``read_only`` subscriptions receive the channel
  (:meth:`Channels.readers`, used by delivery); ``write_only`` ones do not.
  ``read_only`` ones may not publish.  Checked here, locally, on every publish.
- **Publishing.** At most ``max_publish_bytes`` a message and ``publish_rate``
  messages a second per connection (a burst of as many), on a channel the
  connection may write; the sender is the connection's, never the client's say.
- A subscription belongs to its connection: gone when it closes (:meth:`Channels.drop`).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from redmessenger.core.counters import Counters
from redmessenger.core.ports import Application, NobodyListening, StoreUnavailable
from redmessenger.core.presence import Attachment
from redmessenger.logs import make_logger
from redmessenger.model import channels as rules
from redmessenger.model import grants
from redmessenger.model.channels import Answer, Mode, RequestError, Sender, Subscribed, SubscriptionRequest
from redmessenger.model.keyspace import NAME_PATTERN


def check_channel(channel: object) -> str:
    """A channel name as a client gave it, if valid (the grammar of a group id)."""
    if not isinstance(channel, str) or not NAME_PATTERN.fullmatch(channel):
        shown = repr(channel[:40]) if isinstance(channel, str) else type(channel).__name__
        raise RequestError(rules.INVALID_CHANNEL, f"invalid channel {shown}: 1-128 letters, digits or _-.@")
    return channel


class Rate:
    """
    A token bucket: ``rate`` a second, bursts of as many, and at least one (a rate under 1, one every two seconds
    for 0.5, must hold a whole token to let one through).
    """

    __slots__ = ("tokens", "at")

    def __init__(self, rate: float, now: float) -> None:
        self.tokens = max(rate, 1.0)
        self.at = now

    def take(self, rate: float, now: float) -> bool:
        self.tokens = min(max(rate, 1.0), self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


#: Subscription requests one connection may have waiting for the application at once.
MAX_ASKING = 16


class Channels:
    """The subscriptions of every connection, and the rules of asking for them and publishing on them."""

    log = make_logger()

    def __init__(
        self,
        application: Application,
        clock: IReactorTime,
        counters: Counters,
        *,
        reply_to: str,
        timeout: float = 5.0,
        max_publish_bytes: int = 3072,
        publish_rate: float = 20.0,
        max_subscriptions: int = 128,
        run: str | None = None,
        secret_key: str | None = None,
        grant_ttl: int = 3600,
    ) -> None:
        self._application = application
        self._clock = clock
        self._reply_to = reply_to
        self.timeout = timeout
        self.max_publish_bytes = max_publish_bytes
        self.publish_rate = publish_rate
        #: Channels one connection may hold (granted, or asked for): each costs memory, and an application that
        #: permits freely (the demo's) would otherwise let one client hold any number.
        self.max_subscriptions = max_subscriptions
        #: Signs and checks grants (model/grants.py); None: no grants.
        self._secret = secret_key
        self.grant_ttl = grant_ttl
        #: channel -> the attachments that read it (an ordered set), for delivery.
        self._readers: dict[str, dict[Attachment, None]] = {}
        #: (attachment, channel) -> its request to the application, while under way.
        self._asking: dict[tuple[Attachment, str], Deferred[Answer]] = {}
        #: Requests under way per connection (at most MAX_ASKING each, with the cancelled ones below).
        self._asking_of: dict[Attachment, int] = {}
        #: The deadlines of requests a connection cancelled (unsubscribed before the answer): they count against
        #: its MAX_ASKING until then, as their entries stay in the application's stream.
        self._cancelled: dict[Attachment, list[float]] = {}
        self._rates: dict[Attachment, Rate] = {}
        #: client_id -> attachment, for the connections that have one (to leave the sender out).
        self._clients: dict[str, Attachment] = {}
        run = run if run is not None else secrets.token_hex(5)
        self._client_ids = (f"{run}.{n}" for n in itertools.count(1))
        self._request_ids = (f"{run}.r{n}" for n in itertools.count(1))
        #: Counted for operators (status, /metrics).
        self.counters = counters
        #: Called with the seconds each answered request took (the latency histogram).
        self.on_answer_time: Callable[[float], None] = _ignore

    # -- what delivery needs --------------------------------------------------------------

    def readers(self, channel: str) -> dict[Attachment, None] | None:
        """The connections receiving ``channel`` (read_write and read_only subscriptions), or None."""
        return self._readers.get(channel)

    def client(self, client_id: str) -> Attachment | None:
        """This daemon's connection with ``client_id``, if it is here."""
        return self._clients.get(client_id)

    @property
    def subscriptions(self) -> int:
        """Subscriptions granted and active, in all (one pass over the connections that asked for channels)."""
        return sum(len(a.channels or ()) for a in self._clients.values())

    @property
    def waiting(self) -> int:
        """Requests waiting for the application's answer."""
        return len(self._asking)

    # -- what sessions ask -------------------------------------------------------------------

    def client_id(self, attachment: Attachment) -> str:
        """The connection's client id (SPEC §7.1), given on first use."""
        client_id = attachment.client_id
        if client_id is None:
            client_id = attachment.client_id = next(self._client_ids)
            self._clients[client_id] = attachment
        return client_id

    def subscribe(
        self, attachment: Attachment, channel: object, client_auth: object = None, grant: object = None
    ) -> Deferred[Subscribed]:
        """
        Subscribe with a grant (checked here, no round trip), or ask the
        application; fires with what was granted, or fails with :class:`RequestError`.
        """
        try:
            name = check_channel(channel)
            if client_auth is not None and (not isinstance(client_auth, str) or len(client_auth) > rules.MAX_CLIENT_AUTH):
                raise RequestError(rules.INVALID_REQUEST, f"'client_auth' must be a string of at most {rules.MAX_CLIENT_AUTH} characters")
            if (attachment, name) in self._asking or (attachment.channels and name in attachment.channels):
                raise RequestError(rules.ALREADY_SUBSCRIBED, f"already subscribed (or asking) to {name}")
            if len(attachment.channels or ()) + self._asking_of.get(attachment, 0) >= self.max_subscriptions:
                raise RequestError(
                    rules.TOO_MANY_SUBSCRIPTIONS,
                    f"{self.max_subscriptions} channels subscribed or asked for on this connection already: unsubscribe first",
                )
            if grant is None and self._asking_now(attachment, self._clock.seconds()) >= MAX_ASKING:
                raise RequestError(rules.RATE_LIMITED, f"{MAX_ASKING} subscription requests are waiting for answers (or, cancelled, for their deadlines) already")
            if grant is not None:
                return succeed(self._subscribe_with(attachment, name, grant))
        except RequestError as e:
            return fail(e)
        now = self._clock.seconds()
        request = SubscriptionRequest(
            id=next(self._request_ids),
            channel=name,
            client_auth=client_auth if isinstance(client_auth, str) else None,
            client_id=self.client_id(attachment),
            uid=attachment.uid or None,
            reply_to=self._reply_to,
            deadline=int((now + self.timeout) * 1000),
        )
        key = (attachment, name)
        asked = self._application.ask(request)
        self._asking[key] = asked
        self._asking_of[attachment] = self._asking_of.get(attachment, 0) + 1
        asked.addTimeout(self.timeout, self._clock)

        def answered(answer: Answer) -> Subscribed:
            self.on_answer_time(self._clock.seconds() - now)
            if answer.mode is None:
                self._denied(request, answer.reason)
                raise RequestError(rules.DENIED, answer.reason)
            self.counters.subscriptions_permitted += 1
            self._grant(attachment, name, answer.mode)
            self.log.info(
                "Subscribed {client} to {channel} ({mode})", client=request.client_id, channel=name, mode=answer.mode.value
            )
            return Subscribed(answer.mode, self._issue(attachment, name, answer.mode, now))

        def failed(failure: Failure) -> Failure:
            if failure.check(RequestError):
                return failure
            if failure.check(CancelledError):  # unsubscribed (or closed) before the answer
                raise RequestError(rules.CANCELLED, "unsubscribed before the application answered")
            if failure.check(StoreUnavailable):
                raise RequestError(rules.UNAVAILABLE, "Redis is unreachable; try again later")
            if failure.check(TimeoutError):
                self.counters.subscriptions_timed_out += 1
                reason = f"the application did not answer within {self.timeout:g} seconds"
            elif failure.check(NobodyListening):
                reason = "no application is answering subscription requests"
            else:
                self.log.failure("Asking the application about {channel} failed", failure, channel=name)
                reason = "the request failed"
            self._denied(request, reason)
            raise RequestError(rules.DENIED, reason)

        def done(result: object) -> object:
            if self._asking.get(key) is asked:
                del self._asking[key]
            if isinstance(result, Failure) and result.check(CancelledError):
                # Unsubscribed before the answer: the request stays in the application's stream all the same, so
                # it keeps its place among the connection's MAX_ASKING until its deadline.  Else a client
                # subscribing and unsubscribing in a loop filled the stream, whose length is capped: other clients'
                # requests were trimmed away unread, and denied.
                self._cancelled.setdefault(attachment, []).append(request.deadline / 1000)
            count = self._asking_of.get(attachment, 1) - 1
            if count:
                self._asking_of[attachment] = count
            else:
                self._asking_of.pop(attachment, None)
            return result

        asked.addBoth(done)  # first: the request is over before its outcome is read
        granted: Deferred[Subscribed] = asked.addCallbacks(answered, failed)
        return granted

    def _asking_now(self, attachment: Attachment, now: float) -> int:
        """The connection's requests that count against MAX_ASKING: under way, or cancelled before their deadline."""
        cancelled = self._cancelled.get(attachment)
        if cancelled is not None:
            cancelled[:] = [deadline for deadline in cancelled if deadline > now]
            if not cancelled:
                del self._cancelled[attachment]
        return self._asking_of.get(attachment, 0) + (len(cancelled) if cancelled else 0)

    def _denied(self, request: SubscriptionRequest, reason: str) -> None:
        self.counters.subscriptions_denied += 1
        self.log.info(
            "Subscription of {client} to {channel} denied: {reason}",
            client=request.client_id, channel=request.channel, reason=reason,
        )  # fmt: skip

    def unsubscribe(self, attachment: Attachment, channel: object) -> None:
        """Stop ``channel`` for this connection only (raises :class:`RequestError` if it is not subscribed)."""
        name = check_channel(channel)
        asking = self._asking.pop((attachment, name), None)
        if asking is not None:
            asking.cancel()  # its subscribe is answered "cancelled", whatever the application says later
            return
        if not attachment.channels or name not in attachment.channels:
            raise RequestError(rules.NOT_SUBSCRIBED, f"not subscribed to {name}")
        del attachment.channels[name]
        self._stop_reading(attachment, name)

    def publish(self, attachment: Attachment, channel: object, payload: str) -> Deferred[None]:
        """A client's publish: checked here, then published for every daemon; fails with :class:`RequestError`."""
        try:
            name = check_channel(channel)
            mode = attachment.channels.get(name) if attachment.channels else None
            if mode is None:
                raise RequestError(rules.NOT_SUBSCRIBED, f"not subscribed to {name}: subscribe first")
            if not mode.writes:
                raise RequestError(rules.READ_ONLY, f"the subscription to {name} is read_only")
            size = len(payload.encode("utf-8"))
            if size > self.max_publish_bytes:
                raise RequestError(rules.TOO_LARGE, f"{size} bytes; at most {self.max_publish_bytes} (client_publish_max_bytes)")
            now = self._clock.seconds()
            rate = self._rates.get(attachment)
            if rate is None:
                rate = self._rates[attachment] = Rate(self.publish_rate, now)
            if not rate.take(self.publish_rate, now):
                raise RequestError(rules.RATE_LIMITED, f"more than {self.publish_rate:g} publishes a second (client_publish_rate)")
        except RequestError as e:
            return fail(e)
        self.counters.client_publishes += 1
        sender = Sender(self.client_id(attachment), attachment.uid or None)
        d = self._application.publish(name, sender, payload)

        def failed(failure: Failure) -> None:
            if failure.check(StoreUnavailable):
                raise RequestError(rules.UNAVAILABLE, "Redis is unreachable; not published, try again later")
            self.log.failure("Publishing for {client} on {channel} failed", failure, client=sender.client_id, channel=name)
            raise RequestError(rules.UNAVAILABLE, "not published; try again later")

        d.addErrback(failed)
        return d

    def drop(self, attachment: Attachment) -> None:
        """The connection is gone: its subscriptions end with it, and its requests under way."""
        if attachment in self._asking_of:
            for key in [key for key in self._asking if key[0] is attachment]:
                self._asking.pop(key).cancel()
        self._cancelled.pop(attachment, None)
        if attachment.channels:
            for name in attachment.channels:
                self._stop_reading(attachment, name)
            attachment.channels = None
        self._rates.pop(attachment, None)
        if attachment.client_id is not None:
            self._clients.pop(attachment.client_id, None)

    # -- inside --------------------------------------------------------------------------

    def _subscribe_with(self, attachment: Attachment, name: str, token: object) -> Subscribed:
        """A subscription grant presented by the client: valid, for this channel and this uid, or refused."""
        if self._secret is None:
            raise RequestError(rules.BAD_GRANT, "this server does not accept grants (no secret_key)")
        try:
            grant = grants.verify(self._secret, token, self._clock.seconds())
        except grants.BadGrant as e:
            raise RequestError(rules.BAD_GRANT, f"invalid grant: {e}") from None
        if grant.kind != grants.SUBSCRIPTION or grant.channel != name or grant.mode is None:
            raise RequestError(rules.BAD_GRANT, f"the grant is not for channel {name}")
        if grant.uid is not None and grant.uid != attachment.uid:
            raise RequestError(rules.BAD_GRANT, "the grant is for another user")
        self.counters.subscriptions_by_grant += 1
        client_id = self.client_id(attachment)
        self._grant(attachment, name, grant.mode)
        self.log.info("Subscribed {client} to {channel} ({mode}, by grant)", client=client_id, channel=name, mode=grant.mode.value)
        return Subscribed(grant.mode)

    def _issue(self, attachment: Attachment, name: str, mode: Mode, now: float) -> str | None:
        """The grant a permitted subscription comes with, to subscribe again without asking while it lasts."""
        if self._secret is None:
            return None
        return grants.subscription_grant(self._secret, name, mode, int(now) + self.grant_ttl, attachment.uid or None)

    def _grant(self, attachment: Attachment, name: str, mode: Mode) -> None:
        if attachment.channels is None:
            attachment.channels = {}
        attachment.channels[name] = mode
        if mode.reads:
            self._readers.setdefault(name, {})[attachment] = None

    def _stop_reading(self, attachment: Attachment, name: str) -> None:
        readers = self._readers.get(name)
        if readers is not None:
            readers.pop(attachment, None)
            if not readers:
                del self._readers[name]


def _ignore(seconds: float) -> None:
    pass

