"""
Kept for systemd units installed by RedMessenger 1.x, which run
``python -m redmessenger.plugincache``; the shipped unit runs
``python -m redmessenger.daemon.plugincache``.
"""

import sys

from redmessenger.daemon.plugincache import main

if __name__ == "__main__":
    sys.exit(main())
