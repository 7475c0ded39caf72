"""The metrics part of the storage schema: five tables, and the views that fill them from OTLP.

The tables are the contrib ClickHouse exporter's `otel_metrics_gauge`, `_sum`, `_histogram`,
`_exponential_histogram` and `_summary`, with their column names and types (the contrib exporter
keeps `TimeUnix` as `DateTime64(9)` in the gauge, histogram and summary tables and as `DateTime`
in the sum and exponential histogram tables), plus labtel's `IngestBatch`.

Ingest works as for logs and traces (labtel.collector.storage.schema): serialized
ExportMetricsServiceRequests go into a `Null` table shaped like the request. A first view renders
and validates each metric into a second `Null` table, and one view per metric type flattens that
type's data points into its table. A `Metric` sets one field of its `data` oneof, so each type
view finds data points only in the metrics of its type; a metric (or a number) whose bytes set
oneof fields more than once fails the parse (the presence columns refuse it) and takes the exact
path, where protobuf's rules apply (the last field wins, a repeated message merges).
"""

from __future__ import annotations

from collections.abc import Callable

# Metrics reuse the SQL helpers of the logs and traces views, so all signals store values alike.
from labtel.collector.storage.schema import (
    _BATCH,
    _KEY_VALUES,
    _MAP,
    _RESOURCE,
    _SCOPE,
    MAX_TIME_NANOS,
    METRIC_TYPES,
    SPAN_ID_BYTES,
    TRACE_ID_BYTES,
    SchemaNames,
    _checked,
    _has_list,
    _hex_id,
    _invalid_utf8,
    _key_value_strings,
    _nanos,
    attributes_map,
    distributed_table,
)
from labtel.sdk import semconv

# --- the ingest input ---------------------------------------------------------------------------

_NUMBER = "value Enum8('none' = 0, 'as_double' = {double}, 'as_int' = 6), as_double Float64, as_int Int64"
"""A number oneof; the presence column makes ClickHouse refuse a value with both fields set."""
_EXEMPLAR = (
    f"Tuple(filtered_attributes {_KEY_VALUES}, time_unix_nano UInt64, {_NUMBER.format(double=3)}, "
    "span_id String, trace_id String)"
)
_POINT_HEAD = f"attributes {_KEY_VALUES}, start_time_unix_nano UInt64, time_unix_nano UInt64"
_NUMBER_POINT = f"Tuple({_POINT_HEAD}, {_NUMBER.format(double=4)}, exemplars Array({_EXEMPLAR}), flags UInt32)"
_HISTOGRAM_POINT = (
    f"Tuple({_POINT_HEAD}, count UInt64, sum Float64, bucket_counts Array(UInt64), "
    f"explicit_bounds Array(Float64), exemplars Array({_EXEMPLAR}), flags UInt32, min Float64, max Float64)"
)
_BUCKETS = "Tuple(offset Int32, bucket_counts Array(UInt64))"
_EXPONENTIAL_POINT = (
    f"Tuple({_POINT_HEAD}, count UInt64, sum Float64, scale Int32, zero_count UInt64, positive {_BUCKETS}, "
    f"negative {_BUCKETS}, flags UInt32, exemplars Array({_EXEMPLAR}), min Float64, max Float64)"
)
_SUMMARY_POINT = (
    f"Tuple({_POINT_HEAD}, count UInt64, sum Float64, "
    "quantile_values Array(Tuple(quantile Float64, value Float64)), flags UInt32)"
)
_METRIC = (
    "Tuple(name String, description String, unit String, data Enum8('none' = 0, 'gauge' = 5, 'sum' = 7, "
    "'histogram' = 9, 'exponential_histogram' = 10, 'summary' = 11), "
    f"gauge Tuple(data_points Array({_NUMBER_POINT})), "
    f"sum Tuple(data_points Array({_NUMBER_POINT}), aggregation_temporality Int32, is_monotonic Bool), "
    f"histogram Tuple(data_points Array({_HISTOGRAM_POINT}), aggregation_temporality Int32), "
    f"exponential_histogram Tuple(data_points Array({_EXPONENTIAL_POINT}), aggregation_temporality Int32), "
    f"summary Tuple(data_points Array({_SUMMARY_POINT})))"
)
INGEST_COLUMNS = (
    f"resource_metrics Array(Tuple(resource {_RESOURCE}, scope_metrics Array(Tuple(scope {_SCOPE}, "
    f"metrics Array({_METRIC}), schema_url String)), schema_url String))"
)
"""The Null table's columns: an ExportMetricsServiceRequest, as ClickHouse parses it."""

