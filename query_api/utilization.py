"""Utilization analytics, in ClickHouse SQL: how busy instruments were, who used them, where time went.

The SQL lives in `query_api/sql/`: `intervals.sql` turns events into intervals (actions paired
from their start and end events, busy time as their union per node, down time from node_stop to
node_start), and one file per report builds on it. This module fills in parameters, runs the
SQL and shapes the answers; it computes nothing per event itself.

Definitions (README "Utilization"):
- an action runs from its first start event (`action_start`, or `action_status_change` with
  `status` / `action_status` running, started or in_progress) to its first end event
  (`action_complete` / `_failed` / `_cancelled`, or a status of completed, succeeded, finished,
  failed, cancelled or aborted), matched by `lab.action.id` / `action_id`; without ids a node does
  one action at a time. An end with no start seen began `duration_ms` before it; a start with no
  end runs `open_limit` at most.
- busy: the union of a node's actions; available: the range up to now, less the node's down time
  (node_stop to node_start), plus any action time while down; idle = available - busy.
- actions are counted where they end; sessions are busy time joined across gaps shorter than `gap`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from labtel.collector.storage.client import Storage
from labtel.collector.storage.schema import not_expired
from labtel.query_api.events import EventFilter
from labtel.query_api.params import ParamError, format_time_ns
from labtel.query_api.stats import GROUPS, HOUR_NS, MAX_BUCKETS, Bucket, parse_bucket, sampled_starts

SECOND = 1_000_000_000
PERIODS = {"hour": "1h", "day": "1d", "week": "1w", "month": "1mo"}
"""Period names (MADSci's hourly/daily/weekly/monthly) → bucket widths."""
UNITS = {"node": "node", "workcell": "if(workcell != '', workcell, node)", "lab": "lab"}
"""What sessions are made of → the SQL naming it in `runs` (a node without a workcell is its own)."""
KEYS = ("user", "experiment", "workflow")
MAX_STEPS = 10 * 366 * 96


@dataclass(frozen=True)
class Scope:
    """What a utilization report covers and how intervals are made."""

    start_ns: int
    end_ns: int
    now_ns: int
    tz: str = "UTC"
    day_start_s: int = 0
    """Where calendar days (weeks, months) begin: seconds after midnight, local time (43200: noon)."""
    lookback_ns: int = 24 * 3600 * SECOND
    open_limit_ns: int = 3600 * SECOND
    gap_ns: int = 1800 * SECOND
    nodes: tuple[str, ...] = field(default_factory=tuple)

    def parameters(self) -> dict[str, Any]:
        return {
            "start": self.start_ns,
            "end": self.end_ns,
            "now": self.now_ns,
            "lookback": self.lookback_ns,
            "open_limit": self.open_limit_ns,
            "gap": self.gap_ns,
            "nodes": list(self.nodes),
            "tz": self.tz,
            "day_start": self.day_start_s,
        }

    @property
    def until_ns(self) -> int:
        """The end of what can have happened: the range's end, or now."""
        return max(self.start_ns, min(self.end_ns, self.now_ns))


@cache
def sql_file(name: str) -> str:
    """The text of one SQL file of `query_api/sql/`."""
    return resources.files("labtel.query_api").joinpath("sql", f"{name}.sql").read_text()


REPORT_FILES = {
    "nodes": ("intervals", "downtime", "seen", "nodes"),
    "periods": ("intervals", "downtime", "seen", "periods"),
    "sessions": ("intervals", "sessions"),
    "users": ("intervals", "users"),
    "actions": ("intervals",),
}
"""Each report's SQL: a chain of CTEs (every step named once) and the report's SELECT."""


KIND_BITS = 3
"""The low bits of a packed instant of a time line that say what it is (utilization.SWEEP)."""
MAX_SPAN_NS = 2 ** (63 - KIND_BITS) - 1
"""The longest range a report covers (~36 years): a packed instant is its time from the start of
the time line, shifted left by KIND_BITS, in an Int64."""
_SCALE = 2**KIND_BITS
_RANGE_ORIGIN = "{start:Int64}"
_BUCKETS_ORIGIN = "{bounds:Array(Int64)}[1]"
"""The origins of packed instants: the range's start; with buckets, the start of the first (at or
before the range's start). No instant of a time line comes before its origin."""


def _packed_line(origin: str, bounds: bool) -> str:
    """SQL: a node's time line in order, each instant packed with what it is into one Int64,
    (time - origin) * 2^KIND_BITS + kind; kinds: 1 a piece of its work (`starts`, `ends`) begins,
    2 one ends, 3 a down time (`downs`) begins, 4 one ends; with `bounds`, 5 a bound of a bucket
    ({bounds:Array(Int64)}). One sort of plain numbers: sorting instants, and kinds by instants,
    cost 10-25 % more of a report. At equal instants the order does not matter: the stretch
    between them is zero-long."""
    parts = [
        f"arrayMap(x -> (x - {origin}) * {_SCALE} + 1, starts)",
        f"arrayMap(x -> (x - {origin}) * {_SCALE} + 2, ends)",
        f"arrayMap(d -> (d.1 - {origin}) * {_SCALE} + 3, downs)",
        f"arrayMap(d -> (d.2 - {origin}) * {_SCALE} + 4, downs)",
    ]
    if bounds:
        parts.append(f"arrayMap(x -> (x - {origin}) * {_SCALE} + 5, {{bounds:Array(Int64)}})")
    return f"arraySort(arrayConcat({', '.join(parts)}))"


def _fits(origin: str) -> str:
    """SQL: true, or an error when the range is too long for packed instants from `origin` (they
    would wrap around). The API refuses such a range first; a dashboard shows this error."""
    too_long = f"least({{end:Int64}}, {{now:Int64}}) - {origin} > {MAX_SPAN_NS}"
    return f"throwIf({too_long}, 'utilization: a report covers at most 36 years') = 0"


def _unpacked(origin: str) -> str:
    """SQL: the packed time line `line` as (instants, kinds)."""
    return f"(arrayMap(x -> intDiv(x, {_SCALE}) + {origin}, line), arrayMap(x -> toInt8(x % {_SCALE}), line))"


def _running(begins: int, ends: int) -> str:
    """SQL: after each instant of the sweep but the last, how many of a kind of interval run."""
    return f"arrayPopBack(arrayCumSum(arrayMap(k -> multiIf(k = {begins}, 1, k = {ends}, -1, 0), sweep.2)))"


_BUSY_GAPS = "arrayMap((g, b) -> if(b > 0, g, 0), steps.1, steps.2)"
_DOWN_GAPS = "arrayMap((g, d) -> if(d > 0, g, 0), steps.1, steps.3)"
_OVERLAP_GAPS = "arrayMap((g, b, d) -> if(b > 0 AND d > 0, g, 0), steps.1, steps.2, steps.3)"


def _at_bounds(gaps: str) -> str:
    """SQL: per bucket, the sum of `gaps` over its stretches: the running total of `gaps` at each
    instant, taken at the bounds, less the one before (at equal instants the total is the same)."""
    return (
        f"arrayPopFront(arrayDifference(arrayFilter((x, k) -> k = 5, arrayConcat([0], arrayCumSum({gaps})), sweep.2)))"
    )


def _counts_at_bounds(kind: str) -> str:
    """SQL: per bucket, how many ends of `kind` the end sweep (`endings`) has in it."""
    return (
        f"arrayPopFront(arrayDifference(arrayFilter((c, k) -> k = 0, arrayCumSum(arrayMap(k -> toInt64({kind}), endings)), "
        "endings)))"
    )


SWEEP = {
    # A node's pieces of work and down times as one time line. Between two instants the union of
    # the pieces covers the stretch when the running count of pieces is above zero: busy time
    # without merging the intervals, and its part while down, in vectorized passes.
    "line": _packed_line(_RANGE_ORIGIN, bounds=False),
    "line_fits": _fits(_RANGE_ORIGIN),
    "sweep": _unpacked(_RANGE_ORIGIN),
    # With the bucket bounds on the time line, each stretch lies in the bucket of the bounds
    # passed before it.
    "bucket_line": _packed_line(_BUCKETS_ORIGIN, bounds=True),
    "bucket_line_fits": _fits(_BUCKETS_ORIGIN),
    "bucket_sweep": _unpacked(_BUCKETS_ORIGIN),
    # Per stretch between two instants: (its length, pieces running, downs running). A column of
    # its own (each step of a query selecting from the one before): ClickHouse computes a lambda
    # expression again wherever it is written.
    "steps": f"(arrayPopFront(arrayDifference(sweep.1)), {_running(1, 2)}, {_running(3, 4)})",
    "busy": f"arraySum({_BUSY_GAPS})",
    "overlap": f"arraySum({_OVERLAP_GAPS})",
    # Per bucket: (busy, down, overlap), the differences of their running totals at the bounds.
    "bucket_totals": "(" + ", ".join(_at_bounds(gaps) for gaps in (_BUSY_GAPS, _DOWN_GAPS, _OVERLAP_GAPS)) + ")",
    # The ends of the actions counted in the range (`end_times`, `end_outcomes`) and the bucket
    # bounds in time order, kinds: 0 a bound (first at an equal instant: an end on a bound is in
    # the bucket it begins), 1 + the outcome of an end.
    "end_sweep": f"arrayMap(x -> toUInt8(x % {_SCALE}), arraySort(arrayConcat("
    f"arrayMap(b -> (b - {_BUCKETS_ORIGIN}) * {_SCALE}, {{bounds:Array(Int64)}}), "
    f"arrayMap((t, o) -> (t - {_BUCKETS_ORIGIN}) * {_SCALE} + o + 1, end_times, end_outcomes))))",
    # Per bucket: (actions ending, completed, failed), the differences of running counts at the bounds.
    "end_counts": "(" + ", ".join(_counts_at_bounds(kind) for kind in ("k != 0", "k = 2", "k = 3")) + ")",
}
"""SQL: busy time (the union of the pieces from `starts` to `ends`) and the part of it within `downs`,
over the range (nodes.sql) and per bucket (periods.sql); their template fields."""


READ_RANGE = (
    "Timestamp >= fromUnixTimestamp64Nano({start:Int64} - {lookback:Int64}) "
    "AND Timestamp < fromUnixTimestamp64Nano({end:Int64} + {lookback:Int64})"
)
"""SQL: the events a report may read: its range and the lookback around it (where the look for
expired events is made)."""


WHOLE_HOURS = {
    "first_hour": f"intDiv({{start:Int64}} + {HOUR_NS - 1}, {HOUR_NS}) * {HOUR_NS}",
    "last_hour": f"intDiv(least({{end:Int64}}, {{now:Int64}}), {HOUR_NS}) * {HOUR_NS}",
}
"""SQL: the start of the first whole hour of the range, and the end of its last one (Unix ns); the
template fields of seen.sql, which reads those hours from the hourly nodes projection."""


def report_text(report: str, logs: str, **fields: str) -> str:
    """A report's SQL files, joined, reading the logs table `logs`, with the template fields filled in
    (its `{name:Type}` parameters left for the caller: the API binds them, dashboards put macros there)."""
    text = "\n".join(sql_file(name) for name in REPORT_FILES[report])
    unexpired = not_expired(logs, READ_RANGE)
    return Template(text).substitute({"logs": logs, "not_expired": unexpired, **SWEEP, **WHOLE_HOURS, **fields})


def report_sql(storage: Storage, report: str, **fields: str) -> str:
    """A report's SQL over `storage`'s logs table."""
    return report_text(report, storage.names.logs, **fields)


def period_bucket(name: str) -> Bucket:
    """A period name (hour, day, week, month, or a width such as 1h, 6h, 1d) as a bucket."""
    return parse_bucket(PERIODS.get(name, name))


def bucket_sql(bucket: Bucket, time: str, day_start_s: int = 0) -> str:
    """SQL: the start of the bucket holding `time` in the scope's zone; calendar days (weeks, months)
    begin at `day_start_s` local time (12:00 for observing nights), whatever the DST change."""
    if not bucket.calendar or not day_start_s:
        return bucket.sql("{tz:String}", time)
    seconds = f"(toHour({time}, {{tz:String}}) * 3600 + toMinute({time}, {{tz:String}}) * 60 + toSecond({time}, {{tz:String}}))"
    day = f"(toDate({time}, {{tz:String}}) - toUInt8({seconds} < {{day_start:Int64}}))"
    first = {"toStartOfDay": day, "toMonday": f"toMonday({day})", "toStartOfMonth": f"toStartOfMonth({day})"}[
        bucket.calendar
    ]
    hour, minute, second = day_start_s // 3600, day_start_s % 3600 // 60, day_start_s % 60
    return (
        f"makeDateTime(toYear({first}), toMonth({first}), toDayOfMonth({first}), {hour}, {minute}, {second}, "
        "{tz:String})"
    )


def bucket_bounds(storage: Storage, scope: Scope, bucket: Bucket) -> list[int]:
    """The starts of the buckets covering the scope, and the end of the last one, computed by the
    same SQL that puts events in buckets (so both agree across DST changes and odd offsets)."""
    step = 900 * SECOND  # every bucket start lies on a quarter hour, in any time zone
    reach = max(32 * 86_400, bucket.seconds + 3600) * SECOND  # past the end: where the last bucket ends
    if (scope.end_ns - scope.start_ns + reach) // step + 1 > MAX_STEPS:
        raise ParamError("start/end: utilization reports cover at most ten years")
    expression = bucket_sql(bucket, "t", scope.day_start_s)
    sampled = sampled_starts(storage, expression, scope.start_ns, scope.end_ns + reach, step, scope.parameters())
    # past 2106 ClickHouse's DateTime of an hour or day start overflows: such starts are left out
    starts = [b for b in sampled if b >= scope.start_ns - reach]
    bounds = [b for b in starts if b < scope.end_ns]
    bounds.append(next((b for b in starts if b >= scope.end_ns), scope.end_ns))  # at 2262: the range's end
    if len(bounds) - 1 > MAX_BUCKETS:
        raise ParamError(f"bucket: {bucket.text} makes {len(bounds) - 1} buckets; at most {MAX_BUCKETS}")
    return bounds


# --- shaping ---------------------------------------------------------------------------------------


def _seconds(ns: float) -> float:
    return round(ns / SECOND, 3)


def _percent(busy_ns: float, available_ns: float) -> float:
    return round(100.0 * busy_ns / available_ns, 3) if available_ns > 0 else 0.0


def _time_figures(available_ns: int, busy_ns: int) -> dict[str, Any]:
    return {
        "available_s": _seconds(available_ns),
        "busy_s": _seconds(busy_ns),
        "idle_s": _seconds(available_ns - busy_ns),
        "utilization_percent": _percent(busy_ns, available_ns),
    }


def _rollup(rows: list[dict[str, Any]]) -> dict[str, Any]:
    available, busy = sum(r["available_ns"] for r in rows), sum(r["busy_ns"] for r in rows)
    figures = {"nodes": len(rows), **_time_figures(available, busy)}
    for key in ("actions", "completed", "failed", "cancelled", "running"):
        figures[key] = sum(int(r.get(key, 0)) for r in rows)
    return figures


def _scope_info(scope: Scope) -> dict[str, Any]:
    return {
        "start": format_time_ns(scope.start_ns),
        "end": format_time_ns(scope.end_ns),
        "until": format_time_ns(scope.until_ns),
        "tz": scope.tz,
    }


# --- reports ---------------------------------------------------------------------------------------


def nodes_report(storage: Storage, scope: Scope) -> dict[str, Any]:
    """Per node: available, busy and idle time, utilization and actions; rolled up to workcells and the lab."""
    if scope.until_ns - scope.start_ns > MAX_SPAN_NS:
        raise ParamError("start/end: the nodes report covers at most 36 years")
    rows = storage.rows(report_sql(storage, "nodes"), parameters=scope.parameters())
    nodes = [
        {
            "node": r["node"],
            "workcell": r["workcell"],
            "lab": r["lab"],
            **_time_figures(r["available_ns"], r["busy_ns"]),
            "actions": r["actions"],
            "completed": r["completed"],
            "failed": r["failed"],
            "cancelled": r["cancelled"],
            "running": r["running"],
            "mean_action_s": round(float(r["mean_action_s"]), 3) if math.isfinite(r["mean_action_s"]) else 0.0,
            "p95_action_s": round(float(r["p95_action_s"]), 3) if math.isfinite(r["p95_action_s"]) else 0.0,
        }
        for r in rows
    ]
    workcells: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        workcells.setdefault(r["workcell"] or r["node"], []).append(r)
    return {
        **_scope_info(scope),
        "nodes": nodes,
        "workcells": [{"workcell": name, **_rollup(members)} for name, members in sorted(workcells.items())],
        "lab": _rollup(rows),
    }


def periods_report(storage: Storage, scope: Scope, bucket: Bucket) -> dict[str, Any]:
    """The node metrics per hour / day / week / month (empty buckets as zeros), per node and in all."""
    bounds = bucket_bounds(storage, scope, bucket)
    sql = report_sql(storage, "periods")
    rows = storage.rows(sql, parameters={**scope.parameters(), "bounds": bounds})
    index = {start: i for i, start in enumerate(bounds[:-1])}
    spans = [max(0, min(b, scope.until_ns) - max(a, scope.start_ns)) for a, b in itertools.pairwise(bounds)]
    nodes: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["node"] not in nodes:
            nodes[r["node"]] = {"cells": [dict.fromkeys(_CELL, 0) for _ in spans]}
        cell = nodes[r["node"]]["cells"][index[r["bucket_start_ns"]]]
        for key in _CELL:
            cell[key] += r[key]
    periods, every = [], []
    for i, span in enumerate(spans):
        members = [
            {"node": name, "available_ns": span - node["cells"][i]["down_ns"] + node["cells"][i]["overlap_ns"]}
            | node["cells"][i]
            for name, node in sorted(nodes.items())
        ]
        every += members
        periods.append(
            {
                "start": format_time_ns(bounds[i]),
                "end": format_time_ns(bounds[i + 1]),
                "start_unix_nano": bounds[i],
                **_rollup(members),
                "by_node": {
                    m["node"]: {
                        **_time_figures(m["available_ns"], m["busy_ns"]),
                        "actions": m["actions"],
                        "completed": m["completed"],
                        "failed": m["failed"],
                    }
                    for m in members
                },
            }
        )
    return {
        **_scope_info(scope),
        "bucket": bucket.text,
        "day_start_s": scope.day_start_s,
        "periods": periods,
        "total": _rollup(every) | {"nodes": len(nodes)},
    }


_CELL = ("busy_ns", "down_ns", "overlap_ns", "actions", "completed", "failed")


def sessions_report(storage: Storage, scope: Scope, unit: str) -> dict[str, Any]:
    """Sessions of each node (or workcell, or the lab): busy time joined across short idle gaps."""
    if unit not in UNITS:
        raise ParamError(f"unit: {unit!r} is not one of {', '.join(UNITS)}")
    sql = report_sql(storage, "sessions", unit=UNITS[unit])
    rows = storage.rows(sql, parameters=scope.parameters())
    sessions = []
    for r in rows:
        duration = r["end_ns"] - r["start_ns"]
        sessions.append(
            {
                unit: r["unit"],
                "start": format_time_ns(r["start_ns"]),
                "end": format_time_ns(r["end_ns"]),
                "duration_s": _seconds(duration),
                "busy_s": _seconds(r["busy_ns"]),
                "idle_s": _seconds(duration - r["busy_ns"]),
                "utilization_percent": _percent(r["busy_ns"], duration),
                "actions": r["actions"],
                "completed": r["completed"],
                "failed": r["failed"],
                "cancelled": r["cancelled"],
                "running": r["running"],
                "nodes": r["nodes"],
                "users": r["users"],
                "experiments": r["experiments"],
                "workflows": r["workflows"],
            }
        )
    return {**_scope_info(scope), "unit": unit, "gap_s": _seconds(scope.gap_ns), "sessions": sessions}


def users_report(storage: Storage, scope: Scope, by: str) -> dict[str, Any]:
    """Actions, action time, nodes and workflows per user (or experiment, or workflow)."""
    if by not in KEYS:
        raise ParamError(f"by: {by!r} is not one of {', '.join(KEYS)}")
    rows = storage.rows(report_sql(storage, "users", key=by), parameters=scope.parameters())
    entries = [
        {
            by: r["key"],
            "actions": r["actions"],
            "actions_completed": r["actions_completed"],
            "actions_failed": r["actions_failed"],
            "action_s": _seconds(r["action_ns"]),
            "nodes": r["nodes"],
            "workflows_completed": r["workflows_completed"],
            "workflows_failed": r["workflows_failed"],
            "workflows_aborted": r["workflows_aborted"],
            "workflows_running": r["workflows_running"],
            "workflow_s": _seconds(r["workflow_ns"]),
        }
        for r in rows
    ]
    return {**_scope_info(scope), "by": by, f"{by}s": entries}


TIMESERIES_GROUPS = ("event_type", "service", "severity", "node", "none")


def timeseries_report(
    storage: Storage,
    scope: Scope,
    flt: EventFilter,
    bucket: Bucket,
    group_by: str,
    history: int = 24,
    threshold: float = 3.0,
) -> dict[str, Any]:
    """Events per bucket and group, their error rate, and buckets whose count is far from the trailing
    baseline (the `history` buckets before): |count - mean| > threshold x max(stddev, sqrt(mean))."""
    if group_by not in TIMESERIES_GROUPS:
        raise ParamError(f"group_by: {group_by!r} is not one of {', '.join(TIMESERIES_GROUPS)}")
    bounds = bucket_bounds(storage, scope, bucket)
    flt = EventFilter(**{**flt.__dict__, "start_ns": scope.start_ns, "end_ns": scope.end_ns})
    where, params = flt.where(not_expired(storage.names.logs, flt.time_range()))
    sql = Template(sql_file("timeseries")).substitute(
        logs=storage.names.logs,
        where=where,
        bucket=bucket_sql(bucket, "Timestamp", scope.day_start_s),
        group=GROUPS.get(group_by, "''") if group_by != "none" else "''",
    )
    rows = storage.rows(sql, parameters={**params, **scope.parameters(), "bounds": bounds, "history": history})
    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        baseline, spread = float(r["baseline"] or 0.0), float(r["spread"] or 0.0)
        tolerance = max(spread, math.sqrt(max(baseline, 1.0)))
        enough = int(r["history"]) >= max(3, history // 2)
        score = (r["n"] - baseline) / tolerance if enough else 0.0
        series.setdefault(r["g"], []).append(
            {
                "t": format_time_ns(r["bucket_start_ns"]),
                "t_unix_nano": r["bucket_start_ns"],
                "count": r["n"],
                "errors": r["errors"],
                "error_rate": round(r["errors"] / r["n"], 4) if r["n"] else 0.0,
                "baseline": round(baseline, 3) if enough else None,
                "z": round(score, 3) if enough else None,
                "flagged": enough and abs(score) > threshold,
            }
        )
    return {
        **_scope_info(scope),
        "bucket": bucket.text,
        "group_by": group_by,
        "history": history,
        "threshold": threshold,
        "series": [{"group": g, "points": points} for g, points in sorted(series.items())],
    }
