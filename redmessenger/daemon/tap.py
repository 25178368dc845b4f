"""
``twistd redmessenger``: command-line options and the service they make.

The configuration is read and checked here, before anything listens: a bad key
becomes a ``UsageError`` naming it, and twistd exits 1 with that message.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from redmessenger.daemon.config import Config, ConfigError, load_config
from redmessenger.ops.tuning import tune_garbage_collector


class Options(usage.Options):
    synopsis = "[-c etc/redmessenger.json]"
    longdesc = "Delivers Redis PUBLISHes to users' browsers over WebSocket; queues them in Redis while users are away."
    optParameters = [
        ["config", "c", "etc/redmessenger.json", "Path of the JSON configuration file."],
    ]

    def postOptions(self) -> None:
        try:
            self["parsed"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"configuration: {e}") from None


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as installed

        reactor = installed
    from redmessenger.daemon.service import RedMessengerService
    from redmessenger.logs import set_level

    config: Config = options["parsed"]
    set_level(config.log_level)
    service = RedMessengerService(config, reactor)
    service.config_path = options["config"]  # SIGHUP re-reads it (redmessenger.daemon.reload)
    tune_garbage_collector(reactor)
    return service
