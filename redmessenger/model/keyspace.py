"""
Every Redis key and pub/sub channel name RedMessenger reads or writes, and the
grammar of the names in them (SPEC §1): the one place they are spelled out.

They are the Node.js RedMessenger's, so that either program can take over the
other's data.
"""

from __future__ import annotations

import re
from functools import lru_cache

#: A uid or a group id: 1-128 letters, digits and ``_-.@`` (SPEC §4).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,128}")

#: PUBLISH here delivers to user ``$uid``.
USER_CHANNEL_PREFIX = b"rm.users."
#: PUBLISH here delivers to every member of group ``$cid``.
GROUP_CHANNEL_PREFIX = b"rm.channels."
#: The ``source`` of a group message starts with this (the channel's prefix, as text).
GROUP_SOURCE_PREFIX = GROUP_CHANNEL_PREFIX.decode("ascii")
#: A client's publish on channel ``$cid`` (SPEC §7.4), as a daemon writes it: a JSON object naming the sender.
CLIENT_CHANNEL_PREFIX = b"rm.client.channels."
#: What the daemon subscribes to (PSUBSCRIBE).
SUBSCRIPTION_PATTERNS = [USER_CHANNEL_PREFIX + b"*", GROUP_CHANNEL_PREFIX + b"*", CLIENT_CHANNEL_PREFIX + b"*"]

#: The live daemons (docs/scale-out.md): a sorted set of node ids scored with their expiry (Redis time).
NODES_KEY = "rm:nodes"
#: A hash: each live node's open sockets, as of its last heartbeat.
NODES_SOCKETS_KEY = "rm:nodes:sockets"
#: Where the heartbeat script publishes the live nodes whenever they change (JSON, redis_edge/scripts.py): every
#: daemon hears it at the same place among the PUBLISHes, and the users' owners change there (docs/scale-out.md).
NODES_CHANNEL = b"rm.nodes"
#: A counter: the number of the last change of the live nodes (its ``epoch``).
NODES_EPOCH_KEY = "rm:nodes:epoch"
#: A hash: each live node's run (a random id per start), to tell a node killed and started again at once.
NODES_RUNS_KEY = "rm:nodes:runs"
#: A random secret the heartbeat script signs each change on ``rm.nodes`` with (the first daemon's to beat sets it):
#: a change heard without its signature is not taken, so that a publisher's message on ``rm.nodes`` moves no user.
NODES_SECRET_KEY = "rm:nodes:secret"


def inbox_key(node_id: str) -> str:
    """A node's inbox (docs/scale-out.md): a stream the other nodes write to and this node alone reads."""
    return f"rm:nodes:{node_id}:inbox"

#: Subscription requests to the application (SPEC §7.1): a stream its workers read through a consumer group.
REQUESTS_STREAM = "rm:requests"
#: Requests kept in the stream at most (older ones are trimmed; each has a deadline long past).
REQUESTS_MAXLEN = 10000

#: Matches every user's queue (the manhole's SCAN for the longest queues).
QUEUE_KEY_PATTERN = b"rm:users:*:messages"


def user_channel(uid: str) -> str:
    """``rm.users.$uid``: the ``source`` of a message published to one user."""
    return f"rm.users.{uid}"


def group_channel(cid: str) -> str:
    """``rm.channels.$cid``: the ``source`` of a message on channel (group) ``$cid``."""
    return f"rm.channels.{cid}"


def client_channel(cid: str) -> str:
    """``rm.client.channels.$cid``: where a daemon publishes what a client publishes on ``$cid``."""
    return f"rm.client.channels.{cid}"


def answers_channel(run: str) -> str:
    """``rm.answers.$run``: where the application answers one daemon's subscription requests."""
    return f"rm.answers.{run}"


def queue_key(uid: str) -> str:
    """``rm:users:$uid:messages``: the user's queue of undelivered messages, oldest first."""
    return f"rm:users:{uid}:messages"


def user_key_key(uid: str) -> str:
    """``rm:users:$uid:key``: the user's secret, checked in ``secure_mode``."""
    return f"rm:users:{uid}:key"


def members_key(cid: str) -> str:
    """``rm:channels:$cid:subscribers``: the uids of group ``$cid`` (kept by the application)."""
    return f"rm:channels:{cid}:subscribers"


def oversize_key(channel: str) -> str:
    """
    ``rm:oversize:$channel``: messages published on ``channel`` with a payload larger
    than ``max_payload_bytes``, kept aside (not delivered), oldest first, as published.
    """
    return f"rm:oversize:{channel}"


def uid_of_queue_key(key: bytes | str) -> str:
    """The uid in ``rm:users:$uid:messages`` (the key as it is if it is not one)."""
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    if text.startswith("rm:users:") and text.endswith(":messages"):
        return text[len("rm:users:") : -len(":messages")]
    return text


@lru_cache(maxsize=16384)  # once per member of a group, per message: the same names again and again
def valid_name(raw: bytes) -> str | None:
    """A uid or group id from a channel name or a set member, if it is one."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if NAME_PATTERN.fullmatch(text) else None

#: The durable intake: a stream the application XADDs to (``channel``, ``payload`` fields),
#: read by the daemons' consumer group (SPEC §10, docs/protocol.md *The durable intake*).
INTAKE_STREAM = "rm:intake"
INTAKE_GROUP = "redmessenger"
#: Intake entries that cannot be delivered (no channel, a channel that is not RedMessenger's): kept here, as JSON.
INTAKE_INVALID = "rm:intake:invalid"
