"""Reading metrics: which metrics exist, and their data points bucketed in time per series.

A series is one service's points of one metric with one label set (the data point attributes).
Its points may come from several streams (OpenTelemetry's term: one resource and scope, such as
each process of a service, with its own `service.instance.id`): running totals are taken per
stream, then added up. The query's parameters are checked in series_query.py.
Points are bucketed in SQL with `toStartOfInterval`; values never enter the SQL text (every one
is a `{name:Type}` server-side parameter), only labtel's own table names do.

Aggregations per bucket: gauges and sums take `avg`, `sum`, `min`, `max`, `count` (points),
`last` and, for sums, `rate` (per second: a delta sum's total over the step, a cumulative sum's
increase between the points of each stream, from its last point shortly before the range
(RATE_LOOKBACK_S), where a drop of a monotonic sum or a new start time counts as a restart from zero). Histograms, exponential histograms and summaries take `count`,
`sum` and `avg` (Sum / Count): delta points are added up over the bucket, cumulative ones give
each stream's running totals as of its last point in the bucket, added up over the streams.
Histograms also answer `quantile` (histogram_quantile.py).
"""

from __future__ import annotations

import math
from typing import Any

from labtel.collector.storage.client import Storage
from labtel.collector.storage.schema import METRIC_TYPES
from labtel.query_api.histogram_quantile import histogram_quantile
from labtel.query_api.models import Exemplar, HistogramPoint, MetricInfo, Series, SeriesPoint, SeriesResult
from labtel.query_api.params import ParamError, format_time_ns
from labtel.query_api.series_query import NUMBER_TYPES, SeriesQuery, check_aggregation

TEMPORALITIES = {0: "unspecified", 1: "delta", 2: "cumulative"}
RATE_LOOKBACK_S = 900
"""How far before a range (or a step, if longer) a rate looks for each stream's last point, whose
change to the first point inside counts: a bucket's rate does not depend on where the range starts."""
MAX_EXEMPLARS = 10
"""Exemplars returned per bucket (any of them)."""
_EXEMPLARS = (
    "arrayZip(arrayMap(x -> toUnixTimestamp64Nano(toDateTime64(x, 9)), `Exemplars.TimeUnix`), `Exemplars.Value`, "
    "`Exemplars.TraceId`, `Exemplars.SpanId`, `Exemplars.FilteredAttributes`)"
)
"""SQL: a point's exemplars as (time ns, value, trace id, span id, attributes) tuples."""
_NO_RECORDED_VALUE = "bitAnd(Flags, 1) = 0"
"""OTLP's NO_RECORDED_VALUE flag: a point that marks a gap, not a value."""
_STREAM = "ResourceAttributes, ScopeName, ScopeVersion, ScopeAttributes, Attributes"
"""SQL: what tells one stream of a metric's points from another (OpenTelemetry's identity of a
stream: resource, scope, attributes). Two processes of a service with the same labels are two
streams, each with its own running total: a cumulative value compares with its own stream only."""


class NotFound(LookupError):
    """No metric of that name (and type) is stored."""


# --- SQL -------------------------------------------------------------------------------------------


def _bucket() -> str:
    return "toStartOfInterval(TimeUnix, toIntervalSecond({step:UInt32}), 'UTC')"


def _where(query: SeriesQuery, since: str = "start_ns") -> tuple[str, dict[str, Any]]:
    """The WHERE clause (without the keyword) of a series query, and its parameters; points from
    the parameter `since` on (the query's start unless the caller gives it)."""
    clauses = [
        "MetricName = {name:String}",
        f"TimeUnix >= fromUnixTimestamp64Nano({{{since}:Int64}})",
        "TimeUnix < fromUnixTimestamp64Nano({end_ns:Int64})",
        _NO_RECORDED_VALUE,
    ]
    params: dict[str, Any] = {
        "name": query.name,
        "start_ns": query.start_ns,
        "end_ns": query.end_ns,
        "step": query.step_s,
    }
    if query.service is not None:
        clauses.append("ServiceName = {service:String}")
        params["service"] = query.service
    for i, (key, value) in enumerate(sorted(query.labels.items())):
        clauses.append(f"Attributes[{{label_key_{i}:String}}] = {{label_value_{i}:String}}")
        params[f"label_key_{i}"], params[f"label_value_{i}"] = key, value
    return " AND ".join(clauses), params


