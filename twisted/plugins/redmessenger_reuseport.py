"""The ``reuseport:`` server endpoint string (redmessenger/transport/reuseport.py)."""

from typing import Any

from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    prefix = "reuseport"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from redmessenger.transport.reuseport import parse

        return parse(reactor, *args, **kwargs)


reusePort = ReusePortParser()
