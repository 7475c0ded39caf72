"""MADSci's utilization reports (sessions, periods, users), in MADSci's JSON and sectioned CSV
shapes, computed by labtel's utilization SQL (`labtel.query_api.utilization`).

What differs from MADSci's analyzers (labtel's definitions, README "Utilization"):
- a session is busy time of a workcell (or a node without one) joined across idle gaps shorter
  than 30 minutes, not the span from a `workcell_start` to its `workcell_stop`; with none in the
  range, one `default_analysis` session covers it, as in MADSci;
- a node's busy time is the union of its actions, available time the range less its down time
  (`node_stop` to `node_start`); a session's active time is the union over its nodes;
- periods are labtel's calendar buckets in the user's zone (DST aware); a period's utilization
  is its busy time over its available time, summed over nodes;
- users are `lab.user.id`, else `event_data.author`; workflows are counted where they end;
  per-workflow lists and the shortest / longest workflow are not computed (empty / null).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from labtel.collector.storage.client import Storage
from labtel.collector.storage.schema import not_expired
from labtel.query_api.params import format_time_ns, parse_time_ns
from labtel.query_api.utilization import (
    SECOND,
    Scope,
    bucket_bounds,
    bucket_sql,
    nodes_report,
    period_bucket,
    periods_report,
    sessions_report,
    users_report,
)

ANALYSIS_TYPES = {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month"}
MAX_DETAILED_SESSIONS = 100
"""Sessions whose node utilizations are computed (one query each); later ones list their nodes only."""
HOUR = 3600 * SECOND


def _hours(ns: float) -> float:
    return ns / HOUR


def _iso(ns: int) -> str:
    return format_time_ns(ns)[:26] + "+00:00"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def readable(seconds: float) -> dict[str, Any]:
    """A duration as MADSci shows one: display text, seconds, minutes, hours, primary unit."""
    hours, minutes = seconds / 3600, seconds / 60
    if seconds < 60:
        display, unit, value = f"{seconds:.1f}s", "seconds", seconds
    elif seconds < 3600:
        display, unit, value = f"{minutes:.1f}m", "minutes", minutes
    else:
        display, unit, value = f"{hours:.1f}h", "hours", hours
    return {
        "display": display,
        "seconds": seconds,
        "minutes": minutes,
        "hours": hours,
        "primary_unit": unit,
        "primary_value": value,
    }


def _short(name: str) -> str:
    return name[-8:]


def _node_entry(node: dict[str, Any]) -> dict[str, Any]:
    busy, available = float(node["busy_s"]), float(node["available_s"])
    idle = max(0.0, available - busy)
    return {
        "node_id": node["node"],
        "node_name": node["node"],
        "display_name": f"{node['node']} ({_short(node['node'])})",
        "utilization_percent": round(float(node["utilization_percent"]), 1),
        "state": "busy" if node.get("running") else "idle",
        "timing": {"busy_time": readable(busy), "idle_time": readable(idle), "total_time": readable(available)},
        "raw_hours": {"busy": busy / 3600, "idle": idle / 3600, "total": available / 3600},
        "busy_time_hours": busy / 3600,
        "idle_time_hours": idle / 3600,
        "actions": node["actions"],
        "completed": node["completed"],
        "failed": node["failed"],
    }


# --- sessions ------------------------------------------------------------------------------------


def session_report(storage: Storage, scope: Scope) -> dict[str, Any]:
    """MADSci's session-based utilization report (`GET /utilization/sessions`)."""
    found = sessions_report(storage, scope, "workcell")["sessions"]
    sessions: list[dict[str, Any]] = []
    for s in found:
        start, end = parse_time_ns(s["start"], "start"), parse_time_ns(s["end"], "end")
        sessions.append(
            {
                "type": "workcell" if s["workcell"] not in s["nodes"] else "node",
                "id": s["workcell"],
                "start": start,
                "end": end,
                "busy_ns": round(float(s["busy_s"]) * SECOND),
                "nodes": s["nodes"],
                "experiments": s["experiments"],
                "users": s["users"],
                "workflows": s["workflows"],
            }
        )
    if not sessions:
        sessions = [
            {
                "type": "default_analysis",
                "id": f"analysis_{scope.start_ns // SECOND}",
                "start": scope.start_ns,
                "end": scope.until_ns,
                "busy_ns": None,
                "nodes": None,
                "experiments": [],
                "users": [],
                "workflows": [],
            }
        ]
    details = [_session(storage, scope, s, i < MAX_DETAILED_SESSIONS) for i, s in enumerate(sessions)]
    return {
        "report_metadata": {
            "generated_at": _now_iso(),
            "analysis_start": _iso(scope.start_ns),
            "analysis_end": _iso(scope.end_ns),
            "total_sessions": len(details),
            "analysis_duration_hours": _hours(scope.end_ns - scope.start_ns),
            "method": "labtel utilization SQL: busy time joined across idle gaps shorter than "
            f"{scope.gap_ns // SECOND // 60} minutes, per workcell",
            "timezone": "UTC",
        },
        "overall_summary": _overall(details, scope),
        "session_details": details,
    }