def _some_exemplars(points: str) -> str:
    """SQL: up to MAX_EXEMPLARS of the exemplars of the bucket's points (`points`: their arrays)."""
    return f"arraySlice(groupArrayArray({points}), 1, {MAX_EXEMPLARS}) AS exemplars"


_NUMBER_AGGREGATES = {
    "avg": "avg(Value)",
    "sum": "sum(Value)",
    "min": "min(Value)",
    "max": "max(Value)",
    "count": "toFloat64(count())",
    "last": "argMax(Value, TimeUnix)",
}


def number_sql(table: str, query: SeriesQuery, agg: str) -> tuple[str, dict[str, Any]]:
    """SQL: a gauge's or sum's points per (service, labels, bucket start) with their aggregate."""
    if agg != "rate":
        where, params = _where(query)
        return (
            f"""SELECT ServiceName AS service, Attributes AS labels, toUnixTimestamp({_bucket()}) AS t,
    {_NUMBER_AGGREGATES[agg]} AS value, {_some_exemplars(_EXEMPLARS)}
FROM {table} WHERE {where}
GROUP BY service, labels, t ORDER BY t""",
            params,
        )
    # The change since the stream's previous point: a delta point is a change already. The points
    # of RATE_LOOKBACK before the range are read for the change to the first point inside it.
    # Points of one second (the sum table keeps seconds) are taken in the order a counter grows.
    where, params = _where(query, since="rate_from_ns")
    params["rate_from_ns"] = max(0, query.start_ns - max(query.step_s, RATE_LOOKBACK_S) * 10**9)
    order = "ORDER BY TimeUnix, StartTimeUnix, Value"
    window = f"OVER (PARTITION BY {_STREAM} {order} ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)"
    restart = f"StartTimeUnix != lagInFrame(StartTimeUnix) {window} OR (IsMonotonic AND Value < previous)"
    return (
        f"""SELECT service, labels, t, sum(change) / {{step:UInt32}} AS value, {_some_exemplars("point_exemplars")} FROM (
    SELECT ServiceName AS service, Attributes AS labels, toUnixTimestamp({_bucket()}) AS t,
        TimeUnix >= fromUnixTimestamp64Nano({{start_ns:Int64}}) AS inside,
        {_EXEMPLARS} AS point_exemplars, lagInFrame(Value) {window} AS previous,
        multiIf(AggregationTemporality = 1, Value, (row_number() OVER (PARTITION BY {_STREAM}
            {order})) = 1, 0, {restart}, Value, Value - previous) AS change
    FROM {table} WHERE {where}
)
WHERE inside
GROUP BY service, labels, t ORDER BY t""",
        params,
    )


def distribution_sql(table: str, kind: str, query: SeriesQuery) -> tuple[str, dict[str, Any]]:
    """SQL: a histogram's, exponential histogram's or summary's Count, Sum (and buckets) per
    (service, labels, bucket start): per stream, added up for delta points and the last for
    cumulative ones; then added up over the streams."""
    where, params = _where(query)
    delta = "argMax(AggregationTemporality, TimeUnix) = 1" if kind != "summary" else "false"
    columns = [
        f"if({delta}, sum(Count), argMax(Count, TimeUnix)) AS count",
        f"if({delta}, sum(Sum), argMax(Sum, TimeUnix)) AS total",
    ]
    totals = ["sum(count) AS count", "sum(total) AS total"]
    if kind != "summary":
        columns.append(_some_exemplars(_EXEMPLARS))
        totals.append(_some_exemplars("exemplars"))
    if kind == "histogram":
        columns += [
            f"if({delta}, sumForEach(BucketCounts), argMax(BucketCounts, TimeUnix)) AS bucket_counts",
            "argMax(ExplicitBounds, TimeUnix) AS bounds",
            "max(TimeUnix) AS latest",
            f"if({delta}, min(Min), argMax(Min, TimeUnix)) AS low",
            f"if({delta}, max(Max), argMax(Max, TimeUnix)) AS high",
        ]
        totals += [
            "sumForEach(bucket_counts) AS bucket_counts",
            "argMax(bounds, latest) AS bounds",
            "min(low) AS low",
            "max(high) AS high",
        ]
    return (
        f"""SELECT service, labels, t, {", ".join(totals)} FROM (
    SELECT ServiceName AS service, Attributes AS labels, toUnixTimestamp({_bucket()}) AS t,
        {", ".join(columns)}
    FROM {table} WHERE {where}
    GROUP BY service, labels, t, {_STREAM}
)
GROUP BY service, labels, t ORDER BY t""",
        params,
    )


