"""core.ownership: rendezvous hashing, as docs/scale-out.md uses it."""

from __future__ import annotations

from collections import Counter

from redmessenger.core.ownership import Owners, owner, weight

UIDS = [f"user{n}" for n in range(6000)]


def test_every_process_computes_the_same_owner() -> None:
    assert weight("node-a", "alice") == 0x32d0796f7de9ed38, "pinned: blake2b, never Python's per-process hash()"
    nodes = ["node-a", "node-b", "node-c"]
    assert owner("alice", nodes) == owner("alice", list(reversed(nodes))), "the order of the list does not matter"
    assert owner("alice", []) is None
    assert owner("alice", ["only"]) == "only"


def test_users_spread_evenly_and_only_a_leaving_nodes_users_move() -> None:
    nodes = [f"node-{n}" for n in range(4)]
    before = {uid: owner(uid, nodes) for uid in UIDS}
    counts = Counter(before.values())
    assert all(1300 <= count <= 1700 for count in counts.values()), counts  # 1500 each, give or take
    after = {uid: owner(uid, nodes[:3]) for uid in UIDS}  # node-3 leaves
    moved = [uid for uid in UIDS if before[uid] != after[uid]]
    assert all(before[uid] == "node-3" for uid in moved), "only the users of the node that left move"
    assert len(moved) == counts["node-3"]
    joined = {uid: owner(uid, nodes + ["node-4"]) for uid in UIDS}
    assert all(joined[uid] in (before[uid], "node-4") for uid in UIDS), "a new node only takes users"


def test_a_nodes_view_answers_as_hashing_does_and_forgets_when_the_nodes_change() -> None:
    view = Owners("node-a", remembered=1000)
    assert view.elsewhere("alice") is None, "knowing no node yet, this node owns every key"
    view.set_nodes(["node-a"])
    assert view.elsewhere("alice") is None
    view.set_nodes(["node-b"])  # this node not listed (its heartbeat entry expired): the other owns all
    assert view.elsewhere("alice") == "node-b"
    nodes = ["node-a", "node-b", "node-c"]
    view.set_nodes(nodes)
    for _ in range(2):  # computed, then remembered: the same answers
        assert [view.elsewhere(uid) for uid in UIDS] == [
            None if owner(uid, nodes) == "node-a" else owner(uid, nodes) for uid in UIDS
        ]
    view.set_nodes(["node-c", "node-a"])  # node-b left: what was remembered is forgotten
    assert [view.elsewhere(uid) for uid in UIDS] == [
        None if owner(uid, ["node-a", "node-c"]) == "node-a" else "node-c" for uid in UIDS
    ]
    assert len(view._known) <= 1000, "it remembers a bounded number of keys"


def test_a_node_is_listed_from_its_join_to_its_leave_but_the_last_one_goes_on_acting() -> None:
    view = Owners("node-a")
    assert not view.listed, "before its first heartbeat is heard, the users are the others'"
    view.set_nodes([])
    assert not view.listed
    view.set_nodes(["node-a", "node-b"])
    assert view.listed
    view.set_nodes(["node-b"])
    assert not view.listed and view.elsewhere("alice") == "node-b", "left: node-b acts for every user"
    view.set_nodes(["node-a"])
    view.set_nodes([])
    assert view.listed and view.elsewhere("alice") is None, "the last to leave acts until it unsubscribes"
