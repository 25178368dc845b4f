"""
Engine.IO 3 and 4 at ``/socket.io/``: packets (codec.py), sessions (session.py, receipts.py),
and their HTTP and WebSocket transports (transports.py).

The protocol as this server speaks it (path ``/socket.io/``; ``EIO=3`` or ``EIO=4``):

1. **Handshake.**  ``GET ?EIO=N&transport=polling`` (or a WebSocket at
   ``?EIO=N&transport=websocket``) opens a session: the first packet is
   ``0{"sid":...,"upgrades":[...],"pingInterval":ms,"pingTimeout":ms}``
   (revision 4 adds ``"maxPayload"``).  Refused with HTTP 503 when ``conn_limit``
   clients are connected, 403 for an Origin not in ``allowed_origins``, 400 (JSON
   ``{"code":N,"message":...}``) for a bad query.
2. **Polling.**  ``GET ?sid=`` waits until packets are buffered and returns them as
   one payload; ``POST ?sid=`` carries the client's packets and is answered ``ok``.
   One GET at a time: a second one is refused with 400 and ends the session.  A
   pending GET whose connection drops ends the session (the client is gone).
   With revision 3, ``j=N`` asks for JSONP.  A client that posts while more than
   ``max_buffered_bytes`` wait for its polls is too slow: the layer above ends the
   session (Socket.IO: 4413, as the core gives up a slow socket).
3. **Upgrade.**  The client opens a WebSocket with its ``sid`` and sends ``2probe``;
   the server answers ``3probe`` and releases the pending GET with a ``6`` (noop),
   as it answers at once any GET that comes until the upgrade;
   the client sends ``5`` and from then on everything goes over the WebSocket,
   starting with whatever was buffered.  No ``5`` within ``upgrade_timeout`` closes
   the probe; the session stays on polling.
4. **Heartbeat.**  Revision 4: the server sends ``2`` every ``pingInterval`` and
   expects ``3`` within ``pingTimeout``; only a pong to a ping the client was sent
   counts, and a ping from the client ends the session, as engine.io ends it
   ("invalid heartbeat direction").  Revision 3: the client sends ``2`` every
   ``pingInterval``, the server answers ``3`` (at most one pong waits for a poll), and
   a session that does not poll (on a WebSocket: sends nothing) for
   ``pingInterval + pingTimeout`` is over.  Either way a silent client is timed out.
5. **Close.**  ``1`` from the client, a heartbeat timeout, a lost transport or a
   protocol error ends the session; the server ends one by sending ``1`` (polling)
   or closing the WebSocket.
"""