def _metadata_select(table: str, kind: str, service: bool) -> str:
    """SQL: the type, unit, description, temporality and monotonicity of a metric's newest point
    in one table (of one service when `service`)."""
    temporality = (
        "toNullable(AggregationTemporality)"
        if kind in ("sum", "histogram", "exponential_histogram")
        else "CAST(NULL, 'Nullable(Int32)')"
    )
    monotonic = "toNullable(IsMonotonic)" if kind == "sum" else "CAST(NULL, 'Nullable(Bool)')"
    where = "MetricName = {name:String}" + (" AND ServiceName = {service:String}" if service else "")
    return (
        f"(SELECT '{kind}' AS type, toString(MetricUnit) AS unit, toString(MetricDescription) AS description, "
        f"{temporality} AS temporality, {monotonic} AS monotonic FROM {table} "
        f"WHERE {where} ORDER BY TimeUnix DESC LIMIT 1)"
    )


def names_sql(
    storage: Storage, start_ns: int | None, end_ns: int | None, service: str | None
) -> tuple[str, dict[str, Any]]:
    """SQL: every metric (name, type, service) with points in the range, and what is known of it."""
    clauses, params = ["1"], dict[str, Any]()
    if start_ns is not None:
        clauses.append("TimeUnix >= fromUnixTimestamp64Nano({start_ns:Int64})")
        params["start_ns"] = start_ns
    if end_ns is not None:
        clauses.append("TimeUnix < fromUnixTimestamp64Nano({end_ns:Int64})")
        params["end_ns"] = end_ns
    if service is not None:
        clauses.append("ServiceName = {service:String}")
        params["service"] = service
    where = " AND ".join(clauses)
    selects = []
    for kind in METRIC_TYPES:
        temporality = (
            "toNullable(argMax(AggregationTemporality, TimeUnix))"
            if kind in ("sum", "histogram", "exponential_histogram")
            else "CAST(NULL, 'Nullable(Int32)')"
        )
        monotonic = "toNullable(argMax(IsMonotonic, TimeUnix))" if kind == "sum" else "CAST(NULL, 'Nullable(Bool)')"
        selects.append(
            f"""SELECT toString(MetricName) AS name, '{kind}' AS type, toString(argMax(MetricUnit, TimeUnix)) AS unit,
    toString(argMax(MetricDescription, TimeUnix)) AS description, toString(ServiceName) AS service,
    {temporality} AS temporality, {monotonic} AS monotonic, count() AS points,
    toUnixTimestamp64Nano(toDateTime64(min(TimeUnix), 9)) AS first_ns,
    toUnixTimestamp64Nano(toDateTime64(max(TimeUnix), 9)) AS last_ns
FROM {storage.names.metrics_table(kind)} WHERE {where}
GROUP BY MetricName, ServiceName"""
        )
    return "\nUNION ALL\n".join(selects) + "\nORDER BY name, type, service", params


# --- answers ----------------------------------------------------------------------------------------


def _temporality(value: int | None) -> str | None:
    return None if value is None else TEMPORALITIES.get(value, str(value))


