"""
What the application and the daemon say to each other through Redis
(docs/protocol.md in the RedMessenger repository: *The durable intake*,
*Channels: the application's side*, *Grants*), with the standard library only:
every flavour (blocking, asyncio, Twisted) shares it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional
from urllib.parse import parse_qs, unquote, urlsplit

#: The durable intake: the daemons read it as a consumer group; an entry Redis took is delivered even
#: if no daemon runs right now (then when one starts).
INTAKE_STREAM = "rm:intake"
#: Subscription requests, read by the application's consumer group.
REQUESTS_STREAM = "rm:requests"
#: The consumer group the library reads requests in (every worker of one application shares it).
DEFAULT_GROUP = "app"
MODES = ("read_write", "read_only", "write_only")


def user_channel(uid: str) -> str:
    return f"rm.users.{uid}"


def group_channel(cid: str) -> str:
    return f"rm.channels.{cid}"


def client_channel(cid: str) -> str:
    """Where the daemons publish what clients publish on channel ``cid`` (with the sender)."""
    return f"rm.client.channels.{cid}"


def payload_of(message: Any) -> str:
    """A message (any JSON-serializable value) as the payload subscribers get: compact JSON text."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Where the daemon is and the keys, as the add-on gave them (``REDMESSENGER_*``)."""

    #: The daemon's public URL, for pages (``ws://``, ``wss://``, ``http://`` or ``https://``).
    url: Optional[str] = None
    public_key: Optional[str] = None
    secret_key: Optional[str] = field(default=None, repr=False)
    #: The Redis the daemon uses (``redis://``, ``rediss://``, ``unix://``, or its sentinels:
    #: ``redis+sentinel://host:26379,host2:26379/mymaster``, see :func:`parse_sentinel_url`).
    redis_url: str = "redis://127.0.0.1:6379/0"

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, dotenv: Optional[str] = ".env") -> "Settings":
        """
        From ``REDMESSENGER_URL``, ``_PKEY``, ``_SKEY``, ``_REDIS_URL``; a ``.env`` file
        (``NAME=value`` lines) fills in what the environment does not say.
        """
        values = dict(read_dotenv(dotenv)) if dotenv else {}
        values.update(environ if environ is not None else os.environ)
        return cls(
            url=values.get("REDMESSENGER_URL") or None,
            public_key=values.get("REDMESSENGER_PKEY") or None,
            secret_key=values.get("REDMESSENGER_SKEY") or None,
            redis_url=values.get("REDMESSENGER_REDIS_URL") or cls.redis_url,
        )


def read_dotenv(path: str) -> dict[str, str]:
    """``NAME=value`` lines (``export`` and quotes allowed, ``#`` comments); nothing if there is no such file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        return {}
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


# -- subscription requests -------------------------------------------------------------------------


class Answered(Exception):
    """A request answered twice."""


@dataclass
class SubscriptionRequest:
    """A client asks for a channel (SPEC §7.1); answer with :meth:`permit` or :meth:`deny`, once."""

    id: str
    channel: str
    client_auth: Optional[str]
    client_id: str
    uid: Optional[str]
    reply_to: str
    #: Unix time in milliseconds after which the daemon has denied it already.
    deadline: int
    _answer: Callable[[bytes], Any] = field(repr=False, default=lambda raw: None)
    answer: Optional[dict[str, Any]] = field(default=None, repr=False)
    #: What sending the answer returned (the asyncio flavour: a task to await).
    sent: Any = field(default=None, repr=False)

    @classmethod
    def from_entry(cls, fields: Mapping[Any, Any], answer: Callable[[bytes], Any]) -> "SubscriptionRequest":
        text = {_text(k): _text(v) for k, v in fields.items()}
        return cls(
            id=text.get("id", ""),
            channel=text.get("channel", ""),
            client_auth=text.get("client_auth") or None,
            client_id=text.get("client_id", ""),
            uid=text.get("uid") or None,
            reply_to=text.get("reply_to", ""),
            deadline=int(text.get("deadline") or 0),
            _answer=answer,
        )

    @property
    def expired(self) -> bool:
        return time.time() * 1000 > self.deadline

    def permit(self, mode: str = "read_write") -> Any:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        return self._send({"id": self.id, "permit": mode})

    def deny(self, reason: str = "denied") -> Any:
        return self._send({"id": self.id, "deny": str(reason) or "denied"})

    def _send(self, answer: dict[str, Any]) -> Any:
        if self.answer is not None:
            raise Answered(f"request {self.id} is answered already ({self.answer})")
        self.answer = answer
        self.sent = self._answer(json.dumps(answer, separators=(",", ":")).encode("utf-8"))
        return self.sent


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Sender:
    """Who published a client message (set by the daemon): its connection's id, and its uid if it identified."""

    client_id: str
    uid: Optional[str]


