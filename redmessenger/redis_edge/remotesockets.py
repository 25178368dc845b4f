"""
On the owner of a user (docs/scale-out.md): the sockets of its users that other
nodes hold, each a :class:`RemoteSink` in the core's presence (redis_edge/remote.py).
Their holders attach them (``attach``, answered ``attached``) and detach them
(``detach``); the inbox's reader (redis_edge/peers.py) gives their acks and the
answers to confirmation requests to the attachments and sinks kept here.  A
socket whose node, or the run of its node that held it, is gone is as if closed
unconfirmed; a node gone from the list may be alive still (its heartbeat late):
it is told (``dropped``), and attaches the socket again (redis_edge/relays.py).
An attach is answered ``attached``, with ``f`` if the socket was not known here
(its deliveries are numbered from 1 again).  An ``abandon`` is sent again until
the holder detaches the socket.

Socket ids are ``{run}.{n}``: the first part tells a node's runs apart.
"""

from __future__ import annotations

from redmessenger.core.hub import Hub
from redmessenger.core.ownership import Owners
from redmessenger.core.presence import Attachment
from redmessenger.model.errors import ClientError, CloseCode
from redmessenger.redis_edge.remote import Outbox, RemoteSink


class RemoteSockets:
    """The sockets other nodes hold for users this node owns, by (node, sid)."""

    def __init__(self, outbox: Outbox, hub: Hub, owners: Owners) -> None:
        self._outbox = outbox
        self._hub = hub
        self._owners = owners
        #: The sockets by (node, sid) (never rebound: the inbox's reader reads it).
        self.by_key: dict[tuple[str, str], tuple[Attachment, RemoteSink]] = {}
        #: The run each node's sockets here were attached by (an attach from another run: restarted).
        self._runs: dict[str, str] = {}

    def attach(self, node: str, sid: str, uid: str, acknowledges: bool, address: str) -> None:
        """``node`` holds the socket ``sid`` of ``uid``: attached here, and answered."""
        if (node, sid) in self.by_key:  # sent again (the answer was lost, or late), or its node may think it dropped
            self._outbox.send(node, b"attached", s=sid, f=b"0")  # known here: f says so (an owner before said nothing)
            return
        run = run_of(sid)
        if self._runs.get(node, run) != run:
            # The node was killed and started again, and this came before the change said so: its previous run's
            # sockets are gone.
            for key in [key for key in self.by_key if key[0] == node and run_of(key[1]) != run]:
                self.gone(key)
        self._runs[node] = run
        sink = RemoteSink(self._outbox, node, sid, acknowledges, address)
        if self._owners.elsewhere(uid) is not None:
            # not ours (the nodes changed meanwhile): its node will attach it to the right owner
            sink.abandon(ClientError(CloseCode.TRY_AGAIN_LATER, "the daemons sharing the Redis changed; reconnect"))
            return
        try:
            attachment = self._hub.attach_remote(uid, sink, via=node)
        except ClientError as e:
            sink.abandon(e)
            return
        self.by_key[(node, sid)] = (attachment, sink)
        self._outbox.send(node, b"attached", s=sid, f=b"1")  # new here: its deliveries are numbered from 1

    def detach(self, node: str, sid: str, received_all: bool, read: frozenset[str] = frozenset()) -> None:
        """
        ``node`` no longer holds the socket ``sid`` (``received_all``: what arrived there, its client read, from a
        holder of a version before ``read``; ``read``: the ids of the messages its client read, after a clean close).
        """
        found = self.by_key.pop((node, sid), None)
        if found is not None:
            found[1].close()
            self._hub.detach(found[0], received_all=received_all, read=read)

    def gone(self, key: tuple[str, str]) -> None:
        """The socket is gone with its node: as if closed unconfirmed."""
        attachment, sink = self.by_key.pop(key)
        sink.close()
        self._hub.detach(attachment)

    def nodes_changed(self, restarted: str | None, run: str) -> None:
        """
        The nodes changed: a socket given away (its user moved) is forgotten, its
        node attaches it to the new owner; one whose node is gone, or was held by
        the ``restarted`` node's previous run (``run``: its new one), is gone.
        """
        for key, (attachment, sink) in list(self.by_key.items()):
            node, sid = key
            if not attachment.attached and sink.abandoned is None:  # given away: its node attaches it to the new owner
                del self.by_key[key]
                sink.close()
            elif node not in self._owners.nodes:
                self.gone(key)  # its node is gone: as if closed unconfirmed
                # It may be alive (its heartbeat late, its subscription down): told, it attaches the socket again
                # (closes it, if given up here).  Once it is back in the list, it attaches them all again anyway.
                if sink.abandoned is not None:
                    sink.abandon_again()
                elif self._owners.elsewhere(attachment.uid) is None:
                    self._outbox.send(node, b"dropped", s=sid)
            elif node == restarted and run_of(sid) != run:
                self.gone(key)  # the run that held it is gone: as if closed unconfirmed

    def ask_again(self) -> int:
        """The confirmation requests and the abandons unanswered since the last call, sent again; how many."""
        resent = 0
        for key, (_attachment, sink) in list(self.by_key.items()):
            resent += sink.ask_again()
            if sink.spent:  # never answered (a holder of a version before the answer): forgotten
                del self.by_key[key]
        return resent


def run_of(sid: str) -> str:
    """The run of the node that holds the socket ``sid`` (redis_edge/relays.py makes the ids)."""
    return sid.partition(".")[0]
