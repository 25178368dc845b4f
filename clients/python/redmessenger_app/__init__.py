"""
RedMessenger for Python applications (SPEC §8): publish to channels and users
through the durable intake, answer clients' subscription requests, mint grants,
write a page's tags.  Three flavours over one protocol module:

- :mod:`redmessenger_app.blocking`: WSGI apps (Django, Flask) and scripts, on valkey-py;
- :mod:`redmessenger_app.aio`: asyncio apps, on valkey-py's asyncio client;
- :mod:`redmessenger_app.twisted`: Twisted apps, on txredisapi.

Importing this package imports no Redis client, no Twisted, no Autobahn.
"""

from redmessenger_app.protocol import (
    Sender,
    Settings,
    SubscriptionRequest,
    identity_grant,
    page_tags,
    subscription_grant,
)

__version__ = "0.1.0"
__all__ = ["Sender", "Settings", "SubscriptionRequest", "identity_grant", "page_tags", "subscription_grant"]
