"""labtel's Grafana dashboards and provisioning, generated: the one source of truth (`make dashboards`).

    python dashboards/generate.py           # write dashboards/json/*.json and dashboards/provisioning/
    python dashboards/generate.py --check   # exit 1 if the committed files differ from what this makes

Every panel reads labtel's tables through the official ClickHouse datasource
(grafana-clickhouse-datasource, provisioned with uid `labtel-clickhouse`). The utilization panels
run the very SQL of `GET /utilization/...` (query_api/sql), with Grafana's macros in place of the
API's parameters, so a number on a dashboard is the API's number.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labtel.query_api.utilization import SECOND, report_text

HERE = Path(__file__).resolve().parent
DATASOURCE_UID = "labtel-clickhouse"
DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": DATASOURCE_UID}
SCHEMA_VERSION = 39
LOGS = "${database}.otel_logs"
FORMAT = {"timeseries": 0, "table": 1, "logs": 2}

# The API's parameters, as Grafana expressions (macros expanded by the datasource, variables by Grafana).
GRAFANA_PARAMETERS = {
    "{start:Int64}": "(toInt64(toUnixTimestamp($__fromTime)) * 1000000000)",
    "{end:Int64}": "(toInt64(toUnixTimestamp($__toTime)) * 1000000000)",
    "{now:Int64}": "toUnixTimestamp64Nano(now64(9))",
    "{lookback:Int64}": str(24 * 3600 * SECOND),
    "{open_limit:Int64}": str(3600 * SECOND),
    "{gap:Int64}": str(1800 * SECOND),
    "{nodes:Array(String)}": "CAST([], 'Array(String)')",
    "{tz:String}": "'${tz}'",
    "{day_start:Int64}": "0",
}


_PARAMETER = re.compile(r"\{[a-z_]+:[A-Z][\w()]*\}")


def grafana_sql(sql: str, **extra: str) -> str:
    """API SQL with Grafana's macros and variables in place of its parameters."""
    for parameter, expression in {**GRAFANA_PARAMETERS, **extra}.items():
        sql = sql.replace(parameter, expression)
    leftover = _PARAMETER.search(sql)
    if leftover:
        raise ValueError(f"a parameter is left in dashboard SQL: {leftover.group(0)}")
    return sql


def day_bounds() -> str:
    """SQL: the starts of the days of the dashboard's range in `${tz}`, and the day after (the
    bounds of `GET /utilization/periods?bucket=day`)."""
    first = "toStartOfDay($__fromTime, '${tz}')"
    return (
        f"arrayMap(i -> toUnixTimestamp64Nano(toDateTime64({first} + toIntervalDay(i), 9)), "
        f"range(toUInt64(dateDiff('day', {first}, $__toTime) + 2)))"
    )


DAILY_TOOLTIP = {"busy_hours": "h", "available_hours": "h", "actions": "short"}
"""The daily utilization's other columns: in its tooltip, not drawn on its percent axis."""


def tooltip_only(column: str, unit: str) -> dict[str, Any]:
    """A field override: the column is in the tooltip only, in its own unit."""
    return {
        "matcher": {"id": "byName", "options": column},
        "properties": [
            {"id": "unit", "value": unit},
            {"id": "custom.hideFrom", "value": {"viz": True, "legend": True, "tooltip": False}},
        ],
    }


def nodes_sql() -> str:
    """Per-node utilization over the dashboard's range: `GET /utilization/nodes`."""
    report = grafana_sql(report_text("nodes", LOGS))
    return f"""SELECT
    node,
    round(100 * busy_ns / available_ns, 2) AS utilization_percent,
    round(busy_ns / 3600e9, 2) AS busy_hours,
    round((available_ns - busy_ns) / 3600e9, 2) AS idle_hours,
    actions,
    failed
FROM (
{report}
)
WHERE available_ns > 0
ORDER BY utilization_percent DESC"""


