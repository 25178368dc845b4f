"""
WebSocket and HTTP on the daemon's one port, for every dialect alike: frames,
the per-turn batching of writes, the registry of open sockets, HTTP routing;
and the fast path that reads Twisted's and Autobahn's internals
(:mod:`redmessenger.transport.fastpath`), the only module that does.
"""
