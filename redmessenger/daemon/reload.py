"""
SIGHUP: re-read the configuration file and apply what can change safely while
sockets are open.

Applied at once: ``log_level`` and the manhole's password file (new logins use
it).  Any other key that changed is named in the log as needing a restart; the
running daemon keeps its values.  A file that no longer validates changes
nothing.  Before the handler is installed and after it is removed (a start, a
stop), SIGHUP is ignored: twistd's makeService ignores it (redmessenger.daemon.tap),
and :meth:`HangupReload.uninstall` puts that back.

The file is read and validated in a thread: a slow disk never stalls the reactor.
"""

from __future__ import annotations

import signal
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from redmessenger.daemon.config import Config, ConfigError, load_config
from redmessenger.logs import make_logger, set_level

if TYPE_CHECKING:
    from redmessenger.daemon.service import RedMessengerService

#: Keys applied by a reload; every other change waits for a restart.
RELOADABLE = frozenset({"log_level", "manhole_password_file"})


class HangupReload:
    """Installs the SIGHUP handler while the service runs; reloads on each signal."""

    log = make_logger()

    def __init__(self, service: RedMessengerService, path: str, reactor: Any) -> None:
        self._service = service
        self._path = path
        self._reactor = reactor
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGHUP, self._on_signal)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous)
            self._installed = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        # A signal handler may interrupt the reactor anywhere: only hand over.
        self._reactor.callFromThread(self.reload)

    def reload(self) -> Deferred[Config | None]:
        """Read, validate and apply; fires with the new configuration, or None if it was refused."""
        self.log.info("SIGHUP: reloading {path}", path=self._path)
        pool = self._reactor.getThreadPool()
        d: Deferred[Any] = deferToThreadPool(self._reactor, pool, _read, self._path)
        d.addCallbacks(self._apply, self._refused)
        d.addErrback(lambda f: self.log.failure("Reloading {path} failed", f, path=self._path))
        return d

    def _refused(self, failure: Any) -> None:
        failure.trap(ConfigError)
        self.log.error(
            "Reload refused, the running configuration stays: {why}", why=failure.getErrorMessage()
        )
        return None

    def _apply(self, loaded: tuple[Config, dict[bytes, bytes] | None]) -> Config:
        new, passwords = loaded
        service = self._service
        old = service.config
        changed = [f.name for f in fields(Config) if f.name != "source" and getattr(old, f.name) != getattr(new, f.name)]
        later = [name for name in changed if name not in RELOADABLE]
        if new.log_level != old.log_level:
            set_level(new.log_level)
        manhole = getattr(service, "manhole", None)
        if manhole is not None and passwords is not None:
            manhole.reload_passwords(passwords)
        service.config = replace(old, **{name: getattr(new, name) for name in changed if name in RELOADABLE})
        self.log.info(
            "Reloaded: log_level {new_level}{manhole}",
            new_level=new.log_level,
            manhole=", manhole passwords re-read" if manhole is not None and passwords is not None else "",
        )
        if later:
            self.log.warn(
                "Changed in {path} but applied only at the next restart: {keys}", path=self._path, keys=", ".join(later)
            )
        return service.config


def _read(path: str) -> tuple[Config, dict[bytes, bytes] | None]:
    """In a thread: the new configuration and the manhole passwords it names."""
    from redmessenger.ops.passwords import PasswordFileError, read_password_file

    config = load_config(path)
    if config.manhole_password_file is None:
        return config, None
    try:
        return config, read_password_file(config.manhole_password_file)
    except PasswordFileError as e:
        raise ConfigError(f"manhole_password_file: {e}") from None
