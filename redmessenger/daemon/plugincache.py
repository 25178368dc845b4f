"""
``python -m redmessenger.daemon.plugincache``: regenerate Twisted's plugin cache after installing.

twistd finds ``redmessenger`` through ``twisted/plugins/dropin.cache``; when the
cache is missing or older than a plugin file, every start rescans and tries to
rewrite it.  A service running as an unprivileged user cannot write into a
root-owned virtualenv, so it would rescan (and log a failure) on every start.
Run this as the virtualenv's owner after ``pip install`` (the systemd unit also
runs it, privileged, before each start).  Exits 1 if the plugin is not found or
a cache could not be written.
"""

from __future__ import annotations

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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    quiet = "--quiet" in args
    names = regenerate()
    if "redmessenger" not in names:
        print("redmessenger: the twistd plugin was not found; is the package installed here?", file=sys.stderr)
        return 1
    stale = stale_caches()
    if stale:
        for directory in stale:
            print(f"redmessenger: could not write {directory / 'dropin.cache'}; run this as its owner", file=sys.stderr)
        return 1
    if not quiet:
        for directory in plugin_directories():
            print(f"plugin cache up to date: {directory / 'dropin.cache'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
