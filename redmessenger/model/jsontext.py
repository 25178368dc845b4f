"""
JSON from outside (a client's frame, an application's answer, a queue entry) read into Python values that can be
written out again.

JSON may escape a UTF-16 surrogate on its own (``"\\ud800"``): :func:`json.loads` takes it, and the string it gives
cannot be encoded as UTF-8, so the failure would come later, far from the input (a reply, an envelope, a Redis
command).  :func:`loads` refuses it where it is read.  A surrogate pair (``"\\ud83d\\ude00"``) is one character and
is fine.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: An escape of a UTF-16 surrogate: only then can the value hold a lone one (its bytes were valid UTF-8).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")
_check = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode


class LoneSurrogate(ValueError):
    """The JSON escapes half of a UTF-16 surrogate pair: not a character, and no UTF-8 encodes it."""

    def __init__(self) -> None:
        super().__init__("a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair) is not a character")


def loads(text: str | bytes) -> Any:
    """
    :func:`json.loads`, refusing a lone surrogate (:class:`LoneSurrogate`, a ValueError like every other refusal
    here; a RecursionError for nesting deeper than the stack, as json.loads).
    """
    value = json.loads(text)
    escaped = _SURROGATE_ESCAPE.search(text) if isinstance(text, str) else _SURROGATE_ESCAPE_BYTES.search(text)
    if escaped is not None:
        try:
            _check(value).encode("utf-8")
        except UnicodeEncodeError:
            raise LoneSurrogate() from None
    return value
