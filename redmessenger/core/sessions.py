"""
One client, from its connection to its close, whatever its wire dialect: the
client state machine both dialects drive.

    AWAITING_ID --identify()--> VERIFYING --accepted--> IDENTIFIED
         +--owned by a daemon on this host--> PASSING --passed--> PASSED
         |                                       +--not passed--> VERIFYING
         +--anonymous()----------------------------------> IDENTIFIED (no uid: channels only)
         +--refuse()/timeout--------+--------------------> REFUSED
    any --closed()--> CLOSED

Once IDENTIFIED, a session may ask for channels (SPEC §7): a dialect hands each
request as it decoded it to :meth:`ClientSession.request`, which answers with the
fields of the reply (granted, or refused with a code and a reason); the dialect
only wraps them in its own frame.  A refused request leaves the connection open.

A dialect decodes its frames and calls :meth:`ClientSession.identify` or
:meth:`ClientSession.refuse`; the session answers through the dialect's
:class:`~redmessenger.core.ports.ClientLink` (``accepted``, ``refuse``) and
delivers through it as a :class:`~redmessenger.core.ports.MessageSink`.  Every
refusal goes through :meth:`ClientSession.refuse`: one log line, one count, one
report to the client.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from redmessenger.core.channels import Channels
from redmessenger.core.hub import Hub
from redmessenger.core.ports import ClientLink
from redmessenger.core.presence import Attachment
from redmessenger.logs import make_logger
from redmessenger.model import channels as rules
from redmessenger.model.channels import RequestError, Subscribed
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.model.identity import Hello, Identifier, parse_identifier

T = TypeVar("T")


class Stage(Enum):
    AWAITING_ID = "awaiting identifier"
    VERIFYING = "verifying"
    IDENTIFIED = "identified"
    REFUSED = "refused"
    CLOSED = "closed"
    #: The connection is on its way to the daemon that owns the user, on this host (transport/passing.py).
    PASSING = "passing"
    #: It went: that daemon serves it, from the identifier on.
    PASSED = "passed"


class ClientSession:
    """The state of one client connection, and the one place its mistakes are handled."""

    log = make_logger()
    # One per connection, for its lifetime: no instance dict (bench case d).
    __slots__ = ("_hub", "_link", "_clock", "_identify_timeout", "stage", "attachment", "uid", "_timer")

    def __init__(self, hub: Hub, link: ClientLink, clock: IReactorTime, identify_timeout: float) -> None:
        self._hub = hub
        self._link = link
        self._clock = clock
        self._identify_timeout = identify_timeout
        self.stage = Stage.AWAITING_ID
        self.attachment: Attachment | None = None
        #: The uid the client named, once its identifier parsed (accepted or not: refusals name it).
        self.uid: str | None = None
        self._timer: IDelayedCall | None = None

    @property
    def refused(self) -> bool:
        return self.stage is Stage.REFUSED

    def opened(self, listen: str, **fields: object) -> None:
        """The connection is open: log it, and start waiting for the identifier."""
        self.log.info(
            "New connection {peer} on {listen}! Waiting for ID...", peer=self._link.client_address, listen=listen, **fields
        )
        self._timer = self._clock.callLater(self._identify_timeout, self._timed_out)

    @property
    def awaiting_identifier(self) -> bool:
        return self.stage is Stage.AWAITING_ID

    def identify(self, identifier: object, verified: bool = False) -> None:
        """The client sent its identifier: ``uid``, ``uid:`` or ``uid:key``, or one a dialect parsed already."""
        if self.stage is not Stage.AWAITING_ID:
            if self.stage is not Stage.CLOSED:
                self.refuse(ClientError(CloseCode.ALREADY_IDENTIFIED, "this socket has sent its identifier already"))
            return
        if isinstance(identifier, Identifier):
            ident = identifier
        elif not isinstance(identifier, str):
            self.refuse(ClientError(CloseCode.INVALID_IDENTIFIER, "the identifier must be a string 'uid:key'"))
            return
        else:
            try:
                ident = parse_identifier(identifier)
            except ClientError as e:
                self.refuse(e)
                return
        self.uid = ident.uid
        self._cancel_timer()
        owner = self._hub.owner(ident.uid)
        passing = self._link.pass_to(owner) if owner is not None else None
        if passing is not None and owner is not None:
            # The owner runs on this host: the connection goes to it, and it reads the identifier again.
            self.stage = Stage.PASSING
            passing.addCallback(self._passed, ident, verified, owner)
            return
        self._verify(ident, verified)

    def _passed(self, passed: bool, ident: Identifier, verified: bool, owner: str) -> None:
        if self.stage is not Stage.PASSING:
            return  # closed meanwhile
        if not passed:
            self._verify(ident, verified)  # served here, relayed to its owner
            return
        self.stage = Stage.PASSED
        self.log.info("Connection {peer} of {uid} passed to {owner}", peer=self._link.client_address, uid=ident.uid, owner=owner)

    def _verify(self, ident: Identifier, verified: bool) -> None:
        self.stage = Stage.VERIFYING
        d = ensureDeferred(self._hub.identify(self._link, ident, verified))
        d.addCallbacks(self._identified, self._identify_failed)
        d.addErrback(lambda f: self.log.failure("After identifying {peer}", f, peer=self._link.client_address))

    def anonymous(self) -> None:
        """The client asked to be admitted without a uid (a version-1 hello without one): channels only."""
        if self.stage is not Stage.AWAITING_ID:
            if self.stage is not Stage.CLOSED:
                self.refuse(ClientError(CloseCode.ALREADY_IDENTIFIED, "this socket has sent its identifier already"))
            return
        self._cancel_timer()
        self.stage = Stage.IDENTIFIED
        self.attachment = self._hub.connect(self._link)
        self._link.accepted(None)

    def check_public_key(self, given: object) -> bool:
        """A version-1 hello's public key: False (and the socket refused) if it is wrong."""
        try:
            self._hub.check_public_key(given)
        except ClientError as e:
            self.refuse(e)
            return False
        return True

    # -- channels (SPEC §7) --------------------------------------------------------------

    def hello(self, hello: Hello) -> None:
        """A version-1 hello (either dialect): the public key checked, then identified, or admitted without a uid."""
        if not self.awaiting_identifier:
            if self.stage is not Stage.CLOSED:
                self.refuse(ClientError(CloseCode.ALREADY_IDENTIFIED, "this socket has sent its hello already"))
        elif self.check_public_key(hello.public_key):
            if hello.identifier is None:
                self.anonymous()
            elif hello.grant is not None:
                try:
                    self._hub.check_identity_grant(hello.identifier.uid, hello.grant)
                except ClientError as e:
                    self.uid = hello.identifier.uid
                    self.refuse(e)
                    return
                self.identify(hello.identifier, verified=True)
            else:
                self.identify(hello.identifier)

    def request(self, kind: str, fields: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """
        A channel request (``subscribe``, ``unsubscribe``, ``publish``) with the
        fields the client sent: fires with the reply's fields, never fails.
        """
        try:
            if kind == "subscribe":
                d: Deferred[Any] = self.subscribe(fields.get("channel"), fields.get("client_auth"), fields.get("grant"))
            elif kind == "unsubscribe":
                self.unsubscribe(fields.get("channel"))
                d = succeed(None)
            elif kind == "publish":
                d = self.publish(fields.get("channel"), rules.message_text(fields))
            else:
                raise RequestError(rules.INVALID_REQUEST, f"unknown request {kind[:32]!r}")
        except RequestError as e:
            return succeed(rules.refused(e))
        return d.addCallbacks(rules.granted, self._request_failed)

    def _request_failed(self, failure: Failure) -> dict[str, Any]:
        error = failure.value
        if not isinstance(error, RequestError):
            self.log.failure("A request of {peer} failed", failure, peer=self._link.client_address)
            error = RequestError(rules.UNAVAILABLE, "internal error; try again later")
        return rules.refused(error)

    def subscribe(self, channel: object, client_auth: object = None, grant: object = None) -> Deferred[Subscribed]:
        """Ask for ``channel`` (or present a grant): fires with what was granted, or fails with RequestError."""
        return self._asking(lambda channels, attachment: channels.subscribe(attachment, channel, client_auth, grant))

    def unsubscribe(self, channel: object) -> None:
        """Stop receiving ``channel`` (raises RequestError if not subscribed)."""
        channels, attachment = self._channels()
        channels.unsubscribe(attachment, channel)

    def publish(self, channel: object, payload: str) -> Deferred[None]:
        """Publish ``payload`` (JSON text) on ``channel``: fires once Redis took it, or fails with RequestError."""
        return self._asking(lambda channels, attachment: channels.publish(attachment, channel, payload))

    def _asking(self, ask: Callable[[Channels, Attachment], Deferred[T]]) -> Deferred[T]:
        try:
            channels, attachment = self._channels()
        except RequestError as e:
            failed: Deferred[T] = fail(e)
            return failed
        return ask(channels, attachment)

    def _channels(self) -> tuple[Channels, Attachment]:
        channels = self._hub.channels
        if channels is None:
            raise RequestError(rules.DENIED, "channels are not enabled on this server")
        attachment = self.attachment
        if self.stage is not Stage.IDENTIFIED or attachment is None:
            raise RequestError(rules.NOT_READY, "wait for the welcome before asking for channels")
        return channels, attachment

    def refuse(self, error: ClientError) -> None:
        """The one place a client mistake is handled: logged, counted, reported by the dialect."""
        if self.stage in (Stage.REFUSED, Stage.CLOSED, Stage.PASSED):
            return
        self.stage = Stage.REFUSED
        self._cancel_timer()
        if self.uid is None:
            self.log.info("Closing {peer}: {error}", peer=self._link.client_address, error=str(error))
        else:
            self.log.info("Closing {peer} of {uid}: {error}", peer=self._link.client_address, uid=self.uid, error=str(error))
        self._hub.refused(error.code)
        self._link.refuse(error)

    def acknowledged(self, message_id: str) -> None:
        """The client's code acknowledged ``message_id`` and what came before it (protocols that ack by id)."""
        if self.attachment is not None:
            self._hub.acknowledged(self.attachment, message_id)

    def closed(self, received_all: bool = False) -> None:
        """
        The connection is gone.  ``received_all``: the dialect knows the client
        read everything written (so nothing it was sent is unconfirmed).
        """
        self.stage = Stage.CLOSED
        self._cancel_timer()
        attachment, self.attachment = self.attachment, None
        if attachment is not None:
            self._hub.detach(attachment, received_all=received_all)

    # -- identification ------------------------------------------------------------

    def _identified(self, attachment: Attachment | None) -> None:
        if attachment is None:  # gone while the key was being checked
            return
        if self.stage is not Stage.VERIFYING or not self._link.writable:
            # refused or closed meanwhile (closed() has run already)
            self._hub.detach(attachment)
            return
        self.stage = Stage.IDENTIFIED
        self.attachment = attachment
        self._link.accepted(attachment.uid)

    def _identify_failed(self, failure: Failure) -> None:
        if isinstance(failure.value, ClientError):
            self.refuse(failure.value)
            return
        self.log.failure("Identifying {peer} failed", failure, peer=self._link.client_address)
        self.refuse(ClientError(CloseCode.TRY_AGAIN_LATER, "internal error; try again later"))

    def _timed_out(self) -> None:
        self._timer = None
        self.refuse(ClientError(CloseCode.IDENTIFY_TIMEOUT, f"no identifier within {self._identify_timeout:g} seconds"))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
