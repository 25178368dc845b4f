"""
The manhole's password file: ``user:password`` lines, readable by the daemon's
user alone.  Plain file reading, no reactor: the configuration checks it at start.
"""

from __future__ import annotations

import stat
from pathlib import Path


class PasswordFileError(ValueError):
    """The password file is missing, readable by others, or has no usable line."""


def read_password_file(path: str | Path) -> dict[bytes, bytes]:
    """
    Read ``user:password`` lines (``#`` comments and blank lines allowed).  The file
    must belong to the daemon's user alone: group or other permissions are refused.
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError as e:
        raise PasswordFileError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise PasswordFileError(f"{path} is not a regular file")
    if info.st_mode & 0o077:
        raise PasswordFileError(
            f"{path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it"
        )
    try:
        text = path.read_bytes()
    except OSError as e:
        raise PasswordFileError(f"cannot read {path}: {e.strerror}") from None
    passwords: dict[bytes, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        user, separator, password = line.partition(b":")
        if not separator or not user or not password:
            raise PasswordFileError(f"{path} line {number}: expected user:password")
        passwords[user] = password
    if not passwords:
        raise PasswordFileError(f"{path} has no user:password line")
    return passwords