_EXEMPLAR_TYPES = ("gauge", "sum", "histogram", "exponential_histogram")
"""The metric types whose data points carry exemplars (all but summaries)."""
TEMPORAL_TYPES = ("sum", "histogram", "exponential_histogram")
"""The metric types whose points sum over time, delta or cumulative (their aggregation_temporality)."""
_POINTS = {
    "gauge": _NUMBER_POINT,
    "sum": _NUMBER_POINT,
    "histogram": _HISTOGRAM_POINT,
    "exponential_histogram": _EXPONENTIAL_POINT,
    "summary": _SUMMARY_POINT,
}

METRIC_COLUMNS = ", ".join(
    [
        f"ResourceAttributes {_MAP}, ResourceSchemaUrl String, ScopeName String, ScopeVersion String",
        f"ScopeAttributes {_MAP}, ScopeDroppedAttrCount UInt32, ScopeSchemaUrl String, ServiceName String",
        f"MetricName String, MetricDescription String, MetricUnit String, IngestBatch String, metric {_METRIC}",
        *(f"{kind}_points Array({point})" for kind, point in _POINTS.items()),
        f"point_attributes Array({_MAP}), exemplar_attributes Array({_MAP}), exemplar_starts Array(UInt64)",
    ]
)
"""The columns of the second Null table: one row per metric, with its resource, scope and the
attributes of its data points and their exemplars rendered, and its data points still nested
(`<type>_points`; a metric has one type, so only one of them is not empty)."""


# --- the views ------------------------------------------------------------------------------------
# Two stages. The first view renders and validates everything once per metric, into a second Null
# table; the five type views only flatten data points into their tables. All checks (`throwIf`)
# are in the first stage on purpose: an insert fails before any table is written, whereas a check
# failing in one of five views would leave the other views' rows stored. ClickHouse plans every
# view on every insert (~0.25 ms per expression node, several ms for each expression over the
# whole nested request), so each ARRAY JOIN unpacks the fields it needs (`scopes.scope AS scope`)
# and expressions work on those small parts.

_SHARED = (
    "ResourceAttributes, ResourceSchemaUrl, ScopeName, ScopeVersion, ScopeAttributes, ScopeDroppedAttrCount, "
    "ScopeSchemaUrl, ServiceName, MetricName, MetricDescription, MetricUnit, IngestBatch"
)


def _concat(template: str, kinds: tuple[str, ...]) -> str:
    """SQL: `template` (an expression over `{points}`) for each type's points, concatenated."""
    return "arrayConcat(" + ", ".join(template.format(points=f"{kind}_points") for kind in kinds) + ")"


