"""
The wire dialects a client can speak, each a thin codec and adapter over the
core's client session (:class:`~redmessenger.core.sessions.ClientSession`):
``plain`` (one envelope per WebSocket text frame), ``engineio`` (Engine.IO 3
and 4 sessions over polling and WebSocket) and ``socketio`` (Socket.IO 4 and 5
on top of Engine.IO).
"""