def daily_sql() -> str:
    """Utilization of all nodes per day (every day, empty ones as zeros): `GET /utilization/periods?bucket=day`."""
    report = grafana_sql(report_text("periods", LOGS), **{"{bounds:Array(Int64)}": day_bounds()})
    start, end, now = (GRAFANA_PARAMETERS[f"{{{n}:Int64}}"] for n in ("start", "end", "now"))
    return f"""SELECT
    fromUnixTimestamp64Nano(d.b) AS time,
    round(if((p.nodes * d.span - p.down + p.overlap AS available_ns) > 0, 100 * p.busy / available_ns, 0), 2)
        AS utilization_percent,
    round(p.busy / 3600e9, 2) AS busy_hours,
    round(available_ns / 3600e9, 2) AS available_hours,
    p.actions AS actions
FROM (
    SELECT pair.1 AS b, greatest(0, least(pair.2, {end}, {now}) - greatest(pair.1, {start})) AS span
    FROM (SELECT arrayJoin(arrayZip(arrayPopBack(bounds), arrayPopFront(bounds))) AS pair
          FROM (SELECT {day_bounds()} AS bounds))
    WHERE pair.1 < {end}
) AS d
LEFT JOIN (
    SELECT bucket_start_ns AS b, max(nodes) AS nodes, sum(busy_ns) AS busy, sum(down_ns) AS down,
        sum(overlap_ns) AS overlap, sum(actions) AS actions
    FROM (SELECT *, uniqExact(node) OVER () AS nodes FROM (
{report}
    ))
    GROUP BY b
) AS p ON p.b = d.b
ORDER BY time"""


def durations_sql() -> str:
    """Action durations per node over the range (the actions of `GET /utilization/nodes`)."""
    return f"""{grafana_sql(report_text("actions", LOGS))}
SELECT
    node,
    count() AS actions,
    round(quantileExact(0.5)((e_raw - s_raw) / 1e9), 2) AS p50_seconds,
    round(quantileExact(0.95)((e_raw - s_raw) / 1e9), 2) AS p95_seconds,
    countIf(outcome = 2) AS failed
FROM actions
WHERE counted AND outcome != 0
GROUP BY node
ORDER BY p95_seconds DESC"""


# --- dashboard model ------------------------------------------------------------------------------


@dataclass
class Dashboard:
    """A Grafana dashboard being laid out: panels fill rows of 24 columns from left to right."""

    uid: str
    title: str
    description: str
    tags: list[str]
    variables: list[dict[str, Any]] = field(default_factory=list)
    panels: list[dict[str, Any]] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _row_h: int = 0

    def add(
        self,
        kind: str,
        title: str,
        sql: str,
        w: int,
        h: int,
        description: str = "",
        fmt: str = "table",
        options: dict[str, Any] | None = None,
        field_config: dict[str, Any] | None = None,
        unit: str = "",
    ) -> None:
        """A panel of type `kind` with one SQL query, placed after the previous one."""
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        defaults: dict[str, Any] = {"unit": unit} if unit else {}
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": kind,
                "title": title,
                "description": description,
                "datasource": DATASOURCE,
                "gridPos": {"x": self._x, "y": self._y, "w": w, "h": h},
                "targets": [
                    {
                        "refId": "A",
                        "datasource": DATASOURCE,
                        "editorType": "sql",
                        "queryType": fmt,
                        "format": FORMAT[fmt],
                        "rawSql": sql,
                    }
                ],
                "options": options or {},
                "fieldConfig": field_config or {"defaults": defaults, "overrides": []},
            }
        )
        self._x += w
        self._row_h = max(self._row_h, h)

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["labtel", *self.tags],
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "editable": True,
            "graphTooltip": 1,
            "timezone": "browser",
            "time": {"from": "now-24h", "to": "now"},
            "refresh": "1m",
            "templating": {"list": [database_variable(), *self.variables]},
            "annotations": {"list": []},
            "links": [
                {"type": "dashboards", "tags": ["labtel"], "asDropdown": True, "title": "labtel", "keepTime": True}
            ],
            "panels": self.panels,
        }


def database_variable() -> dict[str, Any]:
    return {
        "name": "database",
        "label": "Database",
        "type": "constant",
        "query": "otel",
        "hide": 2,
        "current": {"text": "otel", "value": "otel"},
    }


