"""
The Redis side, on txredisapi: the link (a pub/sub subscriber and one command
connection), users' queues, the directory of user keys and group members, the
Lua scripts, and the embedded valkey-server.  It implements the core's ports
(:mod:`redmessenger.core.ports`) and translates txredisapi's failures into the
core's exceptions.
"""
