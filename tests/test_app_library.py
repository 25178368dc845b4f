"""
The application library (clients/python, SPEC §8) against the real daemon and
a real valkey-server: the blocking flavour in threads (as in a WSGI server), the
asyncio flavour in an event loop of its own, real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
import pytest_twisted
from redmessenger_app import aio, blocking
from redmessenger_app.protocol import Settings, page_tags, read_dotenv

from .channelclient import error, session
from .conftest import free_port


def settings_for(port: int, **more: Any) -> Settings:
    return Settings(redis_url=f"redis://127.0.0.1:{port}/0", **more)


@pytest.fixture
def library(redis_server: Any, redis: Any) -> Iterator[Any]:
    """Blocking RedMessenger instances on the test's Redis, stopped after the test."""
    made: list[blocking.RedMessenger] = []

    def make(**kwargs: Any) -> blocking.RedMessenger:
        rm = blocking.RedMessenger(settings_for(redis_server.port, secret_key=kwargs.pop("secret_key", None)), **kwargs)
        made.append(rm)
        return rm

    yield make
    for rm in made:
        rm.stop()
        rm.redis.close()


@pytest_twisted.ensureDeferred
async def test_the_blocking_library_answers_subscription_requests_in_every_way(daemon_factory, library):
    rm = library()

    @rm.on("subscription_request")
    def authorize(request: Any) -> None:
        if request.client_auth == "raise":
            raise RuntimeError("the app's own bug")
        if request.client_auth == "silent":
            return  # answers nothing: denied for it
        if request.client_auth == "no":
            request.deny("members only")
        else:
            request.permit(request.client_auth or "read_write")

    rm.start()
    daemon = await daemon_factory()
    client = await session(daemon, "alice")
    assert (await client.subscribe("a", client_auth="read_only"))["mode"] == "read_only"
    assert (await client.subscribe("b"))["mode"] == "read_write"
    for channel, auth, reason in (("c", "no", "members only"), ("d", "raise", "the application failed"),
                                  ("e", "silent", "the application did not answer")):  # fmt: skip
        reply = await client.subscribe(channel, client_auth=auth)
        assert error(reply) == "denied" and reply["error"]["reason"] == reason


@pytest_twisted.ensureDeferred
async def test_two_workers_of_the_library_share_the_requests_and_answer_each_once(daemon_factory, library):
    seen: list[tuple[str, str]] = []
    workers = [library(consumer=f"worker-{n}") for n in (1, 2)]
    for n, rm in enumerate(workers):
        rm.on("subscription_request", lambda request, n=n: (seen.append((f"w{n}", request.id)), request.permit()))
        rm.start()
    daemon = await daemon_factory()
    clients = [await session(daemon) for _ in range(3)]
    for i in range(30):
        assert (await clients[i % 3].subscribe(f"ch{i}"))["ok"] is True
    ids = [request_id for _, request_id in seen]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert daemon.service.application.stray_answers == 0


@pytest_twisted.ensureDeferred
async def test_published_with_no_daemon_running_it_arrives_when_one_starts(daemon_factory, library):
    rm = library()
    first = rm.publish_to_user("alice", {"n": 1})
    second = rm.publish_to_user("alice", "two")
    assert first < second, "entry ids, in order: the caller knows Redis took each"
    daemon = await daemon_factory()
    client = await session(daemon, "alice")
    got = await client.receive(2)
    assert [(m["payload"], m["id"]) for m in got] == [('{"n":1}', first), ('"two"', second)]


@pytest_twisted.ensureDeferred
async def test_publishing_from_a_wsgi_application_reaches_the_channel(daemon_factory, library, app):
    from .appworker import permit

    app(permit())
    rm = library()

    def application(environ: Any, start_response: Any) -> list[bytes]:
        entry = rm.publish("news", {"path": environ["PATH_INFO"]})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [entry.encode()]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", free_port(), application, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        daemon = await daemon_factory()
        reader = await session(daemon)
        assert (await reader.subscribe("news"))["ok"] is True
        from twisted.internet.threads import deferToThread

        url = f"http://127.0.0.1:{server.server_port}/breaking"
        entry = await deferToThread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        [message] = await reader.receive(1)
        assert (message["payload"], message["id"], message["source"]) == ('{"path":"/breaking"}', entry, "rm.channels.news")
    finally:
        server.shutdown()
        server.server_close()


@pytest_twisted.ensureDeferred
async def test_the_application_subscribes_to_what_clients_publish(daemon_factory, library, redis):
    got: list[tuple[Any, Any]] = []
    rm = library()
    rm.on("subscription_request", lambda request: request.permit())
    rm.subscribe("chat", lambda message, sender: got.append((message, sender)))
    rm.start()
    daemon = await daemon_factory()
    alice = await session(daemon, "alice")
    assert (await alice.subscribe("chat"))["ok"] is True
    assert (await alice.request("publish", channel="chat", message={"text": "hi"}))["ok"] is True
    redis.publish("rm.channels.chat", '{"from": "a bare PUBLISH"}')
    await daemon.until(lambda: len(got) == 2, what="the application's callback twice")
    (message, sender), (bare, nobody) = got
    assert message == {"text": "hi"} and sender.uid == "alice" and sender.client_id
    assert (bare, nobody) == ({"from": "a bare PUBLISH"}, None)


