"""Parsing of the values people type into query parameters: times, severities, ids."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

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


class ParamError(ValueError):
    """A query parameter cannot be understood; the message says which and why."""


def parse_time_ns(value: str, name: str) -> int:
    """An instant as Unix nanoseconds, from RFC 3339 / ISO 8601 (naive means UTC) or epoch seconds."""
    text = value.strip()
    try:
        seconds = Decimal(text)
    except InvalidOperation:
        pass
    else:
        if seconds.is_finite():
            return int(seconds * 1_000_000_000)
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
    return int(moment.timestamp()) * 1_000_000_000 + fraction_ns


def format_time_ns(ns: int) -> str:
    """Unix nanoseconds as RFC 3339 UTC with nine fractional digits."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"


def parse_severity(value: str, name: str) -> int:
    """A severity number (1-24), or a level name such as WARN or error."""
    text = value.strip()
    if text.isdigit():
        number = int(text)
        if 0 <= number <= 24:
            return number
        raise ParamError(f"{name}: {number} is outside the severity range 0-24")
    named = SEVERITY_NAMES.get(text.upper())
    if named is None:
        raise ParamError(f"{name}: {value!r} is not a severity; use 1-24 or {', '.join(SEVERITY_NAMES)}")
    return named


def parse_hex_id(value: str, length: int, name: str) -> str:
    """A trace (32) or span (16) id in lower-case hex."""
    text = value.strip().lower()
    if len(text) != length or not _HEX.match(text):
        raise ParamError(f"{name}: {value!r} is not a {length}-digit hex id")
    return text