def metric_view_select(source: str) -> str:
    """The SELECT of the first stage: one row per metric of the ingested requests, rendered
    and validated.

    A metric has one type, so at most one `<type>_points` is not empty, and lists gathered over
    all types are that type's. Every attribute list (resource, scope, data points, exemplars) is
    rendered by one expression over all of them at once."""
    point_lists = _concat("arrayMap(dp -> dp.attributes, {points})", METRIC_TYPES)
    exemplars = _concat("arrayFlatten(arrayMap(dp -> dp.exemplars, {points}))", _EXEMPLAR_TYPES)
    exemplar_counts = _concat("arrayMap(dp -> length(dp.exemplars), {points})", _EXEMPLAR_TYPES)
    times = _concat("arrayMap(dp -> greatest(dp.start_time_unix_nano, dp.time_unix_nano), {points})", METRIC_TYPES)
    checks = [
        _has_list("attribute_lists", nested=True),
        f"arrayExists(t -> t > {MAX_TIME_NANOS}, {times})",
        "arrayExists(e -> length(e.trace_id) NOT IN (0, 16) OR length(e.span_id) NOT IN (0, 8) "
        f"OR e.time_unix_nano > {MAX_TIME_NANOS}, exemplars)",
        # OTLP: a histogram has one more bucket than bounds, or no buckets at all.
        "arrayExists(dp -> length(dp.bucket_counts) NOT IN (0, length(dp.explicit_bounds) + 1), histogram_points)",
        # OTLP: bounds are finite (+Inf is implied) and strictly increase.
        "arrayExists(dp -> NOT arrayAll(b -> isFinite(b), dp.explicit_bounds) OR arrayExists((b, previous) -> "
        "b <= previous, arrayPopFront(dp.explicit_bounds), arrayPopBack(dp.explicit_bounds)), histogram_points)",
        # OTLP forbids AGGREGATION_TEMPORALITY_UNSPECIFIED (0) for the kinds that sum over time.
        " OR ".join(f"(notEmpty({kind}_points) AND {kind}_temporality = 0)" for kind in TEMPORAL_TYPES),
        _invalid_utf8(
            ["MetricName", "MetricDescription", "MetricUnit", "ScopeName", "ScopeVersion", "resource_url", "scope_url"],
            [f"arrayFlatten({array})" for array in _key_value_strings("attribute_lists")],
        ),
    ]
    unpacked = ", ".join(
        [
            *(f"metrics.{kind}.data_points AS {kind}_points" for kind in METRIC_TYPES),
            *(f"metrics.{kind}.aggregation_temporality AS {kind}_temporality" for kind in TEMPORAL_TYPES),
        ]
    )
    return f"""WITH
    {point_lists} AS point_lists,
    {exemplars} AS exemplars,
    {exemplar_counts} AS exemplar_counts,
    arrayConcat([resource.attributes, scope.attributes], point_lists, arrayMap(e -> e.filtered_attributes, exemplars))
        AS attribute_lists,
    arrayMap(kv -> {attributes_map("kv")}, attribute_lists) AS attribute_maps
SELECT
    attribute_maps[1] AS ResourceAttributes,
    resource_url AS ResourceSchemaUrl,
    scope.name AS ScopeName,
    scope.version AS ScopeVersion,
    attribute_maps[2] AS ScopeAttributes,
    scope_url AS ScopeSchemaUrl,
    ResourceAttributes['{semconv.SERVICE_NAME}'] AS ServiceName,
    name AS MetricName,
    description AS MetricDescription,
    unit AS MetricUnit,
    {_BATCH} AS IngestBatch,
    metric,
    {", ".join(f"{kind}_points" for kind in METRIC_TYPES)},
    arraySlice(attribute_maps, 3, length(point_lists)) AS point_attributes,
    arraySlice(attribute_maps, 3 + length(point_lists)) AS exemplar_attributes,
    arrayMap((total, n) -> total - n + 1, arrayCumSum(exemplar_counts), exemplar_counts) AS exemplar_starts,
    {_checked("scope.dropped_attributes_count", checks)} AS ScopeDroppedAttrCount
FROM {source}
ARRAY JOIN resource_metrics.resource AS resource, resource_metrics.schema_url AS resource_url,
    resource_metrics.scope_metrics AS scopes
ARRAY JOIN scopes.scope AS scope, scopes.schema_url AS scope_url, scopes.metrics AS metrics
ARRAY JOIN metrics AS metric, metrics.name AS name, metrics.description AS description, metrics.unit AS unit,
    {unpacked}"""


def _view(source: str, kind: str, columns: str) -> str:
    """The SELECT of one type's view: the first stage's rows, flattened to one per data point."""
    # The per-point arrays belong to this type when its points are not empty, and to no point
    # otherwise (ARRAY JOIN wants equal lengths).
    exemplars = ""
    joined = f"{kind}_points AS dp, arrayResize(point_attributes, length({kind}_points)) AS Attributes"
    if kind in _EXEMPLAR_TYPES:
        joined += f", arrayResize(exemplar_starts, length({kind}_points)) AS exemplar_start"
        exemplars = f"""
    arraySlice(exemplar_attributes, exemplar_start, length(dp.exemplars)) AS `Exemplars.FilteredAttributes`,
    arrayMap(e -> {_nanos("e.time_unix_nano")}, dp.exemplars) AS `Exemplars.TimeUnix`,
    arrayMap(e -> e.as_double + e.as_int, dp.exemplars) AS `Exemplars.Value`,
    arrayMap(e -> {_hex_id("e.span_id", SPAN_ID_BYTES)}, dp.exemplars) AS `Exemplars.SpanId`,
    arrayMap(e -> {_hex_id("e.trace_id", TRACE_ID_BYTES)}, dp.exemplars) AS `Exemplars.TraceId`,"""
    return f"""SELECT
    {_SHARED},
    Attributes,
    {_nanos("dp.start_time_unix_nano")} AS StartTimeUnix,
    {_nanos("dp.time_unix_nano")} AS TimeUnix,{exemplars}
    {columns},
    dp.flags AS Flags
FROM {source}
ARRAY JOIN {joined}"""


_DISTRIBUTION = "dp.count AS Count,\n    dp.sum AS Sum"


def gauge_view_select(source: str) -> str:
    """The SELECT that flattens gauge data points into `otel_metrics_gauge` rows."""
    return _view(source, "gauge", "dp.as_double + dp.as_int AS Value")


