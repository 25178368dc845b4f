"""A real HTTP client (Twisted's Agent) for the daemon's /health and /metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .conftest import HOST


async def http_get(port: int, path: str, headers: dict[bytes, list[bytes]] | None = None) -> tuple[int, Any, bytes]:
    from twisted.internet import reactor
    from twisted.web.client import Agent
    from twisted.web.http_headers import Headers

    agent = Agent(reactor, connectTimeout=5)
    d = agent.request(b"GET", f"http://{HOST}:{port}{path}".encode("ascii"), Headers(headers or {}))
    d.addTimeout(10, reactor)
    response = await d
    body = await read_body(response)
    return response.code, response.headers, body


async def read_body(response: Any) -> bytes:
    """The whole body (readBody warns about Agent's own transport proxy)."""
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Protocol
    from twisted.web.client import ResponseDone

    done: Deferred[bytes] = Deferred()
    chunks: list[bytes] = []

    class Collect(Protocol):
        def dataReceived(self, data: bytes) -> None:
            chunks.append(data)

        def connectionLost(self, reason: Any = None) -> None:
            if reason is None or reason.check(ResponseDone):
                done.callback(b"".join(chunks))
            else:
                done.errback(reason)

    response.deliverBody(Collect())
    return await done


async def scrape(port: int) -> dict[str, float]:
    """Every sample as ``name{label="value",...}`` -> value, from the parsed exposition."""
    code, headers, body = await http_get(port, "/metrics")
    assert code == 200
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version=0.0.4")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