def query_variable(name: str, label: str, sql: str, multi: bool = True) -> dict[str, Any]:
    """A variable whose values a `SELECT DISTINCT ...` gives, with All."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": sql,
        "definition": sql,
        "refresh": 2,
        "multi": multi,
        "includeAll": True,
        "allValue": "",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


def text_variable(name: str, label: str, default: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "textbox",
        "query": default,
        "current": {"text": default, "value": default},
    }


def tz_variable() -> dict[str, Any]:
    zones = ["UTC", "Europe/Madrid", "Atlantic/Canary", "America/Chicago", "America/New_York", "Asia/Tokyo"]
    return {
        "name": "tz",
        "label": "Time zone of days",
        "type": "custom",
        "query": ",".join(zones),
        "options": [{"text": z, "value": z, "selected": z == "UTC"} for z in zones],
        "current": {"text": "UTC", "value": "UTC"},
    }


def distinct(column: str, where: str = "1") -> str:
    """SQL of a variable's choices, as the datasource reads them: a value first, its text second.
    The value is the text's hex, so that no character of it (a quote, a backslash, a comma) can
    bend the SQL or the list it goes into (`one_of`); the list shows the text."""
    return (
        f"SELECT DISTINCT hex({column}) AS value, {column} AS text FROM {LOGS} "
        f"WHERE $__timeFilter(Timestamp) AND {column} != '' AND {where} ORDER BY text LIMIT 500"
    )


def text(variable: str) -> str:
    """SQL: a textbox variable's value as a string, whatever it holds. Percent-encoded by Grafana,
    the literal has no `'` or `\\` left to break it (`singlequote` leaves a `\\`, which ClickHouse
    reads as an escape)."""
    return f"decodeURLComponent('${{{variable}:percentencode}}')"


def one_of(column: str, variable: str) -> str:
    """SQL: `column` is one of a multi-value variable's values (any, when All or nothing is chosen).

    The choices' values are hex (see `distinct`), percent-encoded on the way in as text is: Grafana
    joins several as `{a,b}`, which no hex value can blur, and nothing a user types into the box can
    end the literal (a typed value that is not hex simply matches nothing)."""
    chosen = f"splitByChar(',', trim(BOTH '{{}}' FROM {text(variable)}))"
    return f"$__conditionalAll({column} IN arrayMap(h -> unhex(h), {chosen}), ${variable})"


SEARCH, RUN = text("search"), text("run")
SERVICE, NODE = one_of("ServiceName", "service"), one_of("NodeId", "node")


# --- the dashboards -------------------------------------------------------------------------------


def lab_overview() -> Dashboard:
    board = Dashboard(
        "labtel-lab-overview", "Lab overview", "The lab at a glance: events, errors, alerts, runs.", ["lab"]
    )
    board.variables = [query_variable("service", "Service", distinct("ServiceName"))]
    where = f"$__timeFilter(Timestamp) AND {SERVICE}"
    board.add("stat", "Events", f"SELECT count() AS events FROM {LOGS} WHERE {where}", 6, 4, fmt="table")
    board.add(
        "stat", "Errors", f"SELECT countIf(SeverityNumber >= 17) AS errors FROM {LOGS} WHERE {where}", 6, 4, fmt="table"
    )
    board.add(
        "stat", "Nodes reporting", f"SELECT uniqExact(NodeId) AS nodes FROM {LOGS} WHERE {where} AND NodeId != ''", 6, 4
    )
    board.add(
        "stat", "Services reporting", f"SELECT uniqExact(ServiceName) AS services FROM {LOGS} WHERE {where}", 6, 4
    )
    board.add(
        "timeseries",
        "Events per minute by severity",
        f"SELECT toStartOfInterval(Timestamp, INTERVAL greatest(60, $__interval_s) second) AS time, "
        f"SeverityText AS severity, count() AS events\nFROM {LOGS}\nWHERE {where}\nGROUP BY time, severity\nORDER BY time",
        16,
        8,
        fmt="timeseries",
        options={"legend": {"displayMode": "list", "placement": "bottom"}},
        field_config={"defaults": {"custom": {"drawStyle": "bars", "stacking": {"mode": "normal"}}}, "overrides": []},
    )
    board.add(
        "barchart",
        "Errors by node",
        f"SELECT if(NodeId != '', NodeId, ServiceName) AS node, count() AS errors\nFROM {LOGS}\n"
        f"WHERE {where} AND SeverityNumber >= 17\nGROUP BY node\nORDER BY errors DESC\nLIMIT 20",
        8,
        8,
        options={"orientation": "horizontal"},
    )
    board.add(
        "table",
        "Latest alerts",
        "SELECT FiredAt AS time, Rule AS rule, Kind AS kind, Level AS level, Summary AS summary,\n"
        "    EventCount AS events, Status AS delivery\nFROM ${database}.labtel_alerts FINAL\n"
        "WHERE $__timeFilter(FiredAt)\nORDER BY FiredAt DESC\nLIMIT 50",
        12,
        9,
        description="What the alerts exporter fired (its history, GET /alerts), and how delivery went.",
    )
    board.add(
        "table",
        "Latest errors and flagged events",
        "SELECT Timestamp AS time, ServiceName AS service, NodeId AS node, EventType AS event_type, "
        f"SeverityText AS severity, Body AS message\nFROM {LOGS}\n"
        f"WHERE {where} AND (SeverityNumber >= 17 OR LogAttributes['lab.alert'] = 'true' OR LogAttributes['alert'] = 'true')\n"
        "ORDER BY Timestamp DESC\nLIMIT 50",
        12,
        9,
        description="Events at ERROR or worse, and events flagged as alerts.",
    )
    board.add(
        "table",
        "Active runs",
        "SELECT RunId AS run, any(ServiceName) AS service, min(Timestamp) AS started, "
        "dateDiff('minute', min(Timestamp), now()) AS minutes\n"
        f"FROM {LOGS}\nWHERE Timestamp >= $__fromTime - INTERVAL 7 DAY AND RunId != '' AND {SERVICE}\n"
        "  AND EventType IN ('run_start', 'run_complete', 'run_fail', 'run_cancel')\n"
        "GROUP BY RunId\nHAVING countIf(EventType = 'run_start') > 0 AND countIf(EventType != 'run_start') = 0\n"
        "ORDER BY started DESC\nLIMIT 50",
        12,
        9,
        description="Runs started (up to a week before the range) with no end event yet.",
    )
    board.add(
        "bargauge",
        "Top event types",
        f"SELECT EventType AS event_type, count() AS events\nFROM {LOGS}\nWHERE {where} AND EventType != ''\n"
        "GROUP BY event_type\nORDER BY events DESC\nLIMIT 15",
        12,
        9,
        options={"orientation": "horizontal", "displayMode": "gradient"},
    )
    return board


def utilization() -> Dashboard:
    board = Dashboard(
        "labtel-utilization",
        "Instrument utilization",
        "How busy the instruments were: the SQL of GET /utilization (busy = union of a node's actions).",
        ["utilization"],
    )
    board.variables = [tz_variable()]
    board.add(
        "bargauge",
        "Utilization per node",
        nodes_sql(),
        12,
        10,
        options={
            "orientation": "horizontal",
            "displayMode": "gradient",
            "reduceOptions": {"values": True, "calcs": [], "fields": "/^utilization_percent$/"},
        },
        field_config={"defaults": {"unit": "percent", "min": 0, "max": 100}, "overrides": []},
    )
    board.add("table", "Busy and idle hours per node", nodes_sql(), 12, 10)
    board.add(
        "timeseries",
        "Daily utilization",
        daily_sql(),
        16,
        8,
        fmt="timeseries",
        description="All nodes together, per day in the chosen time zone (busy and available hours and "
        "actions in the tooltip).",
        field_config={
            "defaults": {"unit": "percent", "custom": {"drawStyle": "bars"}},
            "overrides": [tooltip_only(name, unit) for name, unit in DAILY_TOOLTIP.items()],
        },
    )
    board.add("table", "Action durations (p50 / p95)", durations_sql(), 8, 8, unit="s")
    return board


def explorer() -> Dashboard:
    board = Dashboard(
        "labtel-explorer", "Event explorer", "Find events: filters, free text, run id; trace links.", ["events"]
    )
    board.variables = [
        query_variable("service", "Service", distinct("ServiceName")),
        query_variable("node", "Node", distinct("NodeId")),
        query_variable("event_type", "Event type", distinct("EventType")),
        query_variable("severity", "Severity", distinct("SeverityText")),
        text_variable("search", "Text"),
        text_variable("run", "Run id"),
    ]
    where = (
        f"$__timeFilter(Timestamp) AND {SERVICE} AND {NODE}\n"
        f"  AND {one_of('EventType', 'event_type')}\n"
        f"  AND {one_of('SeverityText', 'severity')}\n"
        f"  AND ({SEARCH} = '' OR positionCaseInsensitiveUTF8(Body, {SEARCH}) > 0)\n"
        f"  AND ({RUN} = '' OR RunId = {RUN})"
    )
    board.add(
        "timeseries",
        "Matching events",
        f"SELECT $__timeInterval(Timestamp) AS time, count() AS events\nFROM {LOGS}\nWHERE {where}\nGROUP BY time\nORDER BY time",
        24,
        5,
        fmt="timeseries",
    )
    board.add(
        "logs",
        "Events",
        "SELECT Timestamp AS timestamp, Body AS body, SeverityText AS level, ServiceName, NodeId, EventType, RunId,\n"
        f"    TraceId, SpanId, LogAttributes\nFROM {LOGS}\nWHERE {where}\nORDER BY Timestamp DESC\nLIMIT 1000",
        24,
        16,
        fmt="logs",
        options={"showTime": True, "wrapLogMessage": True, "enableLogDetails": True, "sortOrder": "Descending"},
        description="Trace ids link to the trace and its logs: the datasource adds the links to a "
        "TraceId column (its traces settings, provisioned), so the panel sets none of its own.",
    )
    return board


def device_io() -> Dashboard:
    board = Dashboard(
        "labtel-device-io", "Device I/O", "Operations, latency and failures of instrument I/O.", ["devices"]
    )
    device = "LogAttributes['lab.device']"
    board.variables = [query_variable("device", "Device", distinct(device, "EventType = 'device_io'"))]
    where = f"$__timeFilter(Timestamp) AND EventType = 'device_io' AND {one_of(device, 'device')}"
    board.add(
        "timeseries",
        "Operations per minute by device",
        f"SELECT toStartOfInterval(Timestamp, INTERVAL greatest(60, $__interval_s) second) AS time, {device} AS device, "
        f"count() AS operations\nFROM {LOGS}\nWHERE {where}\nGROUP BY time, device\nORDER BY time",
        12,
        8,
        fmt="timeseries",
    )
    board.add(
        "timeseries",
        "Failures per minute",
        f"SELECT toStartOfInterval(Timestamp, INTERVAL greatest(60, $__interval_s) second) AS time, {device} AS device, "
        f"countIf(LogAttributes['success'] = 'false') AS failures\nFROM {LOGS}\nWHERE {where}\nGROUP BY time, device\nORDER BY time",
        12,
        8,
        fmt="timeseries",
    )
    board.add(
        "table",
        "Latency by device and operation",
        f"SELECT {device} AS device, LogAttributes['lab.device.operation'] AS operation, count() AS operations,\n"
        "    round(quantile(0.5)(DurationMs), 2) AS p50_ms, round(quantile(0.95)(DurationMs), 2) AS p95_ms,\n"
        f"    countIf(LogAttributes['success'] = 'false') AS failures\nFROM {LOGS}\nWHERE {where}\n"
        "GROUP BY device, operation\nORDER BY p95_ms DESC",
        12,
        8,
    )
    board.add(
        "histogram",
        "Latency distribution",
        f"SELECT DurationMs AS latency_ms\nFROM {LOGS}\nWHERE {where}\nLIMIT 20000",
        12,
        8,
        unit="ms",
    )
    board.add(
        "table",
        "Latest failures",
        f"SELECT Timestamp AS time, {device} AS device, LogAttributes['lab.device.operation'] AS operation,\n"
        f"    LogAttributes['error'] AS error, DurationMs AS duration_ms\nFROM {LOGS}\n"
        f"WHERE {where} AND LogAttributes['success'] = 'false'\nORDER BY Timestamp DESC\nLIMIT 50",
        24,
        8,
    )
    return board


SELF = "ServiceName = 'labtel-collector'"
BUCKET_S = "greatest(60, $__interval_s)"
LOOKBACK = "INTERVAL 1 HOUR"
"""How far before the range a counter's previous point is looked for (snapshots come every 15 s)."""


