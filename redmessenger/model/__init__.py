"""
The contract, with no Twisted and no I/O: Redis key and channel names, the
envelope and queue entries, client identifiers, and what a client is told when
it makes a mistake.  Everything else imports from here; this imports nothing
of RedMessenger's.
"""
