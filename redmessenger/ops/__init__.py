"""
What operators see of a running daemon: ``/health``, ``/metrics``, the telnet
manhole and its ``status()``, the journal's log format, and the host tuning the
daemon does at start.  Everything here reads the daemon through
:class:`~redmessenger.ops.status.DaemonView`, a narrow read-only view the wiring
builds; nothing here reaches into the service itself.
"""