def increases(table: str, metric: str, keys: dict[str, str], values: dict[str, str]) -> str:
    """SQL: per time bucket and `keys` (alias: expression), how much the cumulative `values`
    (alias: column) of the collector's `metric` grew: the sum, over every series (a collector
    instance and an attribute set), of the growth from each point to the next, a drop counting as a
    restart from zero. The growth before a bucket's first point counts in it, and series of other
    attributes (another transport, say) are never subtracted from each other."""
    key_list = ", ".join(keys)
    lags = ",\n".join(
        f"            toFloat64({column}) AS {alias}_now, lagInFrame(toFloat64({column}), 1, -1.) OVER series AS {alias}_before"
        for alias, column in values.items()
    )
    growth = ",\n".join(
        f"        if({a}_before < 0, if(StartTimeUnix >= $__fromTime - {LOOKBACK}, {a}_now, 0), "
        f"if({a}_now >= {a}_before, {a}_now - {a}_before, {a}_now)) AS {a}_growth"
        for a in values
    )
    sums = ", ".join(f"sum({a}_growth) AS {a}" for a in values)
    selected = ", ".join(f"{expression} AS {alias}" for alias, expression in keys.items())
    return f"""    SELECT toStartOfInterval(TimeUnix, INTERVAL {BUCKET_S} second) AS time, {key_list}, {sums}
    FROM (
        SELECT TimeUnix, {key_list},
{growth}
        FROM (
            SELECT TimeUnix, StartTimeUnix, {selected},
{lags}
            FROM {table}
            WHERE {SELF} AND MetricName = '{metric}'
                AND TimeUnix >= $__fromTime - {LOOKBACK} AND TimeUnix <= $__toTime
            WINDOW series AS (PARTITION BY ResourceAttributes['service.instance.id'], Attributes
                ORDER BY TimeUnix ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
        )
        WHERE $__timeFilter(TimeUnix)
    )
    GROUP BY time, {key_list}"""


