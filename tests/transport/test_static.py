"""Files the daemon serves to browsers: content, cache headers, revalidation."""

from __future__ import annotations

from importlib import resources

import pytest_twisted

from ..httpclient import http_get


@pytest_twisted.ensureDeferred
async def test_the_legacy_client_is_served_with_an_etag(daemon):
    shipped = resources.files("redmessenger").joinpath("static", "redmessenger-legacy.js").read_bytes()
    status, headers, body = await http_get(daemon.port, "/redmessenger-legacy.js")
    assert status == 200 and body == shipped
    assert headers.getRawHeaders(b"content-type") == [b"application/javascript; charset=utf-8"]
    assert headers.getRawHeaders(b"cache-control") == [b"public, max-age=300"]
    (etag,) = headers.getRawHeaders(b"etag")
    status, headers, body = await http_get(daemon.port, "/redmessenger-legacy.js", {b"if-none-match": [etag]})
    assert status == 304 and body == b""
    status, _, body = await http_get(daemon.port, "/redmessenger-legacy.js", {b"if-none-match": [b'"other"']})
    assert status == 200 and body == shipped


@pytest_twisted.ensureDeferred
async def test_the_legacy_client_is_the_seeds_function_with_an_error_callback(daemon):
    _, _, body = await http_get(daemon.port, "/redmessenger-legacy.js")
    text = body.decode()
    assert "function RedMessenger(url, userId, userKey)" in text
    assert "socket.emit('identifier', identifier)" in text
    assert "this.onError" in text
