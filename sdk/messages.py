"""Print-like logging, like the Master Log client: `mlog("Captured frame", 42, "for", "M31")`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from labtel.sdk import semconv
from labtel.sdk.logger import ORIGINAL_TIME, emit

_SEVERITIES = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "warning": 13, "error": 17, "fatal": 21, "critical": 21}
_TITLE_LENGTH = 120


def _tags(tags: str | Iterable[str] | None) -> list[str]:
    if tags is None:
        return []
    items = tags.split(",") if isinstance(tags, str) else [str(t) for t in tags]
    return sorted({item.strip() for item in items if item and item.strip()})


def _time_ns(created_at: datetime | str | float | None) -> int | None:
    """`created_at` in ns since the epoch; None when there is none, or it is not a time."""
    if created_at is None:
        return None
    try:
        if isinstance(created_at, (int, float)):
            return int(created_at * 1e9)
        moment = (
            created_at
            if isinstance(created_at, datetime)
            else datetime.fromisoformat(created_at.replace("Z", "+00:00"))
        )
        return int(moment.timestamp() * 1e9)
    except (ValueError, TypeError, OverflowError, AttributeError):
        return None


def mlog(
    *values: Any,
    severity: str = "info",
    tags: str | Iterable[str] | None = None,
    title: str | None = None,
    body: str | None = None,
    metadata: dict[str, Any] | None = None,
    ttl_seconds: float | None = None,
    expires_at: datetime | str | None = None,
    created_at: datetime | str | float | None = None,
    sep: str = " ",
    logger: str = "mlog",
    **fields: Any,
) -> None:
    """Log values print-style: joined by `sep` into the body.

    `tags` (sorted, de-duplicated), `title` (default: the body's first line, 120 characters),
    `metadata` (its keys become attributes), `ttl_seconds` / `expires_at` (storage deletes the
    event then), `created_at` (the event's time). Other keywords are attributes. Never raises."""
    try:
        text = body if body is not None else sep.join(str(v) for v in values)
        number = _SEVERITIES.get(severity.lower(), 9) if isinstance(severity, str) else 9
        attributes: dict[str, Any] = dict(metadata or {})
        attributes.update(fields)
        attributes["title"] = title or (text.splitlines()[0][:_TITLE_LENGTH] if text.strip() else "Python log event")
        tag_list = _tags(tags)
        if tag_list:
            attributes["tags"] = tag_list
        if ttl_seconds is not None:
            attributes[semconv.LAB_TTL_SECONDS] = ttl_seconds
        if expires_at is not None:
            attributes[semconv.LAB_EXPIRES_AT] = (
                expires_at.isoformat() if isinstance(expires_at, datetime) else expires_at
            )
        if severity.lower() not in _SEVERITIES:
            attributes["labtel.sdk.unknown_severity"] = severity
        time_ns = _time_ns(created_at)
        if created_at is not None and time_ns is None:
            attributes[ORIGINAL_TIME] = str(created_at)  # not a time: the event keeps the time it was logged
        emit(logger, number, text, attributes, time_ns=time_ns)
    except Exception:  # bad arguments must not break the instrument code calling us
        return


def trace(*values: Any, **kwargs: Any) -> None:
    """`mlog` at trace severity."""
    mlog(*values, severity="trace", **kwargs)


def debug(*values: Any, **kwargs: Any) -> None:
    """`mlog` at debug severity."""
    mlog(*values, severity="debug", **kwargs)


def info(*values: Any, **kwargs: Any) -> None:
    """`mlog` at info severity."""
    mlog(*values, severity="info", **kwargs)


def warn(*values: Any, **kwargs: Any) -> None:
    """`mlog` at warn severity."""
    mlog(*values, severity="warn", **kwargs)


def error(*values: Any, **kwargs: Any) -> None:
    """`mlog` at error severity."""
    mlog(*values, severity="error", **kwargs)


def fatal(*values: Any, **kwargs: Any) -> None:
    """`mlog` at fatal severity."""
    mlog(*values, severity="fatal", **kwargs)
