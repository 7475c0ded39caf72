"""JSON of what the compatibility clients post, exact: integers beyond 64 bits included.

orjson, the fast path, writes integers of at most 64 bits and reads larger ones as floats, while
the clients labtel stands in for (Python's `json`) write any integer. These functions keep
orjson for the common case and take the standard library for a value or text holding such an
integer, so that it is stored and read back digit for digit instead of failing or rounding.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import orjson

from labtel.collector.storage.client import TextNotUnicode


class InvalidText(orjson.JSONEncodeError, TextNotUnicode):
    """A value holds text that is not valid Unicode: a lone surrogate, which a client's JSON
    escape (`\\ud800`) makes. The client's mistake: the query API answers it with a 400."""


_LONG_DIGITS = re.compile(r"\d{20}")
_LONG_DIGITS_BYTES = re.compile(rb"\d{20}")
"""Twenty digits in a row: perhaps an integer orjson would read as a float (past 2^64 - 1)."""


def dumps(value: Any, *, sort_keys: bool = False, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact JSON of a decoded JSON value, keys in their order (or sorted). Text that is not
    valid Unicode (a lone surrogate) raises InvalidText."""
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    try:
        return orjson.dumps(value, default=default, option=option)
    except orjson.JSONEncodeError as error:
        if "surrogates" in str(error):
            raise InvalidText(str(error)) from None
        if "64-bit" not in str(error):
            raise
    text = json.dumps(_finite(value), default=default, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise InvalidText("str is not valid UTF-8: surrogates not allowed") from None


def loads(text: str | bytes) -> Any:
    """A JSON value from its text, integers exact whatever their size; text that is not JSON
    raises orjson.JSONDecodeError, as orjson does."""
    long_digits = _LONG_DIGITS.search(text) if isinstance(text, str) else _LONG_DIGITS_BYTES.search(text)
    if long_digits is None:
        return orjson.loads(text)
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise orjson.JSONDecodeError(error.msg, error.doc, error.pos) from None


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities as null, as orjson writes them (the standard library would
    write NaN, which is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