def collector_health() -> Dashboard:
    board = Dashboard(
        "labtel-collector",
        "Collector health",
        "labtel's own metrics (stored by the collector as OTLP metrics) and its tables.",
        ["collector"],
    )
    sums, gauges, histograms = (f"${{database}}.otel_metrics_{kind}" for kind in ("sum", "gauge", "histogram"))
    interval = "toStartOfInterval(TimeUnix, INTERVAL greatest(60, $__interval_s) second)"
    received = increases(sums, "labtel_receiver_records", {"outcome": "Attributes['outcome']"}, {"records": "Value"})
    board.add(
        "timeseries",
        "Records received per second, by outcome",
        f"SELECT time, outcome, records / {BUCKET_S} AS per_second\nFROM (\n{received}\n)\nORDER BY time",
        12,
        8,
        fmt="timeseries",
    )
    board.add(
        "timeseries",
        "Queue depth (records)",
        f"SELECT {interval} AS time, Attributes['pipeline'] AS pipeline, max(Value) AS records\nFROM {gauges}\n"
        f"WHERE {SELF} AND MetricName = 'labtel_queue_records' AND $__timeFilter(TimeUnix)\nGROUP BY time, pipeline\nORDER BY time",
        12,
        8,
        fmt="timeseries",
    )
    inserts = increases(
        histograms,
        "labtel_exporter_insert_duration_seconds",
        {"signal": "Attributes['signal']"},
        {"seconds": "Sum", "calls": "Count"},
    )
    board.add(
        "timeseries",
        "Insert latency (mean)",
        f"SELECT time, signal, if(calls > 0, seconds / calls, NULL) AS mean_seconds\nFROM (\n{inserts}\n)\nORDER BY time",
        12,
        8,
        fmt="timeseries",
        unit="s",
    )
    board.add(
        "timeseries",
        "Write-ahead log (bytes not yet stored)",
        f"SELECT {interval} AS time, Attributes['exporter'] AS exporter, max(Value) AS bytes\nFROM {gauges}\n"
        f"WHERE {SELF} AND MetricName = 'labtel_wal_bytes' AND $__timeFilter(TimeUnix)\nGROUP BY time, exporter\nORDER BY time",
        12,
        8,
        fmt="timeseries",
        unit="bytes",
    )
    board.add(
        "timeseries",
        "Events stored per minute (by arrival)",
        f"SELECT toStartOfInterval(ObservedTimestamp, INTERVAL greatest(60, $__interval_s) second) AS time, count() AS events\n"
        f"FROM {LOGS}\nWHERE $__timeFilter(ObservedTimestamp)\nGROUP BY time\nORDER BY time",
        12,
        8,
        fmt="timeseries",
    )
    board.add(
        "table",
        "Tables",
        "SELECT node, table, sum(rows) AS total_rows, formatReadableSize(sum(bytes_on_disk)) AS on_disk,\n"
        "  count() AS parts, max(modification_time) AS last_write\n"
        "FROM ${database}.labtel_parts\nGROUP BY node, table\nORDER BY node, total_rows DESC",
        12,
        8,
        description="The active parts of labtel's tables on every node (the view labtel_parts: on a "
        "cluster, every replica of every shard, with its <table>_local tables; the datasource's user "
        "needs the REMOTE grant there).",
    )
    return board


