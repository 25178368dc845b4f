"""
The configuration translated into each part's own settings: the Redis link's,
the Engine.IO heartbeat, Autobahn's protocol options.
"""

from __future__ import annotations

from typing import Any

from redmessenger.daemon.config import Config
from redmessenger.dialects.engineio.contract import EngineSettings
from redmessenger.redis_edge.link import RedisSettings
from redmessenger.redis_edge.sentinel import SentinelSettings


def redis_settings(config: Config) -> RedisSettings:
    return RedisSettings(
        host=config.redis_host,
        port=config.redis_port,
        password=config.redis_password,
        username=config.redis_username,
        db=config.redis_db,
        tls=config.redis_tls,
        timeout=config.redis_timeout,
        probe_interval=config.redis_probe_interval,
        sentinel=(
            SentinelSettings(config.redis_sentinels, config.redis_sentinel_master, config.redis_sentinel_password)
            if config.redis_sentinels
            else None
        ),
    )


#: Bytes a socket may hold unread beyond its max_pending_bytes (pongs, replies) before a client that still sends
#: is closed as too slow: a client that reads slowly meets max_pending_bytes first.
UNSENT_MARGIN = 1024 * 1024


def engine_settings(config: Config) -> EngineSettings:
    """
    The heartbeat follows ``ping_interval`` (a client silent for about two
    intervals is dropped, as on the plain dialect); Engine.IO cannot go without
    one, so ``ping_interval: 0`` means engine.io's own 25 s / 20 s there.
    """
    buffered = config.max_pending_bytes + UNSENT_MARGIN
    if config.ping_interval > 0:
        return EngineSettings(
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_interval,
            max_payload=config.max_frame_bytes,
            max_buffered_bytes=buffered,
        )
    return EngineSettings(ping_interval=25.0, ping_timeout=20.0, max_payload=config.max_frame_bytes, max_buffered_bytes=buffered)


def websocket_options(config: Config) -> dict[str, Any]:
    """Autobahn protocol options derived from the configuration."""
    options: dict[str, Any] = {
        "maxFramePayloadSize": config.max_frame_bytes,
        "maxMessagePayloadSize": config.max_frame_bytes,
        "openHandshakeTimeout": 10,
        "closeHandshakeTimeout": 5,
        "tcpNoDelay": True,
        # Origin: null (sandboxed iframes, file:// pages) is decided by allowed_origins, as any other origin;
        # Autobahn would refuse it with a 400 whatever the configuration.
        "allowNullOrigin": True,
        # send the close frame (1009, 1007...) before dropping, so the client learns why
        "failByDrop": False,
    }
    if config.websocket_compression:
        from autobahn.websocket.compress import (
            PerMessageDeflateOffer,
            PerMessageDeflateOfferAccept,
        )

        def accept(offers: list[Any]) -> Any:
            for offer in offers:
                if isinstance(offer, PerMessageDeflateOffer):
                    return PerMessageDeflateOfferAccept(offer)
            return None

        options["perMessageCompressionAccept"] = accept
    return options
