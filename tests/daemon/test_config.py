"""The configuration: defaults, the seed's file, and a clear error naming the key for anything wrong."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from redmessenger.daemon.config import Config, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_node_programs_where_it_had_them() -> None:
    config = parse_config({})
    assert (config.ws_port, config.rm_route, config.queue_expiry, config.secure_mode) == (8080, "/rm", 604800, False)
    assert config.listen_endpoint == "tcp:8080:backlog=1024"


def test_max_payload_bytes_is_a_generous_mebibyte_unless_set() -> None:
    assert parse_config({}).max_payload_bytes == 1048576
    assert parse_config({"max_payload_bytes": 65536}).max_payload_bytes == 65536


def test_the_nodejs_config_file_loads_unchanged(tmp_path: Path) -> None:
    seed = {
        "redis_host": "nm-hackathon", "redis_port": 6379, "ws_port": 8080, "secure_mode": True,
        "rm_route": "/rm", "queue_expiry": 604800, "conn_limit": 6, "cluster": {"enabled": True, "max_threads": 2},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(seed))
    config = load_config(path)
    assert config.redis_host == "nm-hackathon" and config.secure_mode and config.conn_limit == 6


def test_the_shipped_config_is_valid() -> None:
    config = load_config(ROOT / "etc" / "redmessenger.json")
    assert isinstance(config, Config) and config.embedded_redis


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"redis_prot": 6379}, "redis_prot"),
        ({"redis_port": "6379"}, "redis_port"),
        ({"redis_port": 70000}, "redis_port"),
        ({"ws_port": True}, "ws_port"),
        ({"secure_mode": "yes"}, "secure_mode"),
        ({"rm_route": "rm"}, "rm_route"),
        ({"rm_route": "/rm/"}, "rm_route"),
        ({"rm_route": "/socket.io"}, "rm_route"),
        ({"queue_expiry": 0}, "queue_expiry"),
        ({"conn_limit": -1}, "conn_limit"),
        ({"listen": "tcp:notaport"}, "listen"),
        ({"listen": "bogus:1"}, "listen"),
        ({"allowed_origins": "*"}, "allowed_origins"),
        ({"identify_timeout": 0}, "identify_timeout"),
        ({"max_frame_bytes": 10}, "max_frame_bytes"),
        ({"user_socket_limit": 0}, "user_socket_limit"),
        ({"queue_max_length": 0}, "queue_max_length"),
        ({"max_payload_bytes": 0}, "max_payload_bytes"),
        ({"max_payload_bytes": "1MB"}, "max_payload_bytes"),
        ({"max_payload_bytes": None}, "max_payload_bytes"),
        ({"max_payload_bytes": 512 * 1024 * 1024 + 1}, "max_payload_bytes"),
        ({"log_level": "loud"}, "log_level"),
        ({"redis_db": 99}, "redis_db"),
        ({"embedded_redis": True, "redis_host": "10.0.0.5"}, "redis_host"),
        ({"redis_username": "u"}, "redis_username"),
        ({"redis_sentinels": "10.0.0.5:26379"}, "redis_sentinels"),
        ({"redis_sentinels": ["10.0.0.5"]}, "redis_sentinels"),
        ({"redis_sentinels": ["10.0.0.5:0"]}, "redis_sentinels"),
        ({"redis_sentinels": [26379]}, "redis_sentinels"),
        ({"redis_sentinels": ["127.0.0.1:26379"], "embedded_redis": True}, "redis_sentinels"),
        ({"redis_sentinel_master": ""}, "redis_sentinel_master"),
        ({"redis_probe_interval": -1}, "redis_probe_interval"),
        # combinations that could never work
        ({"embedded_redis": True, "redis_username": "ops", "redis_password": "s3cret"}, "redis_username"),
        ({"embedded_redis": True, "redis_tls": True}, "redis_tls"),
        ({"demo": True, "rm_route": "/demo"}, "rm_route"),
    ],
)
def test_a_bad_value_is_an_error_that_names_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(raw)
    assert str(raised.value).startswith(key + ":")


def test_the_embedded_server_takes_its_default_user_and_the_demo_another_route() -> None:
    config = parse_config({"embedded_redis": True, "redis_username": "default", "redis_password": "s3cret"})
    assert config.redis_username == "default"  # AUTH default <requirepass> works
    assert parse_config({"demo": True, "rm_route": "/chat"}).rm_route == "/chat"
    assert parse_config({"rm_route": "/demo"}).rm_route == "/demo", "without the demo, /demo is free"


SECONDS_KEYS = [f.name for f in fields(Config) if f.type == "float"]


def test_every_number_key_is_checked_for_finiteness() -> None:
    assert {"ping_interval", "redis_timeout", "identify_timeout", "subscription_timeout"} <= set(SECONDS_KEYS)


@pytest.mark.parametrize("key", SECONDS_KEYS)
@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_number_that_is_not_finite_is_refused(key: str, text: str, tmp_path: Path) -> None:
    """Python's JSON reads NaN, Infinity and 1e999 (as inf): none is a duration or a rate."""
    path = tmp_path / "config.json"
    path.write_text(f'{{"{key}": {text}}}')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value).startswith(f"{key}: expected a number"), raised.value


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b'{"rm_route": "/r\xe9"}')  # Latin-1, as an editor may save it
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == f"{path}: not UTF-8 text: byte 0xe9 at offset 16"


