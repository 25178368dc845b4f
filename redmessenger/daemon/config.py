"""
The daemon's configuration: the JSON file's keys, their defaults and their checks.

Everything is validated before any port opens, so that a typo stops ``twistd`` at
start with a message naming the key, instead of surfacing hours later.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable


class ConfigError(ValueError):
    """A configuration key is unknown or has a bad value; the message names the key."""


@dataclass(frozen=True)
class Config:
    """
    The validated configuration.  Field names are the JSON keys; the first seven
    are the Node.js RedMessenger's, with the same meaning.
    """

    # -- the seed's keys ------------------------------------------------------
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    ws_port: int = 8080
    secure_mode: bool = False
    rm_route: str = "/rm"
    queue_expiry: int = 604800
    conn_limit: int = 10000

    # -- listening -------------------------------------------------------------
    #: The address ``ws_port`` listens on (``""``: every interface, as the Node.js program did).
    ws_interface: str = ""
    #: Listen on ``ws_port`` with SO_REUSEPORT: several daemons on one host share the port, the kernel
    #: spreading connections among them (each needs its own ``node_id``; docs/operations.md, *Every core*).
    ws_reuse_port: bool = False
    #: A Twisted server endpoint string (``tcp:8080:interface=127.0.0.1``,
    #: ``ssl:8443:privateKey=key.pem:certKey=cert.pem``); overrides ``ws_port`` and ``ws_interface``.
    listen: str | None = None
    #: Origins allowed to open a WebSocket (``["*"]``: any; wildcards allowed).
    allowed_origins: tuple[str, ...] = ("*",)
    #: Negotiate permessage-deflate: ~10x the memory per socket, off by default.
    websocket_compression: bool = False
    #: Seconds between keep-alive pings; a client silent for two is dropped (0: no keep-alive).
    ping_interval: float = 25.0

    # -- Redis -------------------------------------------------------------------
    redis_password: str | None = field(default=None, repr=False)
    redis_username: str | None = None
    redis_db: int = 0
    redis_tls: bool = False
    #: Seconds to wait for a Redis reply before treating the link as broken.
    redis_timeout: float = 10.0
    #: Redis Sentinel: the sentinels as ``"host:port"`` strings; the master is asked of them (and
    #: followed through failovers) instead of ``redis_host``/``redis_port``.  Empty: no Sentinel.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    #: The name the sentinels monitor the master under.
    redis_sentinel_master: str = "mymaster"
    #: The sentinels' own password (their ``requirepass``), if they have one.
    redis_sentinel_password: str | None = field(default=None, repr=False)
    #: Seconds between probes of the pub/sub subscription (a PUBLISH the daemon must hear back); one
    #: not heard by the next probe ends the silent subscription, which is opened again.  0: no probes.
    redis_probe_interval: float = 5.0
    #: Run a valkey-server child process on redis_host:redis_port (loopback only).
    embedded_redis: bool = False
    embedded_redis_dir: str = "var/redis"

    # -- clients -----------------------------------------------------------------
    #: Seconds a new socket has to send its identifier.
    identify_timeout: float = 10.0
    #: Largest frame a client may send, in bytes (identifiers are tiny).
    max_frame_bytes: int = 4096
    #: Most sockets one uid may hold open (``null``: no limit).
    user_socket_limit: int | None = None

    # -- queues ------------------------------------------------------------------
    #: Longest a user's queue may grow; past it the oldest entries are dropped.
    queue_max_length: int = 100000
    #: Queue entries read from Redis per round trip while handing a queue over.
    handover_batch: int = 500
    #: Largest payload a PUBLISH may carry, in bytes; a larger one is kept aside at
    #: ``rm:oversize:$channel`` instead of delivered (docs/protocol.md, *Message size*).
    max_payload_bytes: int = 1024 * 1024
    #: Bytes a socket may be sent and not confirm before it is closed as too slow (4413).
    max_pending_bytes: int = 8 * 1024 * 1024
    #: Bytes all sockets together may be sent and not confirm; past it the slowest are closed (4413).
    memory_budget_bytes: int = 256 * 1024 * 1024

    #: Read the durable intake stream (rm:intake) as well as pub/sub (docs/protocol.md, *The durable intake*).
    intake: bool = True
    #: This daemon's name in the intake's consumer group and among the daemons sharing the Redis
    #: (rm:nodes); the same across restarts, so that it reads again what it had not finished.  Also from
    #: the environment: ``REDMESSENGER_NODE_ID`` (the systemd template unit sets it).  Default: the host
    #: name and ws_port.
    node_id: str | None = None
    #: A plain WebSocket whose user another daemon on this host owns goes to that daemon's process (its
    #: file descriptor over a Unix socket) instead of being relayed to it through Redis (docs/scale-out.md,
    #: *Passing sockets*).
    pass_sockets: bool = True

    # -- channels clients ask for (SPEC §7, docs/protocol.md *Channels*) ----------------
    #: The application's public key: version-1 clients present it in their hello (``null``: not checked).
    #: Also from the environment: ``REDMESSENGER_PKEY``.
    public_key: str | None = None
    #: The secret key shared with the application's servers (never with a browser): signs and checks grants.
    #: Also from the environment: ``REDMESSENGER_SKEY``.  ``null``: no grants.
    secret_key: str | None = field(default=None, repr=False)
    #: Seconds a grant the daemon gives with a permitted subscription lasts.
    grant_ttl: int = 3600
    #: Seconds the application has to answer a subscription request; then it is denied.
    subscription_timeout: float = 5.0
    #: Largest message a client may publish on a channel, in bytes (its JSON text).  The whole
    #: frame must also fit in ``max_frame_bytes``: raise both together.
    client_publish_max_bytes: int = 3 * 1024
    #: Messages a connection may publish per second (bursts of as many).
    client_publish_rate: float = 20.0
    #: Channels one connection may hold, granted or asked for (too_many_subscriptions past it).
    max_subscriptions: int = 128

    #: Serve a chat demo at /demo, with a built-in application permitting demo* channels to anyone. Off in production.
    demo: bool = False

    log_level: str = "info"

    # -- operations (docs/operations.md) -------------------------------------------
    #: Telnet manhole for operators: a port (loopback) or an endpoint string such
    #: as ``tcp:8023:interface=127.0.0.1``; ``null``: no manhole.
    manhole: str | None = None
    #: ``user:password`` lines, readable by the daemon's user only; needed by ``manhole``.
    manhole_password_file: str | None = None
    #: Let ``manhole`` listen beyond loopback (telnet is cleartext: think twice).
    manhole_allow_remote: bool = False

    #: Where the file was read from (not a JSON key).
    source: str = field(default="<defaults>", compare=False)

    @property
    def listen_endpoint(self) -> str:
        """The endpoint string the WebSocket server listens on."""
        if self.listen is not None:
            return self.listen
        # endpoint strings escape the colons of an IPv6 address
        interface = ":interface=" + self.ws_interface.replace(":", "\\:") if self.ws_interface else ""
        kind = "reuseport" if self.ws_reuse_port else "tcp"
        return f"{kind}:{self.ws_port}:backlog=1024{interface}"

    @property
    def listen_label(self) -> str:
        """Where clients connect, as the log lines say it (``*:8080`` for every interface)."""
        if self.listen is not None:
            return self.listen
        return f"{self.ws_interface or '*'}:{self.ws_port}"

    @property
    def consumer_name(self) -> str:
        """The intake consumer's name: ``node_id``, or the host name and the port."""
        if self.node_id is not None:
            return self.node_id
        import socket

        return f"{socket.gethostname()}:{self.ws_port if self.listen is None else self.listen}"

    @property
    def open_to_anyone(self) -> bool:
        """Listening beyond loopback with ``secure_mode`` off: whoever reaches the port can read any user's queue."""
        return not self.secure_mode and not on_loopback(self.listen_endpoint)


