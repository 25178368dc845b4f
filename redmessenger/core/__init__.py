"""
The rules of delivery, with Deferreds and a clock only: no sockets, no Redis
client, no wire format.  The core reaches Redis and clients through the
interfaces in :mod:`redmessenger.core.ports`; the edges implement them.
"""