def _session(storage: Storage, scope: Scope, session: dict[str, Any], detailed: bool) -> dict[str, Any]:
    start, end = session["start"], session["end"]
    nodes: dict[str, dict[str, Any]] = {}
    busy_ns = session["busy_ns"]
    if detailed and end > start:
        sub = replace(scope, start_ns=start, end_ns=end, nodes=tuple(session["nodes"] or scope.nodes))
        report = nodes_report(storage, sub)
        nodes = {n["node"]: _node_entry(n) for n in report["nodes"]}
        if busy_ns is None:
            busy_ns = int(sum(float(n["busy_s"]) for n in report["nodes"]) * SECOND)
            busy_ns = min(busy_ns, end - start)
    busy_ns = min(busy_ns or 0, max(end - start, 0))  # busy_s is rounded to the millisecond: never past the end
    duration_s, active_s = (end - start) / SECOND, busy_ns / SECOND
    return {
        "session_type": session["type"],
        "session_id": session["id"],
        "session_name": session["id"],
        "start_time": _iso(start),
        "end_time": _iso(end),
        "timing": {
            "duration": readable(duration_s),
            "active_time": readable(active_s),
            "idle_time": readable(duration_s - active_s),
        },
        "system_utilization_percent": round(100 * active_s / duration_s, 1) if duration_s > 0 else 0.0,
        "total_experiments": len(session["experiments"]),
        "experiment_details": [
            {"experiment_id": e, "experiment_name": None, "display_name": f"Experiment {_short(e)}"}
            for e in session["experiments"]
        ],
        "nodes_active": len(nodes) if nodes else len(session["nodes"] or []),
        "node_utilizations": nodes,
        "users": session["users"],
        "workflows": session["workflows"],
        "raw_hours": {"duration": duration_s / 3600, "active": active_s / 3600, "idle": (duration_s - active_s) / 3600},
        "duration_hours": duration_s / 3600,
        "active_time_hours": active_s / 3600,
    }


def _overall(details: list[dict[str, Any]], scope: Scope) -> dict[str, Any]:
    by_node: dict[str, list[dict[str, Any]]] = {}
    for session in details:
        for node_id, node in session["node_utilizations"].items():
            by_node.setdefault(node_id, []).append(node)
    return {
        "total_sessions": len(details),
        "total_system_runtime_hours": sum(s["duration_hours"] for s in details),
        "total_active_time_hours": sum(s["active_time_hours"] for s in details),
        "average_system_utilization_percent": (
            sum(s["system_utilization_percent"] for s in details) / len(details) if details else 0
        ),
        "total_experiments": sum(s["total_experiments"] for s in details),
        "nodes_tracked": len(by_node),
        "node_summary": {
            node_id: {
                "average_utilization_percent": sum(n["utilization_percent"] for n in entries) / len(entries),
                "total_busy_time_hours": sum(n["busy_time_hours"] for n in entries),
                "sessions_active": len(entries),
            }
            for node_id, entries in sorted(by_node.items())
        },
        "analysis_period": {
            "start_time": _iso(scope.start_ns),
            "end_time": _iso(scope.end_ns),
            "duration_hours": _hours(scope.end_ns - scope.start_ns),
        },
    }


