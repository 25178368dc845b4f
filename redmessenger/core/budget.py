"""
Bounded memory (SPEC §10): what the daemon holds for sockets that have not
confirmed it, per socket and in all.

Every live message written to a socket (or held for it during a handover)
stays in memory until the client confirms it; a client that stops reading (a
frozen laptop, a hostile peer) would otherwise make the daemon hold all it is
sent.  Each such message counts its weight (:attr:`Message.weight`, about its
size) against its socket's ``max_pending_bytes`` and the daemon's
``memory_budget_bytes``.  A socket past its own limit, or one holding a
noticeable share while the daemon is past its budget, is given up: closed with
``TOO_SLOW`` (4413), and what it did not confirm goes to the user's other
sockets or back to the queue, in order.
"""

from __future__ import annotations

from redmessenger.core.presence import Attachment
from redmessenger.logs import make_logger

#: Past the budget, sockets holding more than this share of their own limit are given up.
SLOW_SHARE = 8


class Budget:
    """
    Bytes sent (or held) and not confirmed, per socket (``Attachment.pending_bytes``)
    and in all (:attr:`used`).  Delivery counts what it sends (inline: once per
    delivery) and calls :meth:`over` for a socket past its share.
    """

    log = make_logger()

    def __init__(self, per_socket: int, total: int) -> None:
        self.per_socket = per_socket
        self.total = total
        self.used = 0
        #: Sockets given up because the daemon was past its budget (not their own limit), since start.
        self.bites = 0
        self._biting = False

    def charge(self, attachment: Attachment, weight: int) -> bool:
        """A message is held for the socket: count it; whether the socket is now past its share."""
        pending = attachment.pending_bytes = attachment.pending_bytes + weight
        self.used += weight
        return pending > self.per_socket or (self.used > self.total and pending > self.per_socket // SLOW_SHARE)

    def over(self, attachment: Attachment) -> None:
        """A socket is past its share: count it if the daemon's budget is why, and say so once."""
        if attachment.pending_bytes > self.per_socket:
            return
        self.bites += 1
        if not self._biting:
            self._biting = True
            self.log.warn(
                "Memory budget reached: {used} bytes sent to sockets and not confirmed (memory_budget_bytes "
                "{total}); closing the slowest sockets (those holding over {floor} bytes)",
                used=self.used,
                total=self.total,
                floor=self.per_socket // SLOW_SHARE,
            )

    def give_back(self, attachment: Attachment, weight: int) -> None:
        """Confirmed, delivered elsewhere or queued: no longer held for this socket."""
        attachment.pending_bytes -= weight
        self.used -= weight
        if self._biting and self.used <= self.total * 9 // 10:
            self._biting = False
            self.log.info("Back under the memory budget: {used} bytes held for sockets", used=self.used)