_ROUTE = re.compile(r"^/[A-Za-z0-9_.~/-]*$")
_LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def _integer(low: int, high: int | None = None) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ConfigError(f"{key}: must be {bounds}, got {value}")
        return value

    return check


def _number(low: float, strictly_positive: bool = False) -> Callable[[str, Any], float]:
    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: expected a number of seconds, got {value!r}")  # JSON lets NaN, 1e999 through
        if value < low or (strictly_positive and value <= 0):
            raise ConfigError(f"{key}: must be {'>' if strictly_positive else '>='} {low}, got {value}")
        return float(value)

    return check


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    def optional(key: str, value: Any) -> Any:
        return None if value is None else check(key, value)

    return optional


def _route(key: str, value: Any) -> str:
    route = _text(key, value)
    if not _ROUTE.match(route) or route.endswith("/") and route != "/" or "//" in route:
        raise ConfigError(f"{key}: expected a path such as \"/rm\", got {route!r}")
    if route.startswith(("/socket.io", "/health", "/metrics", "/redmessenger")):
        raise ConfigError(f"{key}: {route!r} is reserved for the daemon's own routes")
    return route


def _origins(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(o, str) and o for o in value):
        raise ConfigError(f"{key}: expected a non-empty list of origins such as [\"https://example.com\"], got {value!r}")
    return tuple(value)


