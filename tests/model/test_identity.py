"""Identifiers (SPEC §4): ``uid``, ``uid:`` or ``uid:key``, and what a bad one is told."""

from __future__ import annotations

import pytest

from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.model.identity import parse_identifier


def test_identifier_repr_hides_the_key() -> None:
    ident = parse_identifier("user1:hunter2")
    assert ident.uid == "user1" and ident.key == "hunter2"
    assert "hunter2" not in repr(ident)
    assert parse_identifier("user1:").key is None
    assert parse_identifier("user1").key is None
    assert parse_identifier("user1:a:b").key == "a:b"


@pytest.mark.parametrize("uid", ["", "a b", "é", "x" * 129, "a/b", "{json}"])
def test_a_bad_uid_is_refused_with_4400(uid: str) -> None:
    with pytest.raises(ClientError) as refused:
        parse_identifier(uid + ":key")
    assert refused.value.code is CloseCode.INVALID_IDENTIFIER
    assert "invalid uid" in refused.value.reason


def test_the_refusal_shows_at_most_40_characters_of_a_long_uid() -> None:
    with pytest.raises(ClientError) as refused:
        parse_identifier("é" * 300)
    assert "é" * 40 + "..." in refused.value.reason
    assert "é" * 41 not in refused.value.reason


@pytest.mark.parametrize("uid", ["a", "user_1", "x" * 128, "a.b@c-d"])
def test_good_uids_pass(uid: str) -> None:
    assert parse_identifier(uid).uid == uid


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_one_line_end_after_the_identifier_is_not_part_of_it(line_end: str) -> None:
    # websocat and other terminal clients send the Enter that ends the typed line (issue 12)
    assert parse_identifier("user1" + line_end).uid == "user1"
    ident = parse_identifier("user1:s3cret" + line_end)
    assert (ident.uid, ident.key) == ("user1", "s3cret")
    assert parse_identifier("user1:" + line_end).key is None


@pytest.mark.parametrize("text", ["user1\n\n", "user1\r", " user1\n", "user1 \n", "user1\t", "user1\n:key"])
def test_other_whitespace_is_still_a_bad_uid(text: str) -> None:
    with pytest.raises(ClientError) as refused:
        parse_identifier(text)
    assert refused.value.code is CloseCode.INVALID_IDENTIFIER
