"""The plain WebSocket dialect at ``rm_route`` (docs/protocol.md)."""