DASHBOARDS = {
    "lab-overview": lab_overview,
    "instrument-utilization": utilization,
    "event-explorer": explorer,
    "device-io": device_io,
    "collector-health": collector_health,
}


def provisioning() -> dict[str, str]:
    """The provisioning files (YAML) by path below dashboards/."""
    datasource = f"""# Grafana provisioning: the ClickHouse datasource labtel's dashboards use (uid {DATASOURCE_UID}).
# Generated by dashboards/generate.py. Install the plugin grafana-clickhouse-datasource (v4).
# Grafana's environment must set LABTEL_CLICKHOUSE_HOST, _PORT, _USER and _PASSWORD: Grafana
# substitutes $VAR and ${{VAR}} only (no ${{VAR:-default}}), an unset variable as nothing.
apiVersion: 1
datasources:
  - name: labtel ClickHouse
    uid: {DATASOURCE_UID}
    type: grafana-clickhouse-datasource
    isDefault: true
    jsonData:
      host: ${{LABTEL_CLICKHOUSE_HOST}}
      port: ${{LABTEL_CLICKHOUSE_PORT}}
      protocol: http
      username: ${{LABTEL_CLICKHOUSE_USER}}
      defaultDatabase: otel
      logs:
        defaultDatabase: otel
        defaultTable: otel_logs
        otelEnabled: true
        otelVersion: latest
        timeColumn: Timestamp
        levelColumn: SeverityText
        messageColumn: Body
      traces:
        defaultDatabase: otel
        defaultTable: otel_traces
        otelEnabled: true
        otelVersion: latest
        durationUnit: nanoseconds
        traceTimestampTableSuffix: _trace_id_ts
    secureJsonData:
      password: ${{LABTEL_CLICKHOUSE_PASSWORD}}
"""
    provider = """# Grafana provisioning: labtel's dashboards (generated by dashboards/generate.py).
apiVersion: 1
providers:
  - name: labtel
    folder: labtel
    type: file
    disableDeletion: false
    allowUiUpdates: true
    options:
      path: /var/lib/grafana/dashboards/labtel
"""
    return {"provisioning/datasources/labtel.yaml": datasource, "provisioning/dashboards/labtel.yaml": provider}


def rendered() -> dict[str, str]:
    """Every generated file's text by its path below dashboards/."""
    files = {f"json/{name}.json": json.dumps(make().to_json(), indent=2) + "\n" for name, make in DASHBOARDS.items()}
    return files | provisioning()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = parser.parse_args()
    stale = []
    for relative, text in rendered().items():
        path = HERE / relative
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(relative)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run `make dashboards`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