def sum_view_select(source: str) -> str:
    """The SELECT that flattens sum data points into `otel_metrics_sum` rows."""
    return _view(
        source,
        "sum",
        "dp.as_double + dp.as_int AS Value,\n    metric.sum.aggregation_temporality AS AggregationTemporality,\n"
        "    metric.sum.is_monotonic AS IsMonotonic",
    )


def histogram_view_select(source: str) -> str:
    """The SELECT that flattens histogram data points into `otel_metrics_histogram` rows."""
    columns = f"""{_DISTRIBUTION},
    dp.bucket_counts AS BucketCounts,
    dp.explicit_bounds AS ExplicitBounds,
    dp.min AS Min,
    dp.max AS Max,
    metric.histogram.aggregation_temporality AS AggregationTemporality"""
    return _view(source, "histogram", columns)


def exponential_histogram_view_select(source: str) -> str:
    """The SELECT that flattens exponential histogram data points into their table's rows."""
    columns = f"""{_DISTRIBUTION},
    dp.scale AS Scale,
    dp.zero_count AS ZeroCount,
    dp.positive.offset AS PositiveOffset,
    dp.positive.bucket_counts AS PositiveBucketCounts,
    dp.negative.offset AS NegativeOffset,
    dp.negative.bucket_counts AS NegativeBucketCounts,
    dp.min AS Min,
    dp.max AS Max,
    metric.exponential_histogram.aggregation_temporality AS AggregationTemporality"""
    return _view(source, "exponential_histogram", columns)


def summary_view_select(source: str) -> str:
    """The SELECT that flattens summary data points into `otel_metrics_summary` rows."""
    columns = f"""{_DISTRIBUTION},
    arrayMap(q -> q.quantile, dp.quantile_values) AS `ValueAtQuantiles.Quantile`,
    arrayMap(q -> q.value, dp.quantile_values) AS `ValueAtQuantiles.Value`"""
    return _view(source, "summary", columns)


VIEW_SELECTS: dict[str, Callable[[str], str]] = {
    "gauge": gauge_view_select,
    "sum": sum_view_select,
    "histogram": histogram_view_select,
    "exponential_histogram": exponential_histogram_view_select,
    "summary": summary_view_select,
}
"""Per metric type, the SELECT of its view (all read the first stage's Null table)."""


def ingest_definition() -> str:
    """Everything that defines the metrics ingest path but the protobuf schema (for its fingerprint)."""
    selects = [metric_view_select("{source}"), *(select("{metrics}") for select in VIEW_SELECTS.values())]
    return "\n".join((INGEST_COLUMNS, METRIC_COLUMNS, *selects))


def ingest_objects(names: SchemaNames) -> list[str]:
    """The Null tables and views of the metrics ingest path, downstream first: the entry table
    and its view come last, so nothing inserted can fall through a half-built path."""
    source, metrics = names.ingest_table("metrics"), names.metrics_ingest_stage()
    return [
        f"CREATE TABLE IF NOT EXISTS {metrics}{names.on_cluster} ({METRIC_COLUMNS}) ENGINE = Null",
        *(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {names.ingest_view('metrics', kind)}{names.on_cluster} "
            f"TO {names.metrics_table(kind)} AS\n{select(metrics)}"
            for kind, select in VIEW_SELECTS.items()
        ),
        f"CREATE TABLE IF NOT EXISTS {source}{names.on_cluster} ({INGEST_COLUMNS}) ENGINE = Null",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {names.ingest_view('metrics')}{names.on_cluster} TO {metrics} AS\n"
        + metric_view_select(source),
    ]


# --- table DDL -------------------------------------------------------------------------------------

_OLD_LAYOUT = (
    "String",
    "DateTime64(9)",
    "ORDER BY (ServiceName, MetricName, Attributes, toUnixTimestamp64Nano(TimeUnix))",
)
_HOURLY_LAYOUT = (
    "LowCardinality(String)",
    "DateTime",
    "ORDER BY (ServiceName, MetricName, toStartOfHour(TimeUnix), cityHash64(Attributes), TimeUnix)",
)
_LAYOUTS = {
    "gauge": _OLD_LAYOUT,
    "sum": _HOURLY_LAYOUT,
    "histogram": _OLD_LAYOUT,
    "exponential_histogram": _HOURLY_LAYOUT,
    "summary": _OLD_LAYOUT,
}
"""Per table, as the contrib exporter has it: MetricName's type, the time type, the sort key."""

