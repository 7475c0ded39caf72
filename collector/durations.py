"""Go-style durations ("200ms", "5s", "1h30m", "30d") as used in OpenTelemetry Collector configs."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d|w)")


def parse_duration(value: Any) -> timedelta:
    """Turn "1h30m", "200ms" or a timedelta into a timedelta; 0 means zero."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value == 0:
            return timedelta(0)
        raise ValueError(f"duration {value!r} needs a unit, for example '{value}s' or '{value}ms'")
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '5s', got {value!r}")
    text = value.strip()
    if text in ("0", ""):
        return timedelta(0)
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, seconds = 0, 0.0
    for match in _PART.finditer(body):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body) or pos == 0:
        raise ValueError(f"invalid duration {value!r}: use forms like '200ms', '5s', '1h30m' or '30d'")
    if sign < 0:
        raise ValueError(f"duration {value!r} must not be negative")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {value!r} is too long: at most {timedelta.max.days}d") from None


def format_duration(value: timedelta) -> str:
    """Render a timedelta the way it would be written in a config file."""
    seconds = value.total_seconds()
    if seconds == 0:
        return "0s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
"""A pydantic field type for Go-style durations."""
