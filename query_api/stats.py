"""Event counts by group and time bucket, for dashboards and the CLI (`GET /stats`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from labtel.collector.storage.client import Storage
from labtel.query_api.events import EventFilter
from labtel.query_api.params import MAX_TIME_NS, ParamError, format_time_ns

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
HOUR_NS = 3600 * 1_000_000_000
_FIXED = re.compile(r"^(\d+)(s|m|h)$")
_CALENDAR = {"1d": "toStartOfDay", "1w": "toMonday", "1mo": "toStartOfMonth"}


@dataclass(frozen=True)
class Bucket:
    """A bucket width: fixed seconds, or a calendar unit in a time zone."""

    text: str
    seconds: int = 0
    calendar: str = ""

    def sql(self, tz_param: str, time: str = "Timestamp") -> str:
        """The start of the bucket holding `time` (a column or expression). Widths that divide a day
        are aligned to local time in the zone (1h, 3h: on the zone's hours; 20m: on its hours and
        minutes past them, also where the offset is 5:30 or 5:45); others (5h, 90m) to the Unix epoch."""
        if self.calendar:
            day = f"{self.calendar}({time}, {tz_param})"
            return f"toDateTime({day}, {tz_param})" if self.calendar != "toStartOfDay" else day
        if self.seconds % 3600 == 0 and 86_400 % self.seconds == 0:  # the hours of a local day
            return f"toStartOfInterval({time}, toIntervalHour({self.seconds // 3600}), {tz_param})"
        if self.seconds % 60 == 0 and 3600 % self.seconds == 0:  # minutes past a local hour
            minutes = self.seconds // 60
            return (
                f"addMinutes(toStartOfHour({time}, {tz_param}), "
                f"intDiv(toMinute({time}, {tz_param}), {minutes}) * {minutes})"
            )
        return f"toStartOfInterval({time}, toIntervalSecond({self.seconds}), {tz_param})"

    def sample_step_ns(self) -> int:
        """How far apart instants may be so that each bucket holds one: buckets of local hours are an
        hour shorter on the day clocks go forward."""
        width = self.seconds or 86_400
        return max(min(width, 900), width - 3600) * 1_000_000_000


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


def sampled_starts(
    storage: Storage, expression: str, start_ns: int, end_ns: int, step_ns: int, parameters: dict[str, Any]
) -> list[int]:
    """The bucket starts, in order, that the SQL `expression` (of an instant `t`) gives the instants
    from `start_ns` on, `step_ns` apart, and the last one before `end_ns`: the SQL that puts events
    in buckets, so bucket starts and counts agree across DST changes and odd offsets."""
    end_ns = min(end_ns, MAX_TIME_NS)  # no instant is later
    samples = (end_ns - start_ns - 1) // step_ns + 2
    rows = storage.rows(
        f"SELECT arraySort(groupUniqArray(toUnixTimestamp64Nano(toDateTime64({expression}, 9)))) AS b FROM ("
        "SELECT fromUnixTimestamp64Nano(least({sample_start:Int64} + toInt64(number) * {sample_step:Int64}, "
        "{sample_last:Int64})) AS t FROM numbers({samples:UInt64}))",
        parameters={
            **parameters,
            "sample_start": start_ns,
            "sample_step": step_ns,
            "sample_last": max(start_ns, end_ns - 1),
            "samples": max(1, samples),
        },
    )
    return [int(b) for b in rows[0]["b"]]


def bucket_starts(storage: Storage, bucket: Bucket, start_ns: int, end_ns: int, tz: ZoneInfo) -> list[int]:
    """Every bucket start from the one holding `start_ns` up to `end_ns` (so empty ones show)."""
    moment = datetime.fromtimestamp(start_ns / 1e9, tz)
    if bucket.seconds:
        count = (end_ns - start_ns) // (bucket.seconds * 1_000_000_000) + 1
        if count > MAX_BUCKETS:
            raise ParamError(f"bucket: {bucket.text} makes {count} buckets in this range; at most {MAX_BUCKETS}")
        expression = bucket.sql("{tz:String}", "t")
        starts = sampled_starts(storage, expression, start_ns, end_ns, bucket.sample_step_ns(), {"tz": str(tz)})
        # past 2106 ClickHouse's DateTime of an hour start overflows: such starts are left out
        return [t for t in starts if start_ns - bucket.seconds * 1_000_000_000 - HOUR_NS <= t < end_ns]
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


HOURLY_GROUPS = ("event_type", "service", "severity", "none")
"""The groups the hourly counts projection of the logs table holds (schema.HOURLY_COUNTS)."""


def hourly_counts_apply(
    flt: EventFilter, group_by: str, bucket: Bucket | None, tz: ZoneInfo, start_ns: int, end_ns: int
) -> bool:
    """Whether the hourly counts projection can answer: groups and filters it holds, and buckets
    made of whole UTC hours (widths in hours, days in a zone whose offsets are whole hours)."""
    if group_by not in HOURLY_GROUPS:
        return False
    if any((flt.node, flt.run, flt.workflow, flt.experiment, flt.trace_id, flt.span_id, flt.tokens, flt.contains)) or (
        flt.selector or flt.conditions
    ):
        return False
    if bucket is None:
        return True
    if bucket.seconds % 3600:
        return False
    day_s, start_s, end_s = 86_400, start_ns // 1_000_000_000, end_ns // 1_000_000_000
    for moment in [*range(start_s, end_s, day_s), end_s]:
        offset = datetime.fromtimestamp(moment, tz).utcoffset() or timedelta(0)
        if offset.total_seconds() % 3600:
            return False
    return True


def _count_sql(
    storage: Storage, flt: EventFilter, group_by: str, bucket: Bucket | None, tz: ZoneInfo, start_ns: int, end_ns: int
) -> tuple[str, dict[str, Any]]:
    """The SQL counting events per (bucket start, group), and its parameters.

    Where the hourly counts projection applies, whole hours are counted from it (ClickHouse reads
    the projection, ~18 times fewer rows) and only the partial hours at the ends of the range and
    events with an expiry of their own are counted from the rows."""

    def bucketed(time: str) -> str:
        return f"toUnixTimestamp64Nano(toDateTime64({bucket.sql('{tz:String}', time)}, 9))" if bucket else "0"

    flt = replace(flt, start_ns=start_ns, end_ns=end_ns)
    where, params = flt.where()
    params["tz"] = str(tz)
    column = GROUPS.get(group_by, "''")
    first_hour = -(-start_ns // HOUR_NS) * HOUR_NS
    last_hour = end_ns // HOUR_NS * HOUR_NS
    if first_hour >= last_hour or not hourly_counts_apply(flt, group_by, bucket, tz, start_ns, end_ns):
        return (
            f"SELECT {bucketed('Timestamp')} AS t, {column} AS g, count() AS n "
            f"FROM {storage.names.logs} WHERE {where} GROUP BY t, g ORDER BY t, g"
        ), params
    whole = replace(flt, start_ns=None, end_ns=None)
    hours_where, hours_params = whole.where(None)
    params.update(hours_params, first_hour=first_hour, last_hour=last_hour)
    hours = (
        "toStartOfHour(Timestamp) >= fromUnixTimestamp64Nano({first_hour:Int64}) "
        "AND toStartOfHour(Timestamp) < fromUnixTimestamp64Nano({last_hour:Int64})"
    )
    in_hours = (
        "Timestamp >= fromUnixTimestamp64Nano({first_hour:Int64}) "
        "AND Timestamp < fromUnixTimestamp64Nano({last_hour:Int64})"
    )
    table = storage.names.logs
    parts = [
        # whole hours, events without an expiry of their own: the projection
        f"SELECT {bucketed('toStartOfHour(Timestamp)')} AS t, {column} AS g, count() AS n FROM {table} "
        f"WHERE {hours_where} AND ExpiresAt = 0 AND {hours} GROUP BY t, g",
        # the partial hours at both ends: rows (the primary key reads only those)
        f"SELECT {bucketed('Timestamp')} AS t, {column} AS g, count() AS n FROM {table} "
        f"WHERE {where} AND NOT ({in_hours}) GROUP BY t, g",
        # events that expire on their own, not yet expired (the ExpiresAt index skips the rest)
        f"SELECT {bucketed('Timestamp')} AS t, {column} AS g, count() AS n FROM {table} "
        f"WHERE {where} AND {in_hours} AND ExpiresAt != 0 GROUP BY t, g",
    ]
    union = "\n    UNION ALL\n    ".join(parts)
    return f"SELECT t, g, sum(n) AS n FROM (\n    {union}\n) GROUP BY t, g ORDER BY t, g", params


def count_events(
    storage: Storage, flt: EventFilter, group_by: str, bucket: Bucket | None, tz: ZoneInfo, start_ns: int, end_ns: int
) -> dict[str, Any]:
    """Counts of events per group (and per bucket), with empty buckets as zeros."""
    sql, params = _count_sql(storage, flt, group_by, bucket, tz, start_ns, end_ns)
    rows = storage.rows(sql, parameters=params)
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
        t: dict.fromkeys(groups, 0) for t in bucket_starts(storage, bucket, start_ns, end_ns, tz)
    }
    for row in rows:
        slot = counts.setdefault(row["t"], dict.fromkeys(groups, 0))
        name = row["g"] if row["g"] in keep else other
        slot[name or ""] = slot.get(name or "", 0) + row["n"]
    result["buckets"] = [{"t": format_time_ns(t), "t_unix_nano": t, "counts": counts[t]} for t in sorted(counts)]
    return result


def now_ns() -> int:
    return int(datetime.now(UTC).timestamp() * 1e9)
