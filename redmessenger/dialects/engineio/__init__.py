"""Engine.IO 3 and 4 at ``/socket.io/``: packets, sessions, and their HTTP and WebSocket transports."""