# --- users -----------------------------------------------------------------------------------------


def user_report(storage: Storage, scope: Scope) -> dict[str, Any]:
    """MADSci's user utilization report (`GET /utilization/user` and `/utilization/users`)."""
    users = users_report(storage, scope, "user")["users"]
    workflows = users_report(storage, scope, "workflow")["workflows"]
    stats: dict[str, dict[str, Any]] = {}
    for u in users:
        ended = u["workflows_completed"] + u["workflows_failed"] + u["workflows_aborted"]
        total = ended + u["workflows_running"]
        if not total and not u["actions"]:
            continue
        runtime_h = u["workflow_s"] / 3600
        stats[u["user"]] = {
            "author": u["user"],
            "total_workflows": total,
            "completed_workflows": u["workflows_completed"],
            "failed_workflows": u["workflows_failed"],
            "cancelled_workflows": u["workflows_aborted"],
            "total_runtime_hours": round(runtime_h, 2),
            "average_workflow_duration_hours": round(runtime_h / ended, 3) if ended else 0,
            "shortest_workflow_hours": None,
            "longest_workflow_hours": None,
            "completion_rate_percent": round(100 * u["workflows_completed"] / total, 2) if total else 0,
            "workflows": [],
            "actions": u["actions"],
            "action_hours": round(u["action_s"] / 3600, 3),
            "nodes": u["nodes"],
        }
    total_workflows = sum(
        w["workflows_completed"] + w["workflows_failed"] + w["workflows_aborted"] + w["workflows_running"]
        for w in workflows
    )
    with_authors = sum(u["total_workflows"] for u in stats.values())
    completed = sum(w["workflows_completed"] for w in workflows)
    ended = sum(w["workflows_completed"] + w["workflows_failed"] + w["workflows_aborted"] for w in workflows)
    runtime_h = sum(w["workflow_s"] for w in workflows) / 3600
    return {
        "report_metadata": {
            "generated_at": _now_iso(),
            "analysis_start": _iso(scope.start_ns),
            "analysis_end": _iso(scope.end_ns),
            "total_workflows": total_workflows,
            "total_users": len(stats),
            "workflows_with_authors": with_authors,
            "workflows_without_authors": max(0, total_workflows - with_authors),
        },
        "system_summary": {
            "total_workflows": total_workflows,
            "total_runtime_hours": round(runtime_h, 2),
            "average_workflow_duration_hours": round(runtime_h / ended, 3) if ended else 0,
            "completion_rate_percent": round(100 * completed / total_workflows, 2) if total_workflows else 0,
            "workflows_with_known_authors": with_authors,
            "author_attribution_rate_percent": round(100 * with_authors / total_workflows, 2) if total_workflows else 0,
        },
        "user_utilization": stats,
    }


