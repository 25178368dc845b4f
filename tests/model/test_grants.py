"""model.grants: minted and checked with the secret key; anything else is a BadGrant."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redmessenger.model.channels import Mode
from redmessenger.model.grants import (
    IDENTITY,
    SUBSCRIPTION,
    BadGrant,
    Grant,
    identity_grant,
    subscription_grant,
    verify,
)

from ..fuzzing import fuzz

SECRET = "s3cret"


def test_a_grant_reads_back_until_it_expires() -> None:
    token = subscription_grant(SECRET, "room", Mode.READ_ONLY, expires=1000, uid="alice")
    assert verify(SECRET, token, now=999.5) == Grant(SUBSCRIPTION, 1000, "alice", "room", Mode.READ_ONLY)
    with pytest.raises(BadGrant, match="expired"):
        verify(SECRET, token, now=1000)
    assert verify(SECRET, identity_grant(SECRET, "bob", 50), now=0) == Grant(IDENTITY, 50, "bob")
    assert verify(SECRET, subscription_grant(SECRET, "c", Mode.WRITE_ONLY, 9), 0).uid is None


def test_another_key_or_any_change_is_refused() -> None:
    token = subscription_grant(SECRET, "room", Mode.READ_ONLY, expires=1000)
    with pytest.raises(BadGrant, match="secret key"):
        verify("other", token, now=0)
    payload, signature = token.split(".")
    forged = subscription_grant("other", "room", Mode.READ_WRITE, expires=1000).split(".")[0]
    for bad in (forged + "." + signature, payload + "." + signature[:-1] + ("A" if signature[-1] != "A" else "B"),
                payload, payload + ".", "." + signature, "", "é." + signature, "x" * 2000):  # fmt: skip
        with pytest.raises(BadGrant):
            verify(SECRET, bad, now=0)
    for not_text in (None, 5, ["a"], b"bytes"):
        with pytest.raises(BadGrant):
            verify(SECRET, not_text, now=0)


@fuzz(300)
@given(st.text(max_size=80) | st.builds(lambda a, b: f"{a}.{b}", st.text("abcAB-_=", max_size=40), st.text("abc-_", max_size=45)))
def test_any_text_is_a_grant_of_ours_or_a_bad_grant(text: str) -> None:
    try:
        verify(SECRET, text, now=0)
    except BadGrant:
        return
    raise AssertionError(f"{text!r} was taken for a grant")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["k", "e", "u", "c", "m", "x"]), inner, max_size=5),
)


@fuzz(400)
@given(st.text("ABCDEFabcdef0123456789-_=", max_size=60) | json_values.map(lambda v: __import__("json").dumps(v)).map(
    lambda text: __import__("base64").urlsafe_b64encode(text.encode()).rstrip(b"=").decode()))  # fmt: skip
def test_a_signed_payload_of_anything_is_read_or_refused_as_a_bad_grant(payload: str) -> None:
    from redmessenger.model.grants import _signature

    token = f"{payload}.{_signature(SECRET, payload)}"
    try:
        grant = verify(SECRET, token, now=0)
    except BadGrant:
        return
    assert grant.kind in (SUBSCRIPTION, IDENTITY) and isinstance(grant.expires, int) and grant.expires > 0
