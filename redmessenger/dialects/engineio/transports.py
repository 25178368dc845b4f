"""
The two Engine.IO transports on the daemon's port: HTTP long-polling (XHR, and
JSONP for revision 3) as a twisted.web resource at ``/socket.io/``, and WebSocket
on Autobahn behind the same resource.  They turn requests and frames into calls on
:class:`~redmessenger.dialects.engineio.session.Session`; the protocol itself is described there.

CORS: a request with an ``Origin`` in ``allowed_origins`` gets it echoed with
``Access-Control-Allow-Credentials: true`` (Socket.IO 2 clients send cookies by
default); any other Origin is refused with 403, like the WebSocket handshake.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from redmessenger.core.admission import OriginPolicy
from redmessenger.dialects.engineio.codec import (
    EncodedPacket,
    Packet,
    PacketType,
    ProtocolError,
    decode_packet,
    decode_payload,
    jsonp_unescape,
    jsonp_wrap,
)
from redmessenger.dialects.engineio.contract import EngineError
from redmessenger.dialects.engineio.server import EngineServer
from redmessenger.dialects.engineio.session import Session
from redmessenger.logs import make_logger
from redmessenger.transport.fastpath import LeanServerProtocol, upgrade_to_websocket
from redmessenger.transport.sockets import Corks, OpenSockets, peer_text

PATH = "/socket.io"

_TEXT = b"text/plain; charset=UTF-8"
_PONG = Packet(PacketType.PONG)
_JAVASCRIPT = b"text/javascript; charset=UTF-8"
#: Exactly this: engine.io-client 3 compares the whole header before reading the body as an ArrayBuffer.
_BINARY = b"application/octet-stream"


def parse_version(value: str | None) -> int:
    """``EIO=3`` or ``EIO=4``; anything else is refused as engine.io refuses it."""
    if value == "4":
        return 4
    if value == "3":
        return 3
    raise EngineError(400, EngineError.UNSUPPORTED_VERSION, "Unsupported protocol version")


# -- long-polling ----------------------------------------------------------------------------


class _PendingPoll:
    """A GET waiting for packets; a :class:`~redmessenger.dialects.engineio.session.PollRequest`."""

    __slots__ = ("request", "jsonp", "binary")

    def __init__(self, request: Request, jsonp: str | None, binary: bool = False) -> None:
        self.request = request
        self.jsonp = jsonp
        self.binary = binary and jsonp is None

    def answer(self, payload: bytes) -> None:
        request = self.request
        if self.jsonp is not None:
            request.setHeader(b"content-type", _JAVASCRIPT)
            payload = jsonp_wrap(self.jsonp, payload)
        else:
            request.setHeader(b"content-type", _BINARY if self.binary else _TEXT)
        request.setHeader(b"content-length", b"%d" % len(payload))
        request.write(payload)
        request.finish()


class EngineIOResource(Resource):
    """``/socket.io/``: the Engine.IO handshake, polling GETs and POSTs, WebSocket upgrades."""

    isLeaf = True
    log = make_logger()

    def __init__(self, server: EngineServer, websockets: EngineIOWebSocketFactory, origins: OriginPolicy) -> None:
        super().__init__()
        self._server = server
        self._websocket = WebSocketResource(websockets)
        self._origins = origins

    def render(self, request: Request) -> bytes | int:
        try:
            return self._render(request)
        except EngineError as e:
            return self._refuse(request, e)
        except Exception:
            self.log.failure("Engine.IO request {uri!r} failed", uri=request.uri)
            request.setResponseCode(500)
            return b""

    def _render(self, request: Request) -> bytes | int:
        origin = _header(request, b"origin")
        if origin is not None:
            if not self._origins.allows(origin):
                raise EngineError(403, EngineError.FORBIDDEN, "Forbidden")
            request.setHeader(b"access-control-allow-origin", origin.encode("utf-8"))
            request.setHeader(b"access-control-allow-credentials", b"true")
            request.setHeader(b"vary", b"Origin")
        if request.method == b"OPTIONS":
            return self._preflight(request)
        query = _query(request)
        version = parse_version(query.get("EIO"))
        transport = query.get("transport")
        if transport == "websocket":
            upgrade = request.getHeader(b"upgrade") or b""
            if request.method != b"GET" or upgrade.lower() != b"websocket":
                raise EngineError(400, EngineError.BAD_REQUEST, "Bad request: WebSocket transport without an upgrade")
            return upgrade_to_websocket(self._websocket, request)
        if transport != "polling":
            raise EngineError(400, EngineError.TRANSPORT_UNKNOWN, "Transport unknown")
        jsonp = query.get("j")
        if jsonp is not None and (version != 3 or not jsonp.isascii() or not jsonp.isdigit() or len(jsonp) > 9):
            raise EngineError(400, EngineError.BAD_REQUEST, "Bad request: JSONP polling is Engine.IO 3 only")
        request.setHeader(b"cache-control", b"no-store")
        sid = query.get("sid")
        if sid is None:
            if request.method != b"GET":
                raise EngineError(400, EngineError.BAD_HANDSHAKE_METHOD, "Bad handshake method")
            # engine.io's rule: a revision-3 client without b64=1 reads binary payloads (JSONP never does)
            binary = version == 3 and jsonp is None and not query.get("b64")
            return self._handshake(request, version, jsonp, binary)
        session = self._server.get(sid)
        if session is None or session.version != version:
            raise EngineError(400, EngineError.SESSION_UNKNOWN, "Session ID unknown")
        session.check_polling()
        if request.method == b"GET":
            return self._poll(request, session, jsonp)
        if request.method == b"POST":
            return self._post(request, session, jsonp)
        raise EngineError(400, EngineError.BAD_REQUEST, "Bad request: method not allowed")

    def _handshake(self, request: Request, version: int, jsonp: str | None, binary: bool) -> int:
        if not self._server.reserve():
            raise EngineError(503, EngineError.BAD_REQUEST, "maximum number of connections reached")
        address = request.getClientAddress()
        peer = f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}"
        session = self._server.open_session(version, peer, supports_binary=binary)
        return self._poll(request, session, jsonp)

    def _poll(self, request: Request, session: Session, jsonp: str | None) -> int:
        pending = _PendingPoll(request, jsonp, session.supports_binary)
        session.poll(pending)
        if not request.finished:
            request.notifyFinish().addErrback(self._poll_lost, session, pending)
        return NOT_DONE_YET

    def _poll_lost(self, failure: Failure, session: Session, pending: _PendingPoll) -> None:
        session.poll_lost(pending)

    def _post(self, request: Request, session: Session, jsonp: str | None) -> bytes:
        # twisted.web has read the body already (kept on disk past 100 kB): only its size is checked here.
        assert request.content is not None
        request.content.seek(0)
        body = request.content.read(self._server.settings.max_payload + 1)
        if len(body) > self._server.settings.max_payload:
            return self._payload_too_large(request, session)
        try:
            if (_header(request, b"content-type") or "").startswith("application/octet-stream"):
                raise ProtocolError("binary payloads are not accepted")
            text = body.decode("utf-8")
            if jsonp is not None:
                fields = parse_qs(text, keep_blank_values=True).get("d")
                if not fields:
                    raise ProtocolError("JSONP post without a 'd' field")
                text = jsonp_unescape(fields[0])
            packets = decode_payload(session.version, text)
        except (ProtocolError, UnicodeDecodeError) as e:
            self.log.info(
                "{peer}: bad Engine.IO payload ({why}); closing session {sid}",
                peer=session.peer,
                why=str(e),
                sid=session.sid,
            )
            session.abort("protocol error")
            raise EngineError(400, EngineError.BAD_REQUEST, f"Bad request: {e}") from None
        session.receive(packets)
        request.setHeader(b"content-type", _TEXT)
        return b"ok"

    def body_refused(self, request: Request) -> None:
        """
        A request the site answered 413 without reading its body (larger than
        ``max_payload``: transport/httplimits.py): a POST to a session ends it, as
        :meth:`_post` ends it for a body it finds too large.
        """
        origin = _header(request, b"origin")
        query = _query(request)
        session = self._server.get(query.get("sid") or "")
        if (
            request.method != b"POST"
            or (origin is not None and not self._origins.allows(origin))
            or query.get("transport") != "polling"
            or session is None
            or query.get("EIO") != str(session.version)
        ):
            return
        self._end_too_large(session)

    def _payload_too_large(self, request: Request, session: Session) -> bytes:
        self._end_too_large(session)
        request.setResponseCode(413)
        request.setHeader(b"content-type", _TEXT)
        return b"Payload Too Large"

    def _end_too_large(self, session: Session) -> None:
        self.log.info(
            "{peer}: POST larger than {limit} bytes; closing session {sid}",
            peer=session.peer,
            limit=self._server.settings.max_payload,
            sid=session.sid,
        )
        session.abort("payload too large")

    def _preflight(self, request: Request) -> bytes:
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-methods", b"GET, POST, OPTIONS")
        asked = request.getHeader(b"access-control-request-headers")
        if asked:
            request.setHeader(b"access-control-allow-headers", asked)
        request.setHeader(b"access-control-max-age", b"86400")
        return b""

    def _refuse(self, request: Request, error: EngineError) -> bytes:
        request.setResponseCode(error.status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"code": error.code, "message": error.message}).encode("utf-8")


def _query(request: Request) -> dict[str, str]:
    """The query string's parameters, first value each (never a POST body's form fields, which ``args`` mixes in)."""
    _path, _, query = (request.uri or b"").partition(b"?")
    return {name: values[0] for name, values in parse_qs(query.decode("latin-1"), keep_blank_values=True).items()}


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


# -- WebSocket ---------------------------------------------------------------------------------


class EngineIOWebSocketProtocol(LeanServerProtocol):
    """
    A WebSocket at ``/socket.io/?transport=websocket``: either a session of its own
    (no ``sid``) or the upgrade of a polling session (``sid``).  A
    :class:`~redmessenger.dialects.engineio.session.WebSocketTransport`.
    """

    _log = make_logger()
    factory: EngineIOWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self._session: Session | None = None
        self._version = 0
        #: A conn_limit slot taken at the handshake for a new session, not yet handed to it.
        self._reserved = False
        self._peer_text = "?"

    # -- WebSocketTransport -------------------------------------------------------------

    def write(self, packet: EncodedPacket) -> bool:
        if self.state != self.STATE_OPEN:
            return False
        if self.raw_frames:  # the hot path: the packet's frame, built once, into the turn's cork (redmessenger.transport.fastpath)
            self.write_frame(packet.frame)
        else:
            self.sendPreparedMessage(packet.prepared(self.factory))
        return True

    def ping(self, token: int) -> None:
        if self.state == self.STATE_OPEN:
            self.send_ping_token(token)

    def close(self, code: int, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            self.close_with(code, reason)
        elif self.state == self.STATE_CONNECTING:
            self.dropConnection(abort=True)

    # -- Autobahn callbacks ---------------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        self._peer_text = peer_text(self.transport)
        params = request.params
        try:
            self._version = parse_version(_first(params, "EIO"))
        except EngineError as e:
            raise ConnectionDeny(400, e.message) from None
        if _first(params, "transport") != "websocket":
            raise ConnectionDeny(400, "Transport unknown")
        sid = _first(params, "sid")
        if sid is not None:
            session = self.factory.server.get(sid)
            if session is None or session.version != self._version:
                raise ConnectionDeny(400, "Session ID unknown")
            # One upgrading or upgraded already: accepted, and closed in onOpen (as engine.io does).
            self._session = session
        elif self.factory.server.reserve():
            self._reserved = True
        else:
            raise ConnectionDeny(503, "maximum number of connections reached")

    def onOpen(self) -> None:
        self.factory.sockets.add(self)
        try:
            if self._reserved:
                self._reserved = False
                self._session = self.factory.server.open_session(self._version, self._peer_text, websocket=self)
            elif self._session is not None and not self._session.attach_probe(self):
                self._session = None
                self.close(1000, "session no longer upgradable")
        except Exception:
            self._log.failure("Opening an Engine.IO WebSocket for {peer} failed", peer=self._peer_text)
            self.dropConnection(abort=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self._session
        if session is None:
            return
        try:
            if isBinary:
                raise ProtocolError("binary frames are not accepted")
            session.websocket_packet(self, decode_packet(payload.decode("utf-8")))
        except ProtocolError as e:
            code = 1003 if isBinary else 1002
            if session.carried_by(self):
                self._log.info("{peer}: {why}; closing session {sid}", peer=self._peer_text, why=str(e), sid=session.sid)
            # The session's WebSocket ends the session; a probe only ends itself (logged), the session goes on polling.
            session.websocket_failed(self, str(e), code)
            self.close(code, str(e))
        except Exception:
            self._log.failure("Handling a frame from {peer} failed", peer=self._peer_text)
            session.abort("internal error", code=1011)

    def backed_up(self, unsent: int) -> None:
        # The session's WebSocket: the layer above reports it (the error object, then the close, 4413) and counts
        # it as a refusal, as when a polling client posts while too much waits for its polls.  A probe, or a
        # socket closing already: closed as LeanServerProtocol closes it.
        session = self._session
        if session is not None and session.is_open and self.state == self.STATE_OPEN and session.carried_by(self):
            session.handler.on_backed_up(unsent)
        else:
            super().backed_up(unsent)

    def pong_received(self, token: int) -> None:
        session = self._session
        if session is not None:
            session.websocket_pong(self, token)

    def takes_small_text(self, payload: bytes) -> bool:
        # Engine.IO 4's pong, the answer to every ping the session sends to confirm: read without Autobahn.
        return payload == b"3" and self._session is not None

    def small_text(self, payload: bytes) -> None:
        session = self._session
        if session is not None:
            session.websocket_packet(self, _PONG)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._reserved:  # closed before onOpen: the session never existed
            self._reserved = False
            self.factory.server.unreserve()
        session, self._session = self._session, None
        if session is not None:
            try:
                session.websocket_closed(self)
            except Exception:
                self._log.failure("Closing session {sid} failed", sid=session.sid)
        self.factory.sockets.closed(self)


def _first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


class EngineIOWebSocketFactory(WebSocketServerFactory):
    """Builds Engine.IO WebSockets; Autobahn checks the frame sizes."""

    protocol = EngineIOWebSocketProtocol  # type: ignore[assignment]  # Autobahn's factory is not generic over its protocol

    def __init__(self, server: EngineServer, corks: Corks | None = None, **options: Any) -> None:
        super().__init__()
        self.server = server
        #: WebSockets whose handshake completed and that have not closed yet.
        self.sockets = OpenSockets()
        #: Sockets with frames waiting for the end of the reactor turn.
        self.corks = corks if corks is not None else Corks(server.clock)
        #: A client that sends while more than this written to its WebSocket waits unread is closed as too slow
        #: (transport/fastpath.py), as one whose polls leave as much waiting.
        self.max_unsent_bytes = server.settings.max_buffered_bytes
        self.setProtocolOptions(**options)

    def all_closed(self) -> Deferred[None]:
        """Fires once every open WebSocket has closed (at shutdown, after the sessions were ended)."""
        return self.sockets.when_empty()
