"""Totals since start, kept by the core and read by operators (status, /metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Counters:
    """What the core has done since start; plain integers, incremented on the reactor thread."""

    published: int = 0
    delivered: int = 0
    queued: int = 0
    handed_over: int = 0
    #: Messages not delivered because their payload exceeded max_payload_bytes (kept aside in Redis).
    oversize: int = 0
    #: Entries read from the durable intake stream, and acknowledged there once safe.
    intake: int = 0
    intake_acked: int = 0
    identified: int = 0
    #: Version-1 sessions admitted without a uid (channels only).
    anonymous: int = 0
    #: Subscription requests (SPEC §7): granted by the application, denied (by it, or by default), of
    #: which timed out; and messages clients published on channels.
    subscriptions_permitted: int = 0
    subscriptions_denied: int = 0
    subscriptions_timed_out: int = 0
    #: Subscriptions granted by a grant the client presented (no request to the application).
    subscriptions_by_grant: int = 0
    client_publishes: int = 0
    #: Sockets refused or closed for a client mistake, by CloseCode name.
    refused: dict[str, int] = field(default_factory=dict)

    def refusal(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