_HISTOGRAM_HEAD = """    Count UInt64 CODEC(Delta, ZSTD(1)),
    Sum Float64 CODEC(ZSTD(1)),"""
_TAIL = {
    "gauge": """    Value Float64 CODEC(ZSTD(1)),
    Flags UInt32 CODEC(ZSTD(1)),
{exemplars}""",
    "sum": """    Value Float64 CODEC(ZSTD(1)),
    Flags UInt32 CODEC(ZSTD(1)),
{exemplars}
    AggregationTemporality Int32 CODEC(ZSTD(1)),
    IsMonotonic Boolean CODEC(Delta, ZSTD(1)),""",
    "histogram": f"""{_HISTOGRAM_HEAD}
    BucketCounts Array(UInt64) CODEC(ZSTD(1)),
    ExplicitBounds Array(Float64) CODEC(ZSTD(1)),
{{exemplars}}
    Flags UInt32 CODEC(ZSTD(1)),
    Min Float64 CODEC(ZSTD(1)),
    Max Float64 CODEC(ZSTD(1)),
    AggregationTemporality Int32 CODEC(ZSTD(1)),""",
    "exponential_histogram": f"""{_HISTOGRAM_HEAD}
    Scale Int32 CODEC(ZSTD(1)),
    ZeroCount UInt64 CODEC(ZSTD(1)),
    PositiveOffset Int32 CODEC(ZSTD(1)),
    PositiveBucketCounts Array(UInt64) CODEC(ZSTD(1)),
    NegativeOffset Int32 CODEC(ZSTD(1)),
    NegativeBucketCounts Array(UInt64) CODEC(ZSTD(1)),
{{exemplars}}
    Flags UInt32 CODEC(ZSTD(1)),
    Min Float64 CODEC(ZSTD(1)),
    Max Float64 CODEC(ZSTD(1)),
    AggregationTemporality Int32 CODEC(ZSTD(1)),""",
    "summary": f"""{_HISTOGRAM_HEAD}
    ValueAtQuantiles Nested (
        Quantile Float64,
        Value Float64
    ) CODEC(ZSTD(1)),
    Flags UInt32 CODEC(ZSTD(1)),""",
}


def metrics_table(names: SchemaNames, kind: str) -> str:
    """One metrics table (`kind` is gauge, sum, histogram, exponential_histogram or summary), as the
    contrib exporter creates it, plus `IngestBatch`."""
    metric_name, time_type, order_by = _LAYOUTS[kind]
    exemplars = f"""    Exemplars Nested (
        FilteredAttributes {_MAP},
        TimeUnix {time_type},
        Value Float64,
        SpanId String,
        TraceId String
    ) CODEC(ZSTD(1)),"""
    time_index = "\n    INDEX idx_time_minmax TimeUnix TYPE minmax GRANULARITY 1," if time_type == "DateTime" else ""
    return f"""CREATE TABLE IF NOT EXISTS {names.store(names.metrics_table_name(kind))}{names.on_cluster} (
    ResourceAttributes {_MAP} CODEC(ZSTD(1)),
    ResourceSchemaUrl String CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    ScopeAttributes {_MAP} CODEC(ZSTD(1)),
    ScopeDroppedAttrCount UInt32 CODEC(ZSTD(1)),
    ScopeSchemaUrl String CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    MetricName {metric_name} CODEC(ZSTD(1)),
    MetricDescription String CODEC(ZSTD(1)),
    MetricUnit String CODEC(ZSTD(1)),
    Attributes {_MAP} CODEC(ZSTD(1)),
    StartTimeUnix {time_type} CODEC(Delta, ZSTD(1)),
    TimeUnix {time_type} CODEC(Delta, ZSTD(1)),
{_TAIL[kind].format(exemplars=exemplars)}
    IngestBatch String CODEC(ZSTD(1)),
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_key mapKeys(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_value mapValues(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_attr_key mapKeys(Attributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_attr_value mapValues(Attributes) TYPE bloom_filter(0.01) GRANULARITY 1,{time_index}
    INDEX idx_ingest_batch IngestBatch TYPE bloom_filter(0.001) GRANULARITY 4
) ENGINE = {names.topology.engine()}
PARTITION BY toDate(TimeUnix)
{order_by}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1"""


def metrics_tables(names: SchemaNames) -> list[str]:
    """The five metrics tables (with `distributed`: each local table and its Distributed table)."""
    statements = []
    for kind in METRIC_TYPES:
        statements.append(metrics_table(names, kind))
        statements.extend(distributed_table(names, names.metrics_table_name(kind), has_trace_id=False))
    return statements
