"""
Kept for systemd units installed by RedMessenger 1.x, which name
``--logger=redmessenger.system.journal_observer``; the shipped unit names
:func:`redmessenger.ops.journal.journal_observer`.
"""

from redmessenger.ops.journal import journal_observer

__all__ = ["journal_observer"]