def client_message(raw: bytes) -> tuple[Any, Sender]:
    """A message on ``rm.client.channels.$cid``: the client's JSON value and its sender."""
    obj = json.loads(raw)
    return json.loads(obj["payload"]), Sender(obj["client_id"], obj.get("uid"))


def app_message(raw: bytes) -> Any:
    """A bare PUBLISH on ``rm.channels.$cid``: JSON if it is JSON, else the text."""
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- grants --------------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _mint(secret: str, fields: dict[str, Any]) -> str:
    payload = _b64(json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    signature = _b64(hmac.new(secret.encode("utf-8"), payload.encode("ascii"), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def subscription_grant(secret: str, channel: str, mode: str = "read_write", ttl: int = 3600, uid: Optional[str] = None) -> str:
    """A pre-authorized subscription: the daemon grants it with no request to the application, for ``ttl`` seconds."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    fields: dict[str, Any] = {"k": "sub", "e": int(time.time()) + ttl}
    if uid is not None:
        fields["u"] = uid
    fields.update(c=channel, m=mode)
    return _mint(secret, fields)


def identity_grant(secret: str, uid: str, ttl: int = 3600) -> str:
    """Proof that the page is ``uid``'s, for ``ttl`` seconds: a hello's alternative to ``rm:users:$uid:key``."""
    return _mint(secret, {"k": "id", "e": int(time.time()) + ttl, "u": uid})


# -- a page's tags ----------------------------------------------------------------------------------


def page_tags(settings: Settings, script: str = "/redmessenger.js") -> str:
    """
    The meta tags the browser library reads (the daemon's URL, the public key)
    and its script tag, served by the daemon itself.  HTML-escaped.
    """
    if not settings.url:
        raise ValueError("no daemon URL: set REDMESSENGER_URL")
    parts = urlsplit(settings.url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    origin = f"{scheme}://{parts.netloc}"  # the daemon serves its scripts at its root
    tags = [f'<meta name="redmessenger-url" content="{html.escape(settings.url)}">']
    if settings.public_key:
        tags.append(f'<meta name="redmessenger-pkey" content="{html.escape(settings.public_key)}">')
    tags.append(f'<script src="{html.escape(origin + script)}"></script>')
    return "\n".join(tags)


# -- Redis Sentinel --------------------------------------------------------------------------------

#: ``redis+sentinel://`` (and ``rediss+sentinel://``: TLS to the master) URLs name sentinels instead of a server.
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True)
class SentinelURL:
    """
    ``redis+sentinel://[[user]:password@]host:port[,host:port...]/master_name[/db][?sentinel_password=...]``:
    the sentinels to ask, the name they monitor the master under, and how to talk to the master.
    """

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    sentinel_password: Optional[str] = field(default=None, repr=False)
    tls: bool = False

    def sentinel_options(self) -> dict[str, Any]:
        """Keyword arguments of valkey-py's ``Sentinel(sentinels, **these)`` (blocking and asyncio alike)."""
        return {"sentinel_kwargs": {"password": self.sentinel_password} if self.sentinel_password else None, "socket_timeout": 5}

    def master_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Sentinel.master_for(master_name, **these)``."""
        return {"db": self.db, "username": self.username, "password": self.password, "ssl": self.tls}


def parse_sentinel_url(url: str) -> Optional[SentinelURL]:
    """A ``redis+sentinel://`` URL read (ValueError if it is malformed); None for any other URL."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        return None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{parts.scheme}: expected host:port sentinels separated by commas, got {item!r}")
        sentinels.append((host, int(port)))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{parts.scheme}: expected /master_name or /master_name/db after the sentinels, got {parts.path!r}")
    sentinel_passwords = parse_qs(parts.query).get("sentinel_password")
    return SentinelURL(
        sentinels=tuple(sentinels),
        master_name=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=username,
        password=password,
        sentinel_password=sentinel_passwords[0] if sentinel_passwords else None,
        tls=parts.scheme == "rediss+sentinel",
    )