def user_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The compact user block MADSci adds to a periods report (`include_users`)."""
    users = sorted(report["user_utilization"].values(), key=lambda u: u["total_runtime_hours"], reverse=True)
    return {
        "total_users": len(users),
        "author_attribution_rate_percent": report["system_summary"]["author_attribution_rate_percent"],
        "top_users": [
            {
                key: u[key]
                for key in (
                    "author",
                    "total_workflows",
                    "total_runtime_hours",
                    "completion_rate_percent",
                    "average_workflow_duration_hours",
                )
            }
            for u in users[:10]
        ],
        "system_totals": report["system_summary"],
    }


# --- periods ---------------------------------------------------------------------------------------


def _display(analysis_type: str, start_ns: int, tz: str) -> dict[str, str]:
    local = datetime.fromtimestamp(start_ns / SECOND, ZoneInfo(tz))
    if analysis_type == "hourly":
        return {"type": "hour", "display": local.strftime("%Y-%m-%d %H:00"), "short": local.strftime("%H:00")}
    if analysis_type == "weekly":
        return {"type": "week", "display": f"Week of {local:%Y-%m-%d}", "short": f"W{local:%V}"}
    if analysis_type == "monthly":
        return {"type": "month", "display": local.strftime("%B %Y"), "short": local.strftime("%b %Y")}
    return {"type": "day", "display": local.strftime("%Y-%m-%d (%A)"), "short": local.strftime("%m/%d")}


def _experiments_per_bucket(storage: Storage, scope: Scope, bounds: list[int], analysis_type: str) -> dict[int, int]:
    bucket = period_bucket(ANALYSIS_TYPES[analysis_type])
    in_range = (
        "Timestamp >= fromUnixTimestamp64Nano({start:Int64}) AND Timestamp < fromUnixTimestamp64Nano({end:Int64})"
    )
    sql = (
        f"SELECT toUnixTimestamp64Nano(toDateTime64({bucket_sql(bucket, 'Timestamp')}, 9)) AS b, "
        f"uniqExact(ExperimentId) AS n FROM {storage.names.logs} "
        f"WHERE {not_expired(storage.names.logs, in_range)} AND ExperimentId != '' AND {in_range} GROUP BY b"
    )
    rows = storage.rows(sql, parameters={**scope.parameters(), "start": bounds[0], "end": bounds[-1]})
    return {int(r["b"]): int(r["n"]) for r in rows}


def _trend(values: list[float]) -> dict[str, Any]:
    active = [v for v in values if v > 0]
    if len(active) < 2:
        return {"direction": "insufficient_data", "change_percent": 0}
    first, last = active[0], active[-1]
    change = (last - first) / first * 100 if first else 0
    direction = "increasing" if change > 5 else "decreasing" if change < -5 else "stable"
    return {"direction": direction, "change_percent": round(change, 1)}


def _summary(points: list[dict[str, Any]], busy_key: str = "active_time_hours") -> dict[str, Any]:
    active = [p for p in points if p[busy_key] > 0]
    peak = max(points, key=lambda p: p["utilization"], default=None)
    return {
        "average_utilization": round(sum(p["utilization"] for p in active) / len(active), 1) if active else 0,
        "peak_utilization": peak["utilization"] if peak else 0,
        "peak_period": peak["period_display"] if peak and peak["utilization"] > 0 else None,
    }


def periods_report_madsci(storage: Storage, scope: Scope, analysis_type: str, include_users: bool) -> dict[str, Any]:
    """MADSci's time-series utilization report (`GET /utilization/periods`)."""
    bucket = period_bucket(ANALYSIS_TYPES[analysis_type])
    report = periods_report(storage, scope, bucket)
    bounds = bucket_bounds(storage, scope, bucket)
    experiments = _experiments_per_bucket(storage, scope, bounds, analysis_type)
    workcell_of = {n["node"]: n["workcell"] or n["node"] for n in nodes_report(storage, scope)["nodes"]}
    system: list[dict[str, Any]] = []
    nodes: dict[str, list[dict[str, Any]]] = {}
    workcells: dict[str, list[dict[str, Any]]] = {}
    for number, period in enumerate(report["periods"], start=1):
        info = _display(analysis_type, period["start_unix_nano"], scope.tz)
        frame = {
            "period_number": number,
            "period_type": info["type"],
            "period_display": info["display"],
            "period_info": info,
            "date": datetime.fromtimestamp(period["start_unix_nano"] / SECOND, ZoneInfo(scope.tz)).date().isoformat(),
            "start_time": period["start"],
        }
        system.append(
            frame
            | {
                "utilization": round(period["utilization_percent"], 1),
                "experiments": experiments.get(period["start_unix_nano"], 0),
                "runtime_hours": round(period["available_s"] / 3600, 3),
                "active_time_hours": round(period["busy_s"] / 3600, 3),
            }
        )
        cells: dict[str, list[dict[str, Any]]] = {}
        for node, figures in period["by_node"].items():
            point = frame | {
                "utilization": round(figures["utilization_percent"], 1),
                "busy_hours": round(figures["busy_s"] / 3600, 3),
                "available_hours": round(figures["available_s"] / 3600, 3),
                "active_time_hours": round(figures["busy_s"] / 3600, 3),
                "actions": figures["actions"],
            }
            nodes.setdefault(node, []).append(point)
            cells.setdefault(workcell_of.get(node, node), []).append(figures)
        for workcell, members in cells.items():
            busy, available = sum(m["busy_s"] for m in members), sum(m["available_s"] for m in members)
            workcells.setdefault(workcell, []).append(
                frame
                | {
                    "utilization": round(100 * busy / available, 1) if available else 0.0,
                    "runtime_hours": round(available / 3600, 3),
                    "active_time_hours": round(busy / 3600, 3),
                }
            )
    key = _summary(system)
    node_summary = {
        node: {
            "node_id": node,
            "node_name": node,
            "display_name": f"{node} ({_short(node)})",
            "average_utilization": _summary(points)["average_utilization"],
            "peak_utilization": _summary(points)["peak_utilization"],
            "peak_period": _summary(points)["peak_period"],
            "total_busy_hours": round(sum(p["busy_hours"] for p in points), 3),
        }
        for node, points in sorted(nodes.items())
    }
    workcell_summary = {
        workcell: {
            "workcell_id": workcell,
            "workcell_name": workcell,
            "display_name": f"{workcell} ({_short(workcell)})",
            **_summary(points),
            "total_experiments": 0,
            "total_runtime_hours": round(sum(p["runtime_hours"] for p in points), 3),
            "total_active_time_hours": round(sum(p["active_time_hours"] for p in points), 3),
        }
        for workcell, points in sorted(workcells.items())
    }
    experiment_rows = users_report(storage, scope, "experiment")["experiments"]
    result: dict[str, Any] = {
        "summary_metadata": {
            "analysis_type": analysis_type,
            "generated_at": _now_iso(),
            "period_start": _iso(scope.start_ns),
            "period_end": _iso(scope.end_ns),
            "user_timezone": scope.tz,
            "total_periods": len(system),
            "method": "labtel utilization SQL: calendar periods in the user's time zone",
        },
        "key_metrics": {
            **key,
            "total_experiments": len(experiment_rows),
            "total_runtime_hours": round(sum(p["runtime_hours"] for p in system), 2),
            "total_active_time_hours": round(sum(p["active_time_hours"] for p in system), 2),
            "active_periods": sum(1 for p in system if p["active_time_hours"] > 0),
            "total_periods": len(system),
        },
        "node_summary": node_summary,
        "workcell_summary": workcell_summary,
        "trends": {
            "utilization_trend": _trend([p["utilization"] for p in system]),
            "experiment_trend": _trend([float(p["experiments"]) for p in system]),
        },
        "experiment_details": {
            "total_experiments": len(experiment_rows),
            "experiments": [
                {
                    "experiment_id": e["experiment"],
                    "experiment_name": e["experiment"],
                    "start_time": None,
                    "end_time": None,
                    "status": "",
                    "duration_hours": round(e["action_s"] / 3600, 3),
                    "duration_display": readable(float(e["action_s"]))["display"],
                }
                for e in experiment_rows[:50]
            ],
        },
        "time_series": {"system": system, "nodes": nodes, "workcells": workcells},
    }
    if include_users:
        ordered: dict[str, Any] = {}
        for name, value in result.items():
            ordered[name] = value
            if name == "key_metrics":
                ordered["user_utilization"] = user_summary(user_report(storage, scope))
        result = ordered
    return result