def _sentinels(key: str, value: Any) -> tuple[tuple[str, int], ...]:
    example = 'such as ["10.0.0.5:26379", "10.0.0.6:26379", "10.0.0.7:26379"]'
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of \"host:port\" strings {example}, got {value!r}")
    found = []
    for item in value:
        host, _, port = item.rpartition(":") if isinstance(item, str) else ("", "", "")
        host = host.strip("[]")  # [::1]:26379
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{key}: expected \"host:port\" strings {example}, got {item!r}")
        found.append((host, int(port)))
    return tuple(found)


def _log_level(key: str, value: Any) -> str:
    if value not in _LOG_LEVELS:
        raise ConfigError(f"{key}: expected one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    return str(value)


def _listen(key: str, value: Any) -> str:
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor  # parses the string, opens nothing

    endpoint = _text(key, value)
    try:
        serverFromString(MemoryReactor(), endpoint)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise ConfigError(f"{key}: not a Twisted endpoint string ({e}): {endpoint!r}") from None
    return endpoint


def _manhole(key: str, value: Any) -> str:
    """A bare port means loopback: the manhole is an operator's tool, not a network service."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"tcp:{_integer(0, 65535)(key, value)}:interface=127.0.0.1"
    return _listen(key, value)


def _password_file(key: str, value: Any) -> str:
    from redmessenger.ops.passwords import PasswordFileError, read_password_file

    path = _text(key, value)
    try:
        read_password_file(path)
    except PasswordFileError as e:
        raise ConfigError(f"{key}: {e}") from None
    return path


def _check_manhole(config: Config) -> None:
    """The manhole needs a password file, and listens on loopback unless told otherwise."""
    if config.manhole is None:
        return
    if config.manhole_password_file is None:
        raise ConfigError("manhole_password_file: needed when manhole is set")
    if config.manhole_allow_remote:
        return
    if not on_loopback(config.manhole):
        raise ConfigError(
            f"manhole: {config.manhole!r} is not on a loopback interface; add interface=127.0.0.1 "
            "or set manhole_allow_remote to true"
        )


def on_loopback(endpoint_string: str) -> bool:
    """Whether a server endpoint string listens on loopback only (or on a unix socket)."""
    from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
    from twisted.internet.testing import MemoryReactor

    endpoint = serverFromString(MemoryReactor(), endpoint_string)
    if isinstance(endpoint, UNIXServerEndpoint):
        return True
    interface = getattr(endpoint, "_interface", None)
    if interface == "localhost":
        return True
    try:
        return interface is not None and ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def _interface(key: str, value: Any) -> str:
    if value == "":
        return ""
    address = _text(key, value)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if address != "localhost":
            raise ConfigError(f"{key}: expected an IP address such as \"127.0.0.1\" (or \"\" for every interface), got {value!r}") from None
    return address


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "redis_host": _text,
    "redis_port": _integer(1, 65535),
    "ws_port": _integer(0, 65535),
    "ws_interface": _interface,
    "ws_reuse_port": _boolean,
    "pass_sockets": _boolean,
    "secure_mode": _boolean,
    "rm_route": _route,
    "queue_expiry": _integer(1),
    "conn_limit": _integer(1),
    "listen": _optional(_listen),
    "allowed_origins": _origins,
    "websocket_compression": _boolean,
    "ping_interval": _number(0),
    "redis_password": _optional(_text),
    "redis_username": _optional(_text),
    "redis_db": _integer(0, 15),
    "redis_tls": _boolean,
    "redis_timeout": _number(0, strictly_positive=True),
    "redis_probe_interval": _number(0),
    "redis_sentinels": _sentinels,
    "redis_sentinel_master": _text,
    "redis_sentinel_password": _optional(_text),
    "embedded_redis": _boolean,
    "embedded_redis_dir": _text,
    "identify_timeout": _number(0, strictly_positive=True),
    "max_frame_bytes": _integer(256, 16 * 1024 * 1024),
    "user_socket_limit": _optional(_integer(1)),
    "queue_max_length": _integer(1),
    "handover_batch": _integer(1, 100000),
    # Redis's own limit on a string (proto-max-bulk-len's default) is 512 MiB
    "max_payload_bytes": _integer(1, 512 * 1024 * 1024),
    "max_pending_bytes": _integer(64 * 1024),
    "memory_budget_bytes": _integer(1024 * 1024),
    "intake": _boolean,
    "node_id": _optional(_text),
    "public_key": _optional(_text),
    "secret_key": _optional(_text),
    "grant_ttl": _integer(1),
    "subscription_timeout": _number(0, strictly_positive=True),
    "client_publish_max_bytes": _integer(1, 16 * 1024 * 1024),
    "client_publish_rate": _number(0, strictly_positive=True),
    "max_subscriptions": _integer(1),
    "demo": _boolean,
    "log_level": _log_level,
    "manhole": _optional(_manhole),
    "manhole_password_file": _optional(_password_file),
    "manhole_allow_remote": _boolean,
}

# Keys of the Node.js program's config.json that have no meaning here, accepted
# so that an old file works unchanged.
_IGNORED_LEGACY_KEYS = frozenset({"cluster"})

assert set(_CHECKS) == {f.name for f in fields(Config)} - {"source"}


def _unknown_key(key: str) -> str:
    """The error for a key we do not know: the likeliest intended key, or else all of them."""
    spelt = {name.lower(): name for name in _CHECKS}
    close = difflib.get_close_matches(key.lower().replace("-", "_"), list(spelt), n=1)
    if close:
        return f"{key}: unknown configuration key; did you mean {spelt[close[0]]}?"
    return f"{key}: unknown configuration key (known keys: {', '.join(sorted(_CHECKS))})"


def parse_config(raw: Any, source: str = "<inline>") -> Config:
    """Validate a decoded JSON object and return the configuration it describes."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object at the top level")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _IGNORED_LEGACY_KEYS:
            continue
        check = _CHECKS.get(key)
        if check is None:
            raise ConfigError(_unknown_key(key))
        values[key] = check(key, value)
    for key, variable in (
        ("public_key", "REDMESSENGER_PKEY"),
        ("secret_key", "REDMESSENGER_SKEY"),
        ("node_id", "REDMESSENGER_NODE_ID"),
    ):
        if key not in values and os.environ.get(variable):
            values[key] = os.environ[variable]
    config = Config(source=source, **values)
    if config.embedded_redis and config.redis_host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"redis_host: the embedded server listens on loopback only, got {config.redis_host!r}")
    if config.embedded_redis and config.redis_sentinels:
        raise ConfigError("redis_sentinels: the embedded server has no sentinels; set embedded_redis to false")
    if config.embedded_redis and config.redis_username not in (None, "default"):  # AUTH would fail forever
        raise ConfigError(f"redis_username: the embedded server has the user \"default\" only, got {config.redis_username!r}")
    if config.embedded_redis and config.redis_tls:
        raise ConfigError("redis_tls: the embedded server does not speak TLS; set redis_tls or embedded_redis to false")
    if config.demo and config.rm_route == "/demo":
        raise ConfigError("rm_route: \"/demo\" is the demo page's route (demo is true); choose another route")
    if config.redis_username is not None and config.redis_password is None:
        raise ConfigError("redis_username: needs redis_password as well")
    _check_manhole(config)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a JSON configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    return parse_config(raw, source=str(path))
