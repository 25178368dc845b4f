"""Socket.IO 4 and 5 over Engine.IO: the seeds' browser client, unchanged (docs/protocol.md)."""