# --- CSV (MADSci's sectioned files) ---------------------------------------------------------------


def _csv(rows: Iterable[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow(["" if value is None else value for value in row])
    return buffer.getvalue()


def _labelled(title: str, values: dict[str, Any], fields: Iterable[tuple[str, str]]) -> Iterable[list[Any]]:
    """A CSV section of label, value rows (MADSci's metadata and summary blocks), and a blank row."""
    yield [title]
    for label, name in fields:
        yield [label, values.get(name, "")]
    yield []


def _table(columns: Sequence[tuple[str, str]], items: Iterable[dict[str, Any]]) -> Iterable[list[Any]]:
    """A CSV table (MADSci's detail sections): a row of column labels, then each item's values."""
    yield [label for label, _ in columns]
    for item in items:
        yield [item[name] for _, name in columns]


def periods_csv(report: dict[str, Any]) -> str:
    """The periods report as MADSci's sectioned CSV (metadata, key metrics, time series, nodes, ...)."""
    meta, key = report["summary_metadata"], report["key_metrics"]

    def rows() -> Iterable[list[Any]]:
        yield ["=== UTILIZATION PERIODS REPORT ==="]
        yield []
        yield from _labelled(
            "Metadata",
            meta,
            (
                ("Analysis Type", "analysis_type"),
                ("Generated At", "generated_at"),
                ("Period Start", "period_start"),
                ("Period End", "period_end"),
                ("User Timezone", "user_timezone"),
                ("Total Periods", "total_periods"),
            ),
        )
        yield from _labelled(
            "Key Metrics",
            key,
            (
                ("Average Utilization (%)", "average_utilization"),
                ("Peak Utilization (%)", "peak_utilization"),
                ("Peak Period", "peak_period"),
                ("Total Experiments", "total_experiments"),
                ("Total Runtime (hours)", "total_runtime_hours"),
                ("Total Active Time (hours)", "total_active_time_hours"),
                ("Active Periods", "active_periods"),
                ("Total Periods", "total_periods"),
            ),
        )
        yield ["=== TIME SERIES DATA ==="]
        yield from _table(
            (
                ("Period Number", "period_number"),
                ("Period Type", "period_type"),
                ("Period Display", "period_display"),
                ("Date", "date"),
                ("Start Time", "start_time"),
                ("Utilization (%)", "utilization"),
                ("Experiments", "experiments"),
                ("Runtime (hours)", "runtime_hours"),
            ),
            report["time_series"]["system"],
        )
        yield []
        yield ["=== NODE SUMMARY ==="]
        if report["node_summary"]:
            yield from _table(
                (
                    ("Node ID", "node_id"),
                    ("Node Name", "node_name"),
                    ("Display Name", "display_name"),
                    ("Average Utilization (%)", "average_utilization"),
                    ("Peak Utilization (%)", "peak_utilization"),
                    ("Peak Period", "peak_period"),
                    ("Total Busy (hours)", "total_busy_hours"),
                ),
                report["node_summary"].values(),
            )
        elif meta.get("analysis_type") == "daily":
            yield ["No node activity detected during this daily analysis period"]
        else:
            yield ["No node data available for this time period"]
        yield []
        if report["workcell_summary"]:
            yield ["=== WORKCELL SUMMARY ==="]
            yield from _table(
                (
                    ("Workcell ID", "workcell_id"),
                    ("Workcell Name", "workcell_name"),
                    ("Display Name", "display_name"),
                    ("Average Utilization (%)", "average_utilization"),
                    ("Peak Utilization (%)", "peak_utilization"),
                    ("Peak Period", "peak_period"),
                    ("Total Experiments", "total_experiments"),
                    ("Total Runtime (hours)", "total_runtime_hours"),
                    ("Total Active Time (hours)", "total_active_time_hours"),
                ),
                report["workcell_summary"].values(),
            )
            yield []
        users = report.get("user_utilization", {}).get("top_users", [])
        if users:
            yield ["=== USER UTILIZATION ==="]
            yield from _table(
                (
                    ("Author", "author"),
                    ("Total Workflows", "total_workflows"),
                    ("Total Runtime (hours)", "total_runtime_hours"),
                    ("Completion Rate (%)", "completion_rate_percent"),
                    ("Average Workflow Duration (hours)", "average_workflow_duration_hours"),
                ),
                users,
            )
            yield []
        experiments = report["experiment_details"]
        if experiments["experiments"]:
            yield ["=== EXPERIMENT DETAILS ==="]
            yield from _table(
                (
                    ("Experiment ID", "experiment_id"),
                    ("Experiment Name", "experiment_name"),
                    ("Start Time", "start_time"),
                    ("End Time", "end_time"),
                    ("Status", "status"),
                    ("Duration (hours)", "duration_hours"),
                    ("Duration Display", "duration_display"),
                ),
                experiments["experiments"],
            )
            remaining = experiments["total_experiments"] - len(experiments["experiments"])
            if remaining > 0:
                yield [f"... and {remaining} more experiments"]
            yield []

    return _csv(rows())


def sessions_csv(report: dict[str, Any]) -> str:
    """The session report as MADSci's sectioned CSV."""
    meta, overall = report["report_metadata"], report["overall_summary"]

    def rows() -> Iterable[list[Any]]:
        yield ["=== UTILIZATION REPORT ==="]
        yield []
        yield from _labelled(
            "Report Metadata",
            meta,
            (
                ("Generated At", "generated_at"),
                ("Analysis Start", "analysis_start"),
                ("Analysis End", "analysis_end"),
                ("Total Sessions", "total_sessions"),
                ("Analysis Duration (hours)", "analysis_duration_hours"),
            ),
        )
        yield from _labelled(
            "Overall Summary",
            overall,
            (
                ("Total Sessions", "total_sessions"),
                ("Total System Runtime (hours)", "total_system_runtime_hours"),
                ("Total Active Time (hours)", "total_active_time_hours"),
                ("Average System Utilization (%)", "average_system_utilization_percent"),
                ("Total Experiments", "total_experiments"),
                ("Nodes Tracked", "nodes_tracked"),
            ),
        )
        if report["session_details"]:
            yield ["=== SESSION DETAILS ==="]
            yield from _table(
                (
                    ("Session Type", "session_type"),
                    ("Session Name", "session_name"),
                    ("Start Time", "start_time"),
                    ("End Time", "end_time"),
                    ("Duration (hours)", "duration_hours"),
                    ("System Utilization (%)", "system_utilization_percent"),
                    ("Total Experiments", "total_experiments"),
                    ("Nodes Active", "nodes_active"),
                ),
                report["session_details"],
            )
            yield []
        if overall["node_summary"]:
            yield ["=== NODE SUMMARY ==="]
            yield from _table(
                (
                    ("Node ID", "node_id"),
                    ("Average Utilization (%)", "average_utilization_percent"),
                    ("Total Busy Time (hours)", "total_busy_time_hours"),
                    ("Sessions Active", "sessions_active"),
                ),
                ({**n, "node_id": node_id} for node_id, n in overall["node_summary"].items()),
            )

    return _csv(rows())


def users_csv(report: dict[str, Any]) -> str:
    """The user report as MADSci's detailed sectioned CSV."""
    meta, system = report["report_metadata"], report["system_summary"]

    def rows() -> Iterable[list[Any]]:
        yield ["=== DETAILED USER UTILIZATION REPORT ==="]
        yield []
        yield from _labelled(
            "Report Metadata",
            meta,
            (
                ("Generated At", "generated_at"),
                ("Analysis Start", "analysis_start"),
                ("Analysis End", "analysis_end"),
                ("Total Users", "total_users"),
                ("Total Workflows", "total_workflows"),
            ),
        )
        yield from _labelled(
            "System Summary",
            system,
            (
                ("Total Workflows", "total_workflows"),
                ("Total Runtime (hours)", "total_runtime_hours"),
                ("Average Workflow Duration (hours)", "average_workflow_duration_hours"),
                ("Completion Rate (%)", "completion_rate_percent"),
                ("Author Attribution Rate (%)", "author_attribution_rate_percent"),
            ),
        )
        yield ["=== USER DETAILS ==="]
        yield from _table(
            (
                ("Author", "author"),
                ("Total Workflows", "total_workflows"),
                ("Completed", "completed_workflows"),
                ("Failed", "failed_workflows"),
                ("Cancelled", "cancelled_workflows"),
                ("Total Runtime (hours)", "total_runtime_hours"),
                ("Avg Duration (hours)", "average_workflow_duration_hours"),
                ("Completion Rate (%)", "completion_rate_percent"),
                ("Shortest (hours)", "shortest_workflow_hours"),
                ("Longest (hours)", "longest_workflow_hours"),
            ),
            report["user_utilization"].values(),
        )

    return _csv(rows())