def test_not_json_and_not_an_object_are_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{ nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="JSON object"):
        parse_config([1, 2])


def test_the_shipped_config_listens_on_loopback_only() -> None:
    config = load_config(ROOT / "etc" / "redmessenger.json")
    assert config.listen_endpoint == "tcp:8080:backlog=1024:interface=127.0.0.1"
    assert config.listen_label == "127.0.0.1:8080"
    assert not config.open_to_anyone


@pytest.mark.parametrize(
    "raw, open_to_anyone",
    [
        ({}, True),  # every interface, as the Node.js program did
        ({"secure_mode": True}, False),
        ({"ws_interface": "127.0.0.1"}, False),
        ({"ws_interface": "::1"}, False),
        ({"ws_interface": "10.0.0.7"}, True),
        ({"listen": "tcp:8080:interface=127.0.0.1"}, False),
        ({"listen": "tcp:8080"}, True),
        ({"listen": "unix:/run/redmessenger.sock"}, False),
    ],
)
def test_open_to_anyone_means_beyond_loopback_without_keys(raw: dict, open_to_anyone: bool) -> None:
    assert parse_config(raw).open_to_anyone is open_to_anyone


@pytest.mark.parametrize("value", ["example.com", 127, "127.0.0.1:80", None])
def test_ws_interface_is_an_address(value: object) -> None:
    with pytest.raises(ConfigError, match="ws_interface"):
        parse_config({"ws_interface": value})


@pytest.mark.parametrize(
    "key, suggestion",
    [("redis_prot", "redis_port"), ("ws-port", "ws_port"), ("Secure_Mode", "secure_mode"), ("queue_expiery", "queue_expiry")],
)
def test_a_misspelt_key_gets_a_did_you_mean(key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({key: 1})
    assert str(raised.value) == f"{key}: unknown configuration key; did you mean {suggestion}?"


def test_a_key_like_no_other_lists_the_known_keys() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"frobnicate": 1})
    message = str(raised.value)
    assert message.startswith("frobnicate: unknown configuration key (known keys: allowed_origins, ")
    assert "did you mean" not in message and "\n" not in message


def test_sentinels_are_read_as_addresses_and_their_password_is_kept_out_of_the_repr() -> None:
    from redmessenger.daemon.settings import redis_settings

    config = parse_config(
        {"redis_sentinels": ["10.0.0.5:26379", "[::1]:26380"], "redis_sentinel_master": "main", "redis_sentinel_password": "s3cret"}
    )
    assert config.redis_sentinels == (("10.0.0.5", 26379), ("::1", 26380))
    assert "s3cret" not in repr(config)
    settings = redis_settings(config)
    assert settings.sentinel is not None and settings.sentinel.master_name == "main" and settings.sentinel.password == "s3cret"
    assert settings.describe() == "master 'main' of the sentinels 10.0.0.5:26379,::1:26380"
    assert redis_settings(parse_config({})).sentinel is None


def test_ws_reuse_port_listens_with_so_reuseport_and_the_node_id_can_come_from_the_environment(monkeypatch) -> None:
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    from redmessenger.transport.reuseport import ReusePortEndpoint

    config = parse_config({"ws_reuse_port": True, "ws_port": 8090, "ws_interface": "127.0.0.1"})
    assert config.listen_endpoint == "reuseport:8090:backlog=1024:interface=127.0.0.1"
    assert isinstance(serverFromString(MemoryReactor(), config.listen_endpoint), ReusePortEndpoint)
    assert not config.open_to_anyone, "the exposure check reads the reuseport endpoint's interface too"
    assert parse_config({"ws_reuse_port": True}).open_to_anyone
    assert parse_config({}).listen_endpoint.startswith("tcp:8080:")
    monkeypatch.setenv("REDMESSENGER_NODE_ID", "web1-3")
    assert parse_config({}).consumer_name == "web1-3"
    assert parse_config({"node_id": "from-the-file"}).consumer_name == "from-the-file", "the file wins"
