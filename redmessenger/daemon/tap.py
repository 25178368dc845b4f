"""
``twistd redmessenger``: command-line options and the service they make.

The configuration is read and checked here, before anything listens: a bad key
stops twistd with one line naming the file and the key, and exit status 1.
A start that fails later (a port in use, the embedded server exiting) is also
one line and exit status 1 (:func:`exit_once_stopped`).
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import signal
import sys
from dataclasses import fields
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from redmessenger import __version__
from redmessenger.daemon.config import Config, ConfigError, load_config
from redmessenger.ops.tuning import tune_garbage_collector


class Options(usage.Options):
    synopsis = "[-c etc/redmessenger.json]"
    longdesc = "Delivers Redis PUBLISHes to users' browsers over WebSocket; queues them in Redis while users are away."
    optParameters = [
        ["config", "c", "etc/redmessenger.json", "Path of the JSON configuration file."],
    ]

    def opt_version(self) -> None:
        """Display RedMessenger's version and exit."""
        import twisted

        print(f"RedMessenger {__version__} (Twisted {twisted.__version__}, Python {platform.python_version()})")
        raise SystemExit(0)

    def getUsage(self, width: int | None = None) -> str:
        return super().getUsage(width) + configuration_help()

    def postOptions(self) -> None:
        try:
            self["parsed"] = load_config(self["config"])
        except ConfigError as e:
            # Not a UsageError: twistd would print its whole usage text before the
            # one line that matters.  SystemExit prints the line and exits 1.
            raise SystemExit(configuration_error(self["config"], e)) from None


def configuration_error(path: str, error: ConfigError) -> str:
    """The one line twistd prints for a configuration it cannot use: the file, then the key and what is wrong."""
    message = str(error)
    return f"redmessenger: {message}" if path in message else f"redmessenger: {path}: {message}"


def configuration_help() -> str:
    """``--help``'s last part: where the keys are explained, and each key with its default."""
    width = max(len(f.name) for f in fields(Config)) + 1
    lines = [
        "",
        "The configuration file is a JSON object; every key is optional. The Configuration",
        "section of README.md says what each key means; docs/operations.md covers running",
        "it as a service. The keys and their defaults:",
    ]
    for f in fields(Config):
        if f.name == "source":
            continue
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        lines.append(f"  {f.name:<{width}} {json.dumps(default)}")
    return "\n".join(lines) + "\n"


def makeService(options: Options, reactor: Any = None) -> IService:
    # SIGHUP's default action ends the process, and systemd counts that as a clean
    # stop (no restart): ignored from here on, and again after the reload handler,
    # which the service installs while it runs, is removed (redmessenger.daemon.reload).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if reactor is None:
        from twisted.internet import reactor as installed

        reactor = installed
    from redmessenger.daemon.service import RedMessengerService
    from redmessenger.logs import set_level

    config: Config = options["parsed"]
    set_level(config.log_level)
    service = RedMessengerService(config, reactor)
    service.config_path = options["config"]  # SIGHUP re-reads it (redmessenger.daemon.reload)
    service.on_start_failure = lambda: exit_once_stopped(reactor, 1)
    tune_garbage_collector(reactor)
    return service


#: The status the process ends with, once a start failed under twistd.
_exit_status: int | None = None


def exit_once_stopped(reactor: Any, status: int) -> None:
    """
    Stop the reactor (the services stop as for SIGTERM), and end the process
    with ``status`` once twistd is done.

    twistd exits 0 however the reactor was stopped (Twisted #11335), so that
    systemd's ``Restart=on-failure`` would never retry.  The status is set at
    the very end: from an exit handler, after twistd removed its pid file and
    stopped logging.  ``os._exit`` is the only way to choose the status there;
    it skips the exit handlers registered before this one (the standard
    ``logging`` module's flush, which nothing here uses), and the standard
    streams are flushed first.  For a failure before the reactor runs, see
    :class:`~redmessenger.daemon.tree.StartFailed`.
    """
    global _exit_status
    if _exit_status is None:
        atexit.register(_exit_with_status)
    _exit_status = status
    reactor.callWhenRunning(_stop, reactor)


def _stop(reactor: Any) -> None:
    from twisted.internet.error import ReactorNotRunning

    try:
        reactor.stop()
    except ReactorNotRunning:
        pass  # already stopping


def _exit_with_status() -> None:
    if _exit_status is None:
        return
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(_exit_status)
