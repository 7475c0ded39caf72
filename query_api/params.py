"""Parsing of the values people type into query parameters: times, severities, ids."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from labtel.collector.durations import parse_duration
from labtel.sdk.textform import digits

SEVERITY_NAMES = {
    "TRACE": 1,
    "DEBUG": 5,
    "INFO": 9,
    "NOTICE": 10,
    "WARN": 13,
    "WARNING": 13,
    "ERROR": 17,
    "CRITICAL": 21,
    "FATAL": 21,
}
_HEX = re.compile(r"^[0-9a-fA-F]*$")
MIN_TIME_NS = 0
"""The earliest instant a time parameter means: OTLP times are unsigned, no event is earlier."""
MAX_TIME_NS = 2**63 - 1
"""The latest instant storage holds (2262-04-11T23:47:16.854775807Z, the end of Int64 nanoseconds)."""
DAY_NS = 86_400 * 1_000_000_000
MAX_EPOCH_SECONDS = 10**11
"""Epoch seconds from here on (the year 5138) are taken for a mistake: milliseconds, microseconds or
nanoseconds given where seconds are expected."""


class ParamError(ValueError):
    """A query parameter cannot be understood; the message says which and why."""


def clamp_time_ns(ns: int) -> int:
    """An instant within what storage holds: earlier is 1970-01-01, later is MAX_TIME_NS (2262), so
    `end=9999-12-31` means "no upper bound" instead of wrapping around Int64."""
    return min(max(ns, MIN_TIME_NS), MAX_TIME_NS)


def epoch_seconds_ns(seconds: Decimal, name: str) -> int:
    """Epoch seconds as Unix nanoseconds, clamped to what storage holds; a 400 naming `name` for a
    number so large it must be milliseconds, microseconds or nanoseconds."""
    if abs(seconds) >= MAX_EPOCH_SECONDS:
        digits = len(str(int(abs(seconds))))
        unit = "milliseconds" if digits <= 14 else "microseconds" if digits <= 17 else "nanoseconds"
        raise ParamError(
            f"{name}: {int(seconds)} is not a time: epoch seconds expected, and this looks like {unit}; "
            "divide it, or use RFC 3339 (2026-11-24T08:00:00Z)"
        )
    return clamp_time_ns(int(Decimal(seconds) * 1_000_000_000))


def number_time_ns(value: int | float, name: str) -> int:
    """A JSON number of epoch seconds as Unix nanoseconds, as `epoch_seconds_ns` reads it; a
    ParamError naming `name` for NaN, Infinity (Python's JSON reader lets them through) or a
    number too large to be a time in any unit."""
    seconds = Decimal(value)
    if not seconds.is_finite() or abs(seconds) >= 10**20:  # not a time in any unit
        raise ParamError(f"{name}: {value!r} is not a time; use RFC 3339 (2026-11-24T08:00:00Z) or epoch seconds")
    return epoch_seconds_ns(seconds, name)


def parse_time_ns(value: str, name: str) -> int:
    """An instant as Unix nanoseconds, from RFC 3339 / ISO 8601 (naive means UTC) or epoch seconds,
    clamped to what storage holds (clamp_time_ns)."""
    text = value.strip()
    try:
        seconds = Decimal(text)
    except InvalidOperation:
        pass
    else:
        if seconds.is_finite():
            return epoch_seconds_ns(seconds, name)
    iso = text.replace(" ", "T")
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    fraction_ns = 0
    match = re.match(r"^(.*T\d{2}:\d{2}:\d{2})\.(\d+)(.*)$", iso)
    if match:  # keep nanoseconds that datetime cannot hold
        iso = match.group(1) + match.group(3)
        fraction_ns = int((match.group(2) + "000000000")[:9])
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise ParamError(
            f"{name}: {value!r} is not a time; use RFC 3339 (2026-11-24T08:00:00Z) or epoch seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return clamp_time_ns(int(moment.timestamp()) * 1_000_000_000 + fraction_ns)


def parse_duration_ns(value: str, name: str, maximum_ns: int | None = MAX_TIME_NS) -> int:
    """A duration parameter (`15m`, `24h`, `7d`) as nanoseconds; a 400 naming `name` when it is not one
    or longer than `maximum_ns` (None: as long as a timedelta holds, 999999999 days)."""
    try:
        ns = int(parse_duration(value).total_seconds() * 1_000_000_000)
    except ValueError as error:
        raise ParamError(f"{name}: {error}") from None
    if maximum_ns is not None and ns > maximum_ns:
        raise ParamError(f"{name}: {value!r} is too long; at most {maximum_ns // DAY_NS}d")
    return ns


def since_ns(value: str, now_ns: int, name: str = "since") -> int:
    """The instant `value` (a duration) before `now_ns`, clamped to what storage holds: `since=1000000d`
    means from the beginning."""
    return clamp_time_ns(now_ns - parse_duration_ns(value, name, maximum_ns=None))


def ordered_range(
    start_ns: int | None, end_ns: int | None, start_name: str = "start", end_name: str = "end"
) -> tuple[int | None, int | None]:
    """`start_ns` and `end_ns` when the range they make can hold anything; a start after the end
    is a mistake (swapped bounds, a `since` reaching past the end), said rather than answered
    with nothing."""
    if start_ns is not None and end_ns is not None and start_ns > end_ns:
        raise ParamError(
            f"{start_name}: {format_time_ns(start_ns)} is after {end_name} {format_time_ns(end_ns)}; "
            f"{start_name} must not be after {end_name}"
        )
    return start_ns, end_ns


def format_time_ns(ns: int) -> str:
    """Unix nanoseconds as RFC 3339 UTC with nine fractional digits."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"


def parse_severity(value: str, name: str, top: bool = False) -> int:
    """A severity number (1-24), or a level name such as WARN or error: the bottom of the name's
    range of four (WARN 13), or with `top` its top (WARN 16: WARN2-WARN4 included), as a maximum
    means it. NOTICE is the one number 10."""
    text = value.strip()
    if digits(text):
        number = int(text)
        if 0 <= number <= 24:
            return number
        raise ParamError(f"{name}: {number} is outside the severity range 0-24")
    named = SEVERITY_NAMES.get(text.upper())
    if named is None:
        raise ParamError(f"{name}: {value!r} is not a severity; use 1-24 or {', '.join(SEVERITY_NAMES)}")
    return named + 3 if top and named % 4 == 1 else named


def parse_hex_id(value: str, length: int, name: str) -> str:
    """A trace (32) or span (16) id in lower-case hex."""
    text = value.strip().lower()
    if len(text) != length or not _HEX.match(text):
        raise ParamError(f"{name}: {value!r} is not a {length}-digit hex id")
    return text