def list_names(storage: Storage, start_ns: int | None, end_ns: int | None, service: str | None) -> list[MetricInfo]:
    """The metrics stored with points in the range, one entry per (name, type, service)."""
    sql, params = names_sql(storage, start_ns, end_ns, service)
    return [
        MetricInfo(
            name=row["name"],
            type=row["type"],
            unit=row["unit"],
            description=row["description"],
            service=row["service"],
            temporality=_temporality(row["temporality"]),
            monotonic=row["monotonic"],
            points=row["points"],
            first=format_time_ns(row["first_ns"]),
            first_unix_nano=row["first_ns"],
            last=format_time_ns(row["last_ns"]),
            last_unix_nano=row["last_ns"],
        )
        for row in storage.rows(sql, parameters=params)
    ]


def _metadata(storage: Storage, query: SeriesQuery) -> dict[str, Any]:
    """Type, unit, description, temporality and monotonicity of the queried metric (its newest point)."""
    kinds = [query.type] if query.type else list(METRIC_TYPES)
    service = query.service is not None
    sql = "\nUNION ALL\n".join(_metadata_select(storage.names.metrics_table(kind), kind, service) for kind in kinds)
    found = storage.rows(sql, parameters={"name": query.name, "service": query.service or ""})
    if not found:
        of = (f" of type {query.type}" if query.type else "") + (f" from service {query.service!r}" if service else "")
        raise NotFound(f"no metric named {query.name!r}{of}")
    if len(found) > 1:
        types = ", ".join(sorted(row["type"] for row in found))
        raise ParamError(f"type: {query.name!r} is stored as {types}; choose one with type=")
    return found[0]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def get_series(storage: Storage, query: SeriesQuery) -> SeriesResult:
    """A metric's series over the query's range, one point per non-empty bucket."""
    meta = _metadata(storage, query)
    kind = meta["type"]
    agg = check_aggregation(query, kind)
    table = storage.names.metrics_table(kind)
    if kind in NUMBER_TYPES:
        sql, params = number_sql(table, query, agg)
    else:
        sql, params = distribution_sql(table, kind, query)
    grouped: dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]] = {}
    for row in storage.rows(sql, parameters=params):
        key = (row["service"], tuple(sorted(row["labels"].items())))
        grouped.setdefault(key, []).append(_point(row, kind, agg, query.quantile))
    series = [
        Series(service=service, labels=dict(labels), points=points)
        for (service, labels), points in sorted(grouped.items())
    ]
    return SeriesResult(
        name=query.name,
        type=kind,
        unit=meta["unit"],
        description=meta["description"],
        temporality=_temporality(meta["temporality"]),
        monotonic=meta["monotonic"],
        agg=agg,
        quantile=query.quantile,
        step_seconds=query.step_s,
        start=format_time_ns(query.start_ns),
        end=format_time_ns(query.end_ns),
        series=series,
    )


def _exemplars(row: dict[str, Any]) -> list[Exemplar]:
    return [
        Exemplar(
            t=format_time_ns(t_ns),
            t_unix_nano=t_ns,
            value=_finite(value),
            trace_id=trace_id,
            span_id=span_id,
            attributes=attributes,
        )
        for t_ns, value, trace_id, span_id, attributes in row.get("exemplars", ())
    ]


def _point(row: dict[str, Any], kind: str, agg: str, quantile: float | None) -> SeriesPoint | HistogramPoint:
    t_ns = int(row["t"]) * 10**9
    exemplars = _exemplars(row)
    if kind in NUMBER_TYPES:
        return SeriesPoint(t=format_time_ns(t_ns), t_unix_nano=t_ns, value=_finite(row["value"]), exemplars=exemplars)
    count, total = int(row["count"]), float(row["total"])
    value: float | None
    if agg == "quantile":
        assert quantile is not None
        value = histogram_quantile(quantile, row["bucket_counts"], row["bounds"], row["low"], row["high"])
    elif agg == "count":
        value = float(count)
    elif agg == "sum":
        value = total
    else:
        value = total / count if count else None
    if kind != "histogram":
        return SeriesPoint(t=format_time_ns(t_ns), t_unix_nano=t_ns, value=_finite(value), exemplars=exemplars)
    return HistogramPoint(
        t=format_time_ns(t_ns),
        t_unix_nano=t_ns,
        value=_finite(value),
        count=count,
        sum=_finite(total),
        bucket_counts=list(row["bucket_counts"]),
        explicit_bounds=list(row["bounds"]),
        exemplars=exemplars,
    )
