"""Event counts by group and time bucket, for dashboards and the CLI (`GET /stats`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from labtel.collector.storage.client import Storage
from labtel.query_api.events import EventFilter
from labtel.query_api.params import ParamError, format_time_ns

GROUPS = {
    "event_type": "EventType",
    "service": "ServiceName",
    "severity": "SeverityText",
    "node": "NodeId",
    "run": "RunId",
    "workflow": "WorkflowId",
    "experiment": "ExperimentId",
    "scope": "ScopeName",
}
MAX_GROUPS = 50
MAX_BUCKETS = 10_000
_FIXED = re.compile(r"^(\d+)(s|m|h)$")
_CALENDAR = {"1d": "toStartOfDay", "1w": "toMonday", "1mo": "toStartOfMonth"}


@dataclass(frozen=True)
class Bucket:
    """A bucket width: fixed seconds, or a calendar unit in a time zone."""

    text: str
    seconds: int = 0
    calendar: str = ""

    def sql(self, tz_param: str) -> str:
        if self.calendar:
            day = f"{self.calendar}(Timestamp, {tz_param})"
            return f"toDateTime({day}, {tz_param})" if self.calendar != "toStartOfDay" else day
        return f"toStartOfInterval(Timestamp, toIntervalSecond({self.seconds}), {tz_param})"


def parse_bucket(text: str) -> Bucket:
    """`30s`, `5m`, `1h`, `1d`, `1w` or `1mo`."""
    if text in _CALENDAR:
        return Bucket(text, calendar=_CALENDAR[text])
    match = _FIXED.match(text)
    if not match or int(match.group(1)) == 0:
        raise ParamError(f"bucket: {text!r} is not a bucket; use e.g. 1m, 15m, 1h, 1d, 1w or 1mo")
    return Bucket(text, seconds=int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)])


def parse_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ParamError(f"tz: {name!r} is not a time zone, e.g. UTC or Europe/Madrid") from None


def bucket_starts(bucket: Bucket, start_ns: int, end_ns: int, tz: ZoneInfo) -> list[int]:
    """Every bucket start from the one holding `start_ns` up to `end_ns` (so empty ones show)."""
    moment = datetime.fromtimestamp(start_ns / 1e9, tz)
    if bucket.seconds:
        offset = moment.utcoffset() or timedelta(0)
        local = int(start_ns // 1_000_000_000 + offset.total_seconds())
        first = (local - local % bucket.seconds - int(offset.total_seconds())) * 1_000_000_000
        count = (end_ns - first + bucket.seconds * 1_000_000_000 - 1) // (bucket.seconds * 1_000_000_000)
        if count > MAX_BUCKETS:
            raise ParamError(f"bucket: {bucket.text} makes {count} buckets in this range; at most {MAX_BUCKETS}")
        return [first + i * bucket.seconds * 1_000_000_000 for i in range(int(count))]
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if bucket.calendar == "toMonday":
        day -= timedelta(days=day.weekday())
    elif bucket.calendar == "toStartOfMonth":
        day = day.replace(day=1)
    starts = []
    while int(day.timestamp() * 1e9) < end_ns:
        starts.append(int(day.timestamp() * 1e9))
        if len(starts) > MAX_BUCKETS:
            raise ParamError(f"bucket: {bucket.text} makes more than {MAX_BUCKETS} buckets in this range")
        if bucket.calendar == "toStartOfDay":
            day = (day + timedelta(days=1, hours=3)).replace(hour=0, tzinfo=tz)
        elif bucket.calendar == "toMonday":
            day = (day + timedelta(days=7, hours=3)).replace(hour=0, tzinfo=tz)
        else:
            day = (day.replace(day=28) + timedelta(days=5)).replace(day=1, hour=0, tzinfo=tz)
    return starts


def count_events(
    storage: Storage, flt: EventFilter, group_by: str, bucket: Bucket | None, tz: ZoneInfo, start_ns: int, end_ns: int
) -> dict[str, Any]:
    """Counts of events per group (and per bucket), with empty buckets as zeros."""
    where, params = flt.where()
    group = GROUPS.get(group_by, "''") if group_by != "none" else "''"
    params["tz"] = str(tz)
    bucket_sql = f"toUnixTimestamp64Nano(toDateTime64({bucket.sql('{tz:String}')}, 9))" if bucket else "0"
    rows = storage.rows(
        f"SELECT {bucket_sql} AS t, {group} AS g, count() AS n FROM {storage.names.logs} "
        f"WHERE {where} GROUP BY t, g ORDER BY t, g",
        parameters=params,
    )
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["g"]] = totals.get(row["g"], 0) + row["n"]
    ranked = sorted(totals, key=lambda g: (-totals[g], g))
    keep = set(ranked[:MAX_GROUPS])
    other = "(other)" if len(ranked) > MAX_GROUPS else None
    groups = [g for g in ranked if g in keep] + ([other] if other else [])
    result: dict[str, Any] = {
        "group_by": group_by,
        "bucket": bucket.text if bucket else None,
        "tz": str(tz),
        "start": format_time_ns(start_ns),
        "end": format_time_ns(end_ns),
        "groups": groups,
        "totals": {g: totals[g] for g in groups if g in totals}
        | ({other: sum(totals[g] for g in ranked[MAX_GROUPS:])} if other else {}),
        "total": sum(totals.values()),
        "buckets": [],
    }
    if bucket is None:
        return result
    counts: dict[int, dict[str, int]] = {
        t: dict.fromkeys(groups, 0) for t in bucket_starts(bucket, start_ns, end_ns, tz)
    }
    for row in rows:
        slot = counts.setdefault(row["t"], dict.fromkeys(groups, 0))
        name = row["g"] if row["g"] in keep else other
        slot[name or ""] = slot.get(name or "", 0) + row["n"]
    result["buckets"] = [{"t": format_time_ns(t), "t_unix_nano": t, "counts": counts[t]} for t in sorted(counts)]
    return result


def now_ns() -> int:
    return int(datetime.now(UTC).timestamp() * 1e9)
