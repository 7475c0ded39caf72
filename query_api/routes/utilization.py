"""`GET /utilization/...`: how busy instruments were, who used them, where time went (JSON or CSV)."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response

from labtel.collector.storage.client import Storage
from labtel.query_api.deps import get_storage
from labtel.query_api.events import EventFilter
from labtel.query_api.params import (
    MAX_TIME_NS,
    ParamError,
    ordered_range,
    parse_duration_ns,
    parse_time_ns,
    since_ns,
)
from labtel.query_api.routes.events import event_filter
from labtel.query_api.utilization import (
    KEYS,
    MAX_SPAN_NS,
    SECOND,
    TIMESERIES_GROUPS,
    UNITS,
    Scope,
    nodes_report,
    period_bucket,
    periods_report,
    sessions_report,
    timeseries_report,
    users_report,
)
from labtel.sdk.textform import digits

router = APIRouter(prefix="/utilization", tags=["utilization"])

DEFAULT_RANGE_NS = 7 * 86_400 * SECOND
Format = Literal["json", "csv"]

DEFINITIONS = """An action runs from its start event (`action_start`, or `action_status_change` with `status`
or `action_status` running / started / in_progress) to its end event (`action_complete`, `action_failed`,
`action_cancelled`, or a status completed / succeeded / finished / failed / cancelled / aborted), matched
by `lab.action.id` or `action_id`. Busy time is the union of a node's actions; available time is the range
up to now less the node's down time (node_stop to node_start); idle = available - busy. Actions are counted
where they end. Without `start`, the range is the 7 days before `end` (default: now)."""


def _duration_ns(value: str | None, name: str, default_ns: int) -> int:
    """A setting's duration, at most as long as a report's range can be."""
    return default_ns if value is None else parse_duration_ns(value, name, maximum_ns=MAX_SPAN_NS)


def _day_start(value: str | None) -> int:
    if not value:
        return 0
    text = value.strip()
    if ":" in text:
        hours, _, minutes = text.partition(":")
        if digits(hours) and digits(minutes) and int(hours) < 24 and int(minutes) < 60:
            return int(hours) * 3600 + int(minutes) * 60
    elif digits(text) and int(text) < 86_400:
        return int(text)
    raise ParamError(f"day_start: {value!r} is not a time of day such as 12:00 (or seconds after midnight)")


def utilization_scope(
    start: Annotated[
        str | None, Query(description="Start (RFC 3339 or epoch seconds); default: 7 days before end")
    ] = None,
    end: Annotated[str | None, Query(description="End (default: now)")] = None,
    since: Annotated[str | None, Query(description="Relative start instead of start: 24h, 7d, 30d")] = None,
    tz: Annotated[str, Query(description="Time zone of calendar periods")] = "UTC",
    day_start: Annotated[
        str | None, Query(description="Where days begin, e.g. 12:00 for observing nights (default 00:00)")
    ] = None,
    node: Annotated[list[str] | None, Query(description="Only these nodes (repeatable)")] = None,
    gap: Annotated[str | None, Query(description="Idle time that ends a session (default 30m)")] = None,
    open_limit: Annotated[str | None, Query(description="How long an action with no end event counts (1h)")] = None,
    lookback: Annotated[str | None, Query(description="How far past the range ends events are read (24h)")] = None,
) -> Scope:
    """The range and settings of a utilization request."""
    try:
        now = time.time_ns()
        end_ns = parse_time_ns(end, "end") if end else now
        if since:
            start_ns = since_ns(since, now)
        else:
            start_ns = parse_time_ns(start, "start") if start else end_ns - DEFAULT_RANGE_NS
        ordered_range(start_ns, end_ns, start_name="since" if since else "start")
        if end_ns == start_ns:
            raise ParamError("end: must be after start (utilization over no time is no figure)")
        lookback_ns = _duration_ns(lookback, "lookback", 24 * 3600 * SECOND)
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ParamError(f"tz: {tz!r} is not a time zone, e.g. UTC or Europe/Madrid") from None
        return Scope(
            start_ns=start_ns,
            end_ns=end_ns,
            now_ns=now,
            tz=tz,
            day_start_s=_day_start(day_start),
            lookback_ns=min(lookback_ns, MAX_TIME_NS - end_ns),  # no event is stored later: end + lookback fits Int64
            open_limit_ns=_duration_ns(open_limit, "open_limit", 3600 * SECOND),
            gap_ns=_duration_ns(gap, "gap", 1800 * SECOND),
            nodes=tuple(node or ()),
        )
    except ParamError as error:
        raise HTTPException(400, str(error)) from None


def _answer(
    fmt: Format,
    report: Callable[[], dict[str, Any]],
    rows: Callable[[dict[str, Any]], Iterable[dict[str, Any]]],
    name: str,
) -> Any:
    try:
        result = report()
    except ParamError as error:
        raise HTTPException(400, str(error)) from None
    if fmt == "json":  # orjson at once: FastAPI's encoder took 40-60 ms for the daily periods of 50 nodes
        return Response(orjson.dumps(result), media_type="application/json")
    buffer = io.StringIO()
    writer: csv.DictWriter[str] | None = None
    for row in rows(result):
        flat = {k: ";".join(v) if isinstance(v, list) else v for k, v in row.items()}
        if writer is None:
            writer = csv.DictWriter(buffer, fieldnames=list(flat), lineterminator="\n")
            writer.writeheader()
        writer.writerow(flat)
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="labtel-utilization-{name}.csv"'},
    )


ScopeDep = Annotated[Scope, Depends(utilization_scope)]
StorageDep = Annotated[Storage, Depends(get_storage)]
FormatQuery = Annotated[Format, Query(description="json, or csv for spreadsheets")]


@router.get(
    "/nodes",
    summary="Per-node utilization over a range, rolled up to workcells and the lab",
    description=f"{DEFINITIONS}\n\nCSV columns: node, workcell, lab, available_s, busy_s, idle_s, "
    "utilization_percent, actions, completed, failed, cancelled, running, mean_action_s, p95_action_s.",
)
def nodes(storage: StorageDep, scope: ScopeDep, format: FormatQuery = "json") -> Any:
    return _answer(format, lambda: nodes_report(storage, scope), lambda r: r["nodes"], "nodes")


def _period_rows(result: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for period in result["periods"]:
        frame = {"period_start": period["start"], "period_end": period["end"]}
        keys = ("available_s", "busy_s", "idle_s", "utilization_percent", "actions", "completed", "failed")
        yield frame | {"node": "(all)"} | {k: period[k] for k in keys}
        for node, figures in sorted(period["by_node"].items()):
            yield frame | {"node": node} | {k: figures[k] for k in keys}


@router.get(
    "/periods",
    summary="Utilization per hour, day, week or month",
    description=f"{DEFINITIONS}\n\n`bucket`: hour, day, week, month (or 1h, 6h, 1d ...), in `tz`, days beginning at "
    "`day_start`; every bucket is present, empty ones as zeros. CSV columns: period_start, period_end, node "
    "((all) for every node together), available_s, busy_s, idle_s, utilization_percent, actions, completed, failed.",
)
def periods(
    storage: StorageDep,
    scope: ScopeDep,
    bucket: Annotated[str, Query(description="hour, day, week or month")] = "day",
    format: FormatQuery = "json",
) -> Any:
    def report() -> dict[str, Any]:
        return periods_report(storage, scope, period_bucket(bucket))

    return _answer(format, report, _period_rows, f"periods-{bucket}")


@router.get(
    "/sessions",
    summary="Sessions of activity of nodes, workcells or the lab",
    description=f"{DEFINITIONS}\n\nA session is busy time joined across idle gaps shorter than `gap`. CSV columns: "
    "<unit>, start, end, duration_s, busy_s, idle_s, utilization_percent, actions, completed, failed, cancelled, "
    "running, nodes, users, experiments, workflows (lists joined by ;).",
)
def sessions(
    storage: StorageDep,
    scope: ScopeDep,
    unit: Annotated[str, Query(description=f"What sessions are of: {', '.join(UNITS)}")] = "node",
    format: FormatQuery = "json",
) -> Any:
    return _answer(format, lambda: sessions_report(storage, scope, unit), lambda r: r["sessions"], f"sessions-{unit}")


@router.get(
    "/users",
    summary="Time and actions per user, experiment or workflow",
    description=f"{DEFINITIONS}\n\nCSV columns: <by>, actions, actions_completed, actions_failed, action_s, nodes, "
    "workflows_completed, workflows_failed, workflows_aborted, workflows_running, workflow_s.",
)
def users(
    storage: StorageDep,
    scope: ScopeDep,
    by: Annotated[str, Query(description=f"{', '.join(KEYS)}")] = "user",
    format: FormatQuery = "json",
) -> Any:
    return _answer(format, lambda: users_report(storage, scope, by), lambda r: r[f"{by}s"], f"{by}s")


def _timeseries_rows(result: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for serie in result["series"]:
        for point in serie["points"]:
            yield {"group": serie["group"], **{k: v for k, v in point.items() if k != "t_unix_nano"}}


@router.get(
    "/timeseries",
    summary="Event rate per bucket, error rate, and changes in the rate",
    description="Events per bucket and group (filters as /events), the share of them at ERROR or worse, and each "
    "bucket's trailing baseline: a bucket is flagged when |count - mean| > threshold x max(stddev, sqrt(mean)) "
    "over the `history` buckets before it. CSV columns: group, t, count, errors, error_rate, baseline, z, flagged.",
)
def timeseries(
    storage: StorageDep,
    scope: ScopeDep,
    flt: Annotated[EventFilter, Depends(event_filter)],
    bucket: Annotated[str, Query(description="1h, 1d, 15m ...")] = "hour",
    group_by: Annotated[str, Query(description=f"{', '.join(TIMESERIES_GROUPS)}")] = "event_type",
    history: Annotated[int, Query(ge=2, le=1000, description="Buckets in the baseline")] = 24,
    threshold: Annotated[float, Query(gt=0, le=100, description="How many deviations flag a bucket")] = 3.0,
    format: FormatQuery = "json",
) -> Any:
    def report() -> dict[str, Any]:
        return timeseries_report(storage, scope, flt, period_bucket(bucket), group_by, history, threshold)

    return _answer(format, report, _timeseries_rows, "timeseries")
