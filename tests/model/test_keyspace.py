"""The Redis names of SPEC §1, spelled in one place."""

from __future__ import annotations

from redmessenger.model import keyspace


def test_the_node_js_names() -> None:
    assert keyspace.queue_key("user1") == "rm:users:user1:messages"
    assert keyspace.user_key_key("user1") == "rm:users:user1:key"
    assert keyspace.members_key("cats") == "rm:channels:cats:subscribers"
    assert keyspace.user_channel("user1") == "rm.users.user1"
    assert keyspace.SUBSCRIPTION_PATTERNS[:2] == [b"rm.users.*", b"rm.channels.*"]
    # what clients publish on channels (SPEC §7.4), written by daemons only
    assert keyspace.SUBSCRIPTION_PATTERNS[2:] == [b"rm.client.channels.*"]


def test_uid_of_queue_key_reverses_queue_key() -> None:
    assert keyspace.uid_of_queue_key(keyspace.queue_key("a.b@c").encode()) == "a.b@c"
    assert keyspace.uid_of_queue_key("something:else") == "something:else"


def test_valid_name_takes_the_uid_grammar_only() -> None:
    assert keyspace.valid_name(b"user-1") == "user-1"
    assert keyspace.valid_name(b"") is None
    assert keyspace.valid_name("é".encode()) is None
    assert keyspace.valid_name(b"\xff") is None
    assert keyspace.valid_name(b"a" * 129) is None
