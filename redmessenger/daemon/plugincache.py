"""
``python -m redmessenger.daemon.plugincache``: regenerate Twisted's plugin cache after installing.

twistd finds ``redmessenger`` through ``twisted/plugins/dropin.cache``; when the
cache is missing or older than a plugin file, every start rescans and tries to
rewrite it.  A service running as an unprivileged user cannot write into a
root-owned virtualenv, so it would rescan (and log a failure) on every start.
Run this as the virtualenv's owner after ``pip install`` (the systemd unit also
runs it, privileged and isolated, ``python -I``, before each start).  The caches
it writes, or finds, are made readable by every user whatever the umask (the
unit's is 0027): the daemon's user must read a cache root wrote.  Exits 1 if the
plugin is not found or a cache could not be written or made readable.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path


def plugin_directories() -> list[Path]:
    """Every directory Twisted reads plugins from (site-packages and, for a source checkout, the repo)."""
    import twisted.plugins

    found = (Path(entry).resolve() for entry in twisted.plugins.__path__)
    return list(dict.fromkeys(path for path in found if path.is_dir()))


def stale_caches() -> list[Path]:
    """Plugin directories whose ``dropin.cache`` is missing or older than one of their plugins."""
    stale = []
    for directory in plugin_directories():
        modules = [p for p in directory.glob("*.py") if p.name != "__init__.py"]
        if not modules:
            continue
        cache = directory / "dropin.cache"
        newest = max(p.stat().st_mtime for p in modules)
        if not cache.exists() or cache.stat().st_mtime <= newest:
            stale.append(directory)
    return stale


def regenerate() -> list[str]:
    """Load every plugin (writing the caches on the way); the tap names found."""
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    return sorted(maker.tapname for maker in getPlugins(IServiceMaker))


def unreadable_caches() -> list[Path]:
    """Make every ``dropin.cache`` readable by all (as the plugins beside it are); those that cannot be."""
    failed = []
    for directory in plugin_directories():
        cache = directory / "dropin.cache"
        try:
            mode = stat.S_IMODE(cache.stat().st_mode)
            if mode & 0o444 != 0o444:
                cache.chmod(mode | 0o444)
        except FileNotFoundError:
            continue  # no plugin there: nothing to cache
        except OSError:
            failed.append(cache)
    return failed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    quiet = "--quiet" in args
    # Twisted writes the cache with os.open's 0777 less the umask: under the unit's
    # UMask=0027, root's cache would be unreadable by the daemon's user.
    previous = os.umask(0o022)
    try:
        names = regenerate()
    finally:
        os.umask(previous)
    if "redmessenger" not in names:
        print("redmessenger: the twistd plugin was not found; is the package installed here?", file=sys.stderr)
        return 1
    stale = stale_caches()
    if stale:
        for directory in stale:
            print(f"redmessenger: could not write {directory / 'dropin.cache'}; run this as its owner", file=sys.stderr)
        return 1
    unreadable = unreadable_caches()
    if unreadable:
        for cache in unreadable:
            print(f"redmessenger: could not make {cache} readable by all; run this as its owner", file=sys.stderr)
        return 1
    if not quiet:
        for directory in plugin_directories():
            print(f"plugin cache up to date: {directory / 'dropin.cache'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