@pytest_twisted.ensureDeferred
async def test_grants_minted_by_the_library_are_accepted_by_the_daemon(daemon_factory, library, app):
    worker = app()
    rm = library(secret_key="s3cret")
    daemon = await daemon_factory(secret_key="s3cret", secure_mode=True)
    client = await session(daemon, "alice", grant=rm.identity_grant("alice", ttl=60))
    reply = await client.subscribe("vip", grant=rm.subscription_grant("vip", "read_only", ttl=60, uid="alice"))
    assert reply == {"type": "reply", "ref": 1, "ok": True, "mode": "read_only"}
    assert worker.requests == [], "pre-authorized: the application was not asked"


@pytest_twisted.ensureDeferred
async def test_the_asyncio_library_inside_an_asyncio_application(daemon_factory, redis_server, redis):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    got: list[Any] = []
    rm = aio.RedMessenger(settings_for(redis_server.port))

    @rm.on("subscription_request")
    async def authorize(request: Any) -> None:
        await asyncio.sleep(0)  # an await of its own, as a database lookup would
        if request.channel == "closed":
            await request.deny("closed")
        else:
            request.permit("read_write")  # not awaited: answered anyway

    async def on_message(message: Any, sender: Any) -> None:
        got.append((message, sender.uid if sender else None))

    rm.subscribe("room", on_message)

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop)

    from twisted.internet.threads import deferToThread

    await deferToThread(lambda: run(rm.start()).result(5))
    try:
        daemon = await daemon_factory()
        client = await session(daemon, "bob")
        assert (await client.subscribe("room"))["mode"] == "read_write"
        assert error(await client.subscribe("closed")) == "denied"
        entry = await deferToThread(lambda: run(rm.publish("room", ["from", "asyncio"])).result(5))
        [message] = await client.receive(1)
        assert (message["payload"], message["id"]) == ('["from","asyncio"]', entry)
        assert (await client.request("publish", channel="room", message="from bob"))["ok"] is True
        await daemon.until(lambda: got == [("from bob", "bob")], what="the async callback")
    finally:
        await deferToThread(lambda: run(rm.aclose()).result(5))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_settings_come_from_the_environment_then_a_dotenv_file(tmp_path: Any) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# local development\nREDMESSENGER_URL=ws://localhost:8080/rm\nexport REDMESSENGER_PKEY='pk from file'\n"
        'REDMESSENGER_SKEY="sk"\nnot a line\n'
    )
    assert read_dotenv(str(tmp_path / "missing")) == {}
    settings = Settings.from_env({"REDMESSENGER_PKEY": "pk from env"}, dotenv=str(dotenv))
    assert (settings.url, settings.public_key, settings.secret_key) == ("ws://localhost:8080/rm", "pk from env", "sk")
    assert settings.redis_url == "redis://127.0.0.1:6379/0" and "sk" not in repr(settings)


def test_page_tags_escape_what_they_are_given() -> None:
    tags = page_tags(Settings(url="wss://rm.example.com/rm", public_key='p"k<'))
    assert tags.splitlines() == [
        '<meta name="redmessenger-url" content="wss://rm.example.com/rm">',
        '<meta name="redmessenger-pkey" content="p&quot;k&lt;">',
        '<script src="https://rm.example.com/redmessenger.js"></script>',
    ]
    from jinja2 import Environment
    from redmessenger_app.jinja import install

    environment = Environment(autoescape=True)
    install(environment, Settings(url="ws://h:1/rm"))
    assert environment.from_string("{{ redmessenger_tags() }}").render().startswith('<meta name="redmessenger-url"')


def test_the_django_template_tag_writes_the_tags_from_the_environment(monkeypatch: Any) -> None:
    import django
    from django.conf import settings

    monkeypatch.setenv("REDMESSENGER_URL", "wss://rm.example.com/rm")
    monkeypatch.setenv("REDMESSENGER_PKEY", "pk")
    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["redmessenger_app"],
            TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
        )
        django.setup()
    from django.template import engines

    html = engines["django"].from_string("<head>{% load redmessenger %}{% redmessenger_tags %}</head>").render({})
    assert html == "<head>" + page_tags(Settings(url="wss://rm.example.com/rm", public_key="pk")) + "</head>"


@pytest_twisted.ensureDeferred
async def test_the_twisted_library_in_the_reactor_answers_publishes_and_hears_clients(daemon_factory, redis_server, redis):
    from twisted.internet.defer import succeed

    from redmessenger_app import twisted as tx

    heard: list[tuple[Any, Any]] = []
    rm = tx.RedMessenger(settings_for(redis_server.port))

    @rm.on("subscription_request")
    def authorize(request: Any) -> Any:
        if request.channel == "async":
            async def later() -> None:
                await request.permit("read_only")

            return later()
        if request.channel == "closed":
            return succeed(None).addCallback(lambda _: request.deny("closed"))
        return request.permit()

    rm.subscribe("room", lambda message, sender: heard.append((message, sender.uid if sender else None)))
    rm.start()
    try:
        daemon = await daemon_factory()
        client = await session(daemon, "carol")
        assert (await client.subscribe("room"))["mode"] == "read_write"
        assert (await client.subscribe("async"))["mode"] == "read_only"
        reply = await client.subscribe("closed")
        assert error(reply) == "denied" and reply["error"]["reason"] == "closed"
        entry = await rm.publish_to_user("carol", {"from": "twisted"})
        [message] = await client.receive(1)
        assert (message["payload"], message["id"]) == ('{"from":"twisted"}', entry)
        await daemon.until(lambda: redis.execute_command("PUBSUB", "NUMSUB", "rm.client.channels.room")[1] == 1,
                           what="the library's subscriber")  # fmt: skip
        assert (await client.request("publish", channel="room", message=[1, 2]))["ok"] is True
        await daemon.until(lambda: heard == [([1, 2], "carol")], what="the callback")
    finally:
        await rm.stop()
