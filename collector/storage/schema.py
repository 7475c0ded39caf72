"""The storage schema: labtel's tables, and the SQL that turns OTLP into their rows.

The logs and traces tables have the column names and types of the OpenTelemetry Collector
contrib ClickHouse exporter, so Grafana's ClickHouse datasource and a contrib collector can
share them. Lab columns (event type, node, run, workflow, experiment) are MATERIALIZED from
the attributes. The metrics tables and their views are in labtel.collector.storage.metrics_schema,
built on this module's SQL helpers.

Ingest does no per-record work in Python: each signal has a `Null` input table shaped like its
OTLP request, into which serialized requests are inserted with `FORMAT ProtobufSingle`; a
materialized view flattens them into the storage table. The same view validates every record
(`throwIf`), so one bad request fails its insert instead of being stored wrongly; records holding
an array or key-value list value fail it too, and take the exact path (labtel.collector.otlp.exact).

The storage tables change only through versioned migrations. The ingest table and view are
code, not data: they are named after a fingerprint of their definition and created at start-up
when missing, so collectors of different versions write side by side through their own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

from labtel.collector.otlp.limits import DEFAULT_LIMITS, RecordLimits, request_view_checks, view_checks
from labtel.collector.storage.topology import LOCAL, Topology, quote_identifier, quote_string
from labtel.sdk import semconv

__all__ = ["SchemaNames", "Topology", "quote_identifier"]

EXACT_PATH_ERROR = "labtel: record needs validation or the exact path"
"""The `throwIf` message of the ingest views; it sends a batch to per-request triage."""


METRIC_TYPES: tuple[str, ...] = ("gauge", "sum", "histogram", "exponential_histogram", "summary")
"""The OTLP metric types; each has its own table (the keys of the exporter's `metrics_tables`)."""


@dataclass(frozen=True)
class SchemaNames:
    """Where labtel's tables live, as configured on the ClickHouse exporter."""

    database: str = "otel"
    logs_table: str = "otel_logs"
    traces_table: str = "otel_traces"
    metrics_tables: tuple[str, ...] = tuple(f"otel_metrics_{kind}" for kind in METRIC_TYPES)
    """The table of each metric type, in METRIC_TYPES order."""
    topology: Topology = LOCAL
    """One server, or a cluster (ON CLUSTER, Replicated engines, Distributed tables)."""
    limits: RecordLimits = DEFAULT_LIMITS
    """What a log record may hold: the logs ingest view checks it, so its name covers them."""

    def qualified(self, table: str) -> str:
        return f"{quote_identifier(self.database)}.{quote_identifier(table)}"

    @property
    def on_cluster(self) -> str:
        """` ON CLUSTER ...` for DDL statements, or ''."""
        return self.topology.on_cluster

    def store(self, table: str) -> str:
        """Where a data table's rows are stored (with `distributed`: the local table on each shard);
        its plain name is what inserts and queries use."""
        return self.qualified(self.topology.local_name(table))

    @property
    def logs_store(self) -> str:
        return self.store(self.logs_table)

    @property
    def traces_store(self) -> str:
        return self.store(self.traces_table)

    @property
    def trace_id_ts_store(self) -> str:
        return self.store(f"{self.traces_table}_trace_id_ts")

    def data_tables(self) -> list[str]:
        """The unqualified names of the data tables (sharded when `distributed`)."""
        return [self.logs_table, self.traces_table, f"{self.traces_table}_trace_id_ts", *self.metrics_tables]

    def store_tables(self, signal: str) -> dict[str, str]:
        """Like `storage_tables`, where the rows are stored (DELETE and ALTER go there)."""
        if signal == "metrics":
            return {kind: self.store(self.metrics_table_name(kind)) for kind in METRIC_TYPES}
        return {signal: self.store({"logs": self.logs_table, "traces": self.traces_table}[signal])}

    @property
    def logs(self) -> str:
        return self.qualified(self.logs_table)

    @property
    def traces(self) -> str:
        return self.qualified(self.traces_table)

    @property
    def trace_id_ts(self) -> str:
        return self.qualified(f"{self.traces_table}_trace_id_ts")

    @property
    def migrations(self) -> str:
        return self.qualified("labtel_schema_migrations")

    def target(self, signal: str) -> str:
        """The storage table of a signal."""
        return self.qualified({"logs": self.logs_table, "traces": self.traces_table}[signal])

    def metrics_table_name(self, kind: str) -> str:
        """The unqualified table of one metric type."""
        return self.metrics_tables[METRIC_TYPES.index(kind)]

    def metrics_table(self, kind: str) -> str:
        return self.qualified(self.metrics_table_name(kind))

    def storage_tables(self, signal: str) -> dict[str, str]:
        """The storage tables of a signal by what they hold: the signal itself, or each metric type."""
        if signal == "metrics":
            return {kind: self.metrics_table(kind) for kind in METRIC_TYPES}
        return {signal: self.target(signal)}

    def ingest_name(self, signal: str) -> str:
        """The unqualified name of a signal's ingest table (its views add `_mv`, or `_<type>_mv`)."""
        if signal == "metrics":
            # Five targets: the name covers their names as well as the definition.
            targets = "\n".join((ingest_fingerprint(signal), *self.metrics_tables))
            return f"labtel_metrics_ingest_{hashlib.sha256(targets.encode()).hexdigest()[:10]}"
        table = {"logs": self.logs_table, "traces": self.traces_table}[signal]
        return f"{table}_ingest_{ingest_fingerprint(signal, self.limits if signal == 'logs' else DEFAULT_LIMITS)}"

    def ingest_table(self, signal: str) -> str:
        """The Null table that serialized Export requests of a signal are inserted into."""
        return self.qualified(self.ingest_name(signal))

    def ingest_view(self, signal: str, kind: str | None = None) -> str:
        """The view filling a signal's table; for metrics, the first stage's view, or (`kind`)
        the view filling the table of one metric type."""
        suffix = "_mv" if kind is None else f"_{kind}_mv"
        return self.qualified(self.ingest_name(signal) + suffix)

    def metrics_ingest_stage(self) -> str:
        """The Null table between the metrics views: one row per metric (metrics_schema)."""
        return self.qualified(self.ingest_name("metrics") + "_metric")


# --- the ingest input: OTLP requests as ClickHouse columns ---------------------------------

_PROTO_MESSAGES = {
    "logs": "ExportLogsServiceRequest",
    "traces": "ExportTraceServiceRequest",
    "metrics": "ExportMetricsServiceRequest",
}


def ingest_proto(signal: str) -> str:
    """The inline protobuf schema ClickHouse parses a signal's Export request with."""
    folder = resources.files("labtel.collector.storage").joinpath("proto")
    return folder.joinpath("common.proto").read_text() + "\n" + folder.joinpath(f"{signal}.proto").read_text()


def ingest_message(signal: str) -> str:
    return _PROTO_MESSAGES[signal]


_ENUM = (
    "value Enum8('none' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, "
    "'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7)"
)
_ANY = (
    f"Tuple({_ENUM}, string_value String, bool_value String, int_value String, double_value String, "
    "array_value String, kvlist_value String, bytes_value String)"
)
"""An AnyValue as ClickHouse parses it. Its Protobuf input writes a bool, int64 or double field
into a String column as the text toString would give ('true', decimal digits, the shortest
double), so scalars need no conversion; a field the oneof did not set reads as its default's
text ('false', '0'), and the presence column (`value`) says which one is set. Arrays and
key-value lists are their serialized bytes: only their presence matters (the exact path)."""
_KEY_VALUES = f"Array(Tuple(key String, value {_ANY}))"
_RESOURCE = f"Tuple(attributes {_KEY_VALUES}, dropped_attributes_count UInt32)"
_SCOPE = f"Tuple(name String, version String, attributes {_KEY_VALUES}, dropped_attributes_count UInt32)"
_LOG_RECORD = (
    "Tuple(time_unix_nano UInt64, observed_time_unix_nano UInt64, severity_number Int32, "
    f"severity_text String, body {_ANY}, attributes {_KEY_VALUES}, dropped_attributes_count UInt32, "
    "flags UInt32, trace_id String, span_id String, event_name String)"
)
_SPAN = (
    "Tuple(trace_id String, span_id String, trace_state String, parent_span_id String, flags UInt32, "
    "name String, kind Int32, start_time_unix_nano UInt64, end_time_unix_nano UInt64, "
    f"attributes {_KEY_VALUES}, dropped_attributes_count UInt32, "
    f"events Array(Tuple(time_unix_nano UInt64, name String, attributes {_KEY_VALUES}, "
    "dropped_attributes_count UInt32)), dropped_events_count UInt32, "
    f"links Array(Tuple(trace_id String, span_id String, trace_state String, attributes {_KEY_VALUES}, "
    "dropped_attributes_count UInt32, flags UInt32)), dropped_links_count UInt32, "
    "status Tuple(message String, code Int32))"
)
_INGEST_COLUMNS = {
    "logs": (
        f"resource_logs Array(Tuple(resource {_RESOURCE}, scope_logs Array(Tuple(scope {_SCOPE}, "
        f"log_records Array({_LOG_RECORD}), schema_url String)), schema_url String))"
    ),
    "traces": (
        f"resource_spans Array(Tuple(resource {_RESOURCE}, scope_spans Array(Tuple(scope {_SCOPE}, "
        f"spans Array({_SPAN}), schema_url String)), schema_url String))"
    ),
}


# --- OTLP values as stored strings ------------------------------------------------------------
# Scalars are stored as text (ints in decimal, doubles in ClickHouse's shortest form, bytes in
# base64). Arrays and key-value lists are stored as compact JSON, rendered by the exact path
# (labtel.collector.otlp.values renders every value in Python); tests hold the two to each other.
#
# ClickHouse plans the views again on every insert, and a lambda over the nested request costs
# milliseconds to plan, so the expressions below avoid lambdas where a subcolumn does
# (`attributes.key`, `attributes.value.value`) and render each attribute list with one.


def value_text(v: str) -> str:
    """SQL: a scalar ingest AnyValue tuple as the text labtel stores.

    Branch-free (an array of the alternatives, indexed by the presence column): short-circuit
    `if`/`multiIf` filters its argument columns and costs more than these cheap alternatives.
    A list value renders as '' here; `_has_list` sends its record to the exact path."""
    return (
        f"[{v}.string_value, {v}.bool_value, {v}.int_value, {v}.double_value, '', '', "
        f"base64Encode({v}.bytes_value)][toUInt8({v}.value)]"
    )


def _is_list(v: str) -> str:
    """SQL: true when an AnyValue is an array or a key-value list (stored by the exact path)."""
    return f"toUInt8({v}.value) IN (5, 6)"


def _has_list(key_values: str, nested: bool = False) -> str:
    """SQL: true when a KeyValue array (`nested`: an array of them) holds an array or key-value
    list value. Subcolumns, no lambda: `.value.value` are the presence columns of the values."""
    kinds = f"{key_values}.value.value"
    if nested:
        kinds = f"arrayFlatten({kinds})"
    return f"hasAny(CAST({kinds}, 'Array(Int8)'), [5, 6])"


def attributes_map(key_values: str) -> str:
    """SQL: an ingest KeyValue array as a key-sorted Map(LowCardinality(String), String) holding
    each key once.

    OTLP wants the keys of an attribute list unique, but a sender may repeat one: the last value
    is kept, as a dict or an OpenTelemetry SDK keeps it, on both ingest paths (the exact path's
    requests come through here too). A Map would keep every entry, in an order mapSort leaves
    unspecified, and `m['k']` (so `ServiceName`, the lab columns and filters) read one of them
    while a client's dict kept another. `last` marks the last occurrence of each key (numbered from
    the end, it is the first). This costs 3-5% of a logs or traces insert's CPU, 1% of a metrics
    insert's (planning: 2-3 ms more per insert); testing for a repeated key first, to skip the
    filters when there is none, measured dearer than the filters.
    Sorted as a Map(String, String), then cast: mapSort over LowCardinality keys is slower."""
    last = f"arrayReverse(arrayEnumerateUniq(arrayReverse({key_values}.key)))"
    values = f"arrayMap(x -> {value_text('x.value')}, {key_values})"
    kept = f"(arrayFilter((k, n) -> n = 1, {key_values}.key, {last}), arrayFilter((v, n) -> n = 1, {values}, {last}))"
    return f"CAST(mapSort(CAST({kept}, 'Map(String, String)')), '{_MAP}')"


def _invalid_utf8(strings: Sequence[str], arrays: Sequence[str] = ()) -> str:
    """SQL: true when any of the strings, or any element of the string arrays, is not valid UTF-8.
    One check over everything joined by newlines (a newline cannot complete a broken sequence)."""
    parts = [*strings, *(f"arrayStringConcat({array}, '\\n')" for array in arrays)]
    return "NOT isValidUTF8(concat(" + ", '\\n', ".join(parts) + "))"


def _key_value_strings(key_values: str) -> list[str]:
    """The string arrays of a KeyValue array whose UTF-8 validity the exact path would check:
    keys and string values (the other scalars render as ASCII)."""
    return [f"{key_values}.key", f"{key_values}.value.string_value"]


TRACE_ID_BYTES, SPAN_ID_BYTES = 16, 8


def _zero_id(size: int) -> str:
    """SQL: the id of `size` zero bytes, which OTLP defines as invalid (an id that is not set)."""
    return f"unhex('{'00' * size}')"


def _hex_id(column: str, size: int) -> str:
    """SQL: a trace or span id (`size` bytes) as stored: lower-case hex, and '' for an id of all
    zero bytes, which OTLP defines as not set (the contrib exporter's TraceIDToHexOrEmptyString),
    so that a search by trace id finds no record without one."""
    return f"if({column} = {_zero_id(size)}, '', lower(hex({column})))"


def _nanos(column: str) -> str:
    return f"fromUnixTimestamp64Nano(toInt64({column}))"


_SEVERITY_TEXTS = [
    "",
    *(
        f"{name}{n if n > 1 else ''}"
        for name in ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
        for n in range(1, 5)
    ),
]
MAX_TIME_NANOS = (2**32 - 1) * 10**9
"""The latest time labtel stores, 2106-02-07T06:28:15Z (MAX_TIME_TEXT), in Unix nanoseconds: the
last second a ClickHouse DateTime (32-bit) holds. Later times would fit the DateTime64(9)
`Timestamp` columns but wrap or clamp where they become seconds (the logs' partition key and
TimestampTime, the trace-id lookup's Start and End, the metrics' TimeUnix, the TTL), so both
ingest paths refuse them."""
MAX_TIME_TEXT = "2106-02-07T06:28:15Z"
_BATCH = "getSetting('insert_deduplication_token')"
"""Each insert names its batch in this setting; rows keep it, so a replay can tell what landed."""
_SPAN_KINDS = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
]
_STATUS_CODES = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"]


def _sql_array(items: list[str]) -> str:
    return "[" + ", ".join("'" + item + "'" for item in items) + "]"


def _checked(value: str, conditions: list[str]) -> str:
    """SQL: `value`, after refusing the row when any condition holds.

    The checks ride on an output column instead of a WHERE clause, so they reuse the values
    already computed for the row rather than computing them a second time."""
    joined = "\n        OR ".join(f"({c})" for c in conditions)
    return f"{value} + throwIf(\n        {joined},\n        '{EXACT_PATH_ERROR}')"


def logs_view_select(source: str, limits: RecordLimits = DEFAULT_LIMITS) -> str:
    """The SELECT that flattens ingested ExportLogsServiceRequests into `otel_logs` rows.

    Four levels, each computing what belongs to it once: the request (one row per insert: the
    checks over the strings and values of all its records at once), each resource, each scope,
    each record. The checks of the upper levels ride along as a flag the record's check includes;
    a resource or scope without records stores nothing and refuses nothing, as before."""
    severity_texts = _sql_array(_SEVERITY_TEXTS)
    records = "resource_logs.scope_logs.log_records"
    request_checks = " OR ".join(
        [
            f"hasAny(CAST(arrayFlatten({records}.body.value), 'Array(Int8)'), [5, 6])",
            _has_list(f"{records}.attributes", nested=True),
            *request_view_checks(records, limits),
            _invalid_utf8(
                [],
                [
                    f"arrayFlatten({records}.{field})"
                    for field in ("body.string_value", "severity_text", "event_name", "attributes.key")
                ]
                + [f"arrayFlatten({records}.attributes.value.string_value)"],
            ),
        ]
    )
    resource_checks = " OR ".join(
        [
            "request_refused",
            _has_list("resource.attributes"),
            _invalid_utf8(["resource_url"], _key_value_strings("resource.attributes")),
        ]
    )
    scope_checks = " OR ".join(
        [
            "resource_refused",
            _has_list("scope.attributes"),
            _invalid_utf8(["scope.name", "scope.version", "scope_url"], _key_value_strings("scope.attributes")),
        ]
    )
    checks = [
        "scope_refused",
        "length(lr.trace_id) NOT IN (0, 16) OR length(lr.span_id) NOT IN (0, 8)",
        f"lr.time_unix_nano > {MAX_TIME_NANOS} OR lr.observed_time_unix_nano > {MAX_TIME_NANOS}",
        "lr.severity_number < 0 OR lr.severity_number > 24",
        *view_checks("lr", limits),
    ]
    return f"""SELECT
    if(lr.observed_time_unix_nano = 0, now64(9), {_nanos("lr.observed_time_unix_nano")}) AS ObservedTimestamp,
    if(lr.time_unix_nano = 0, ObservedTimestamp, {_nanos("lr.time_unix_nano")}) AS Timestamp,
    {_hex_id("lr.trace_id", TRACE_ID_BYTES)} AS TraceId,
    {_hex_id("lr.span_id", SPAN_ID_BYTES)} AS SpanId,
    toUInt8(bitAnd(lr.flags, 255)) AS TraceFlags,
    if(lr.severity_text = '', {severity_texts}[lr.severity_number + 1], lr.severity_text) AS SeverityText,
    ResourceAttributes,
    ServiceName,
    {value_text("lr.body")} AS Body,
    ResourceSchemaUrl,
    ScopeSchemaUrl,
    ScopeName,
    ScopeVersion,
    ScopeAttributes,
    {attributes_map("lr.attributes")} AS LogAttributes,
    lr.event_name AS EventName,
    {_BATCH} AS IngestBatch,
    toUInt8({_checked("lr.severity_number", checks)}) AS SeverityNumber
FROM (
    SELECT
        ResourceAttributes,
        ServiceName,
        ResourceSchemaUrl,
        scope.name AS ScopeName,
        scope.version AS ScopeVersion,
        {attributes_map("scope.attributes")} AS ScopeAttributes,
        scope_url AS ScopeSchemaUrl,
        {scope_checks} AS scope_refused,
        records
    FROM (
        SELECT
            {attributes_map("resource.attributes")} AS ResourceAttributes,
            ResourceAttributes['{semconv.SERVICE_NAME}'] AS ServiceName,
            resource_url AS ResourceSchemaUrl,
            {resource_checks} AS resource_refused,
            scopes
        FROM (SELECT resource_logs, {request_checks} AS request_refused FROM {source})
        ARRAY JOIN resource_logs.resource AS resource, resource_logs.schema_url AS resource_url,
            resource_logs.scope_logs AS scopes
    )
    ARRAY JOIN scopes.scope AS scope, scopes.schema_url AS scope_url, scopes.log_records AS records
)
ARRAY JOIN records AS lr"""


def traces_view_select(source: str) -> str:
    """The SELECT that flattens ingested ExportTraceServiceRequests into `otel_traces` rows.

    Built like the logs view: resource and scope columns once per resource and scope. Scope
    attributes are not stored in `otel_traces`, so they are neither rendered nor checked."""
    resource_checks = " OR ".join(
        [_has_list("resource.attributes"), _invalid_utf8(["resource_url"], _key_value_strings("resource.attributes"))]
    )
    checks = [
        "scope_refused",
        "length(s.trace_id) != 16 OR length(s.span_id) != 8 OR length(s.parent_span_id) NOT IN (0, 8)",
        # A span's own ids must be set: all zero bytes are invalid (OTLP).
        f"s.trace_id = {_zero_id(TRACE_ID_BYTES)} OR s.span_id = {_zero_id(SPAN_ID_BYTES)}",
        "arrayExists(ln -> length(ln.trace_id) != 16 OR length(ln.span_id) != 8, s.links)",
        f"s.start_time_unix_nano > {MAX_TIME_NANOS} OR s.end_time_unix_nano > {MAX_TIME_NANOS}",
        f"arrayExists(t -> t > {MAX_TIME_NANOS}, s.events.time_unix_nano)",
        "s.kind < 0 OR s.kind > 5 OR s.status.code < 0 OR s.status.code > 2",
        _has_list("s.attributes"),
        _has_list("s.events.attributes", nested=True),
        _has_list("s.links.attributes", nested=True),
        _invalid_utf8(
            ["s.name", "s.trace_state", "s.status.message"],
            [
                "s.events.name",
                "s.links.trace_state",
                *_key_value_strings("s.attributes"),
                *(f"arrayFlatten({array})" for array in _key_value_strings("s.events.attributes")),
                *(f"arrayFlatten({array})" for array in _key_value_strings("s.links.attributes")),
            ],
        ),
    ]
    return f"""SELECT
    {_nanos("s.start_time_unix_nano")} AS Timestamp,
    {_hex_id("s.trace_id", TRACE_ID_BYTES)} AS TraceId,
    {_hex_id("s.span_id", SPAN_ID_BYTES)} AS SpanId,
    {_hex_id("s.parent_span_id", SPAN_ID_BYTES)} AS ParentSpanId,
    s.trace_state AS TraceState,
    s.name AS SpanName,
    {_sql_array(_SPAN_KINDS)}[s.kind + 1] AS SpanKind,
    ResourceAttributes,
    ServiceName,
    ScopeName,
    ScopeVersion,
    {attributes_map("s.attributes")} AS SpanAttributes,
    {_sql_array(_STATUS_CODES)}[s.status.code + 1] AS StatusCode,
    s.status.message AS StatusMessage,
    arrayMap(t -> {_nanos("t")}, s.events.time_unix_nano) AS `Events.Timestamp`,
    s.events.name AS `Events.Name`,
    arrayMap(ev -> {attributes_map("ev.attributes")}, s.events) AS `Events.Attributes`,
    arrayMap(id -> {_hex_id("id", TRACE_ID_BYTES)}, s.links.trace_id) AS `Links.TraceId`,
    arrayMap(id -> {_hex_id("id", SPAN_ID_BYTES)}, s.links.span_id) AS `Links.SpanId`,
    s.links.trace_state AS `Links.TraceState`,
    arrayMap(ln -> {attributes_map("ln.attributes")}, s.links) AS `Links.Attributes`,
    {_BATCH} AS IngestBatch,
    {_checked("if(s.end_time_unix_nano >= s.start_time_unix_nano, s.end_time_unix_nano - s.start_time_unix_nano, 0)", checks)}
        AS Duration
FROM (
    SELECT
        ResourceAttributes,
        ServiceName,
        scope.name AS ScopeName,
        scope.version AS ScopeVersion,
        resource_refused OR {_invalid_utf8(["scope.name", "scope.version", "scope_url"])} AS scope_refused,
        spans
    FROM (
        SELECT
            {attributes_map("resource.attributes")} AS ResourceAttributes,
            ResourceAttributes['{semconv.SERVICE_NAME}'] AS ServiceName,
            {resource_checks} AS resource_refused,
            scopes
        FROM {source}
        ARRAY JOIN resource_spans.resource AS resource, resource_spans.schema_url AS resource_url,
            resource_spans.scope_spans AS scopes
    )
    ARRAY JOIN scopes.scope AS scope, scopes.schema_url AS scope_url, scopes.spans AS spans
)
ARRAY JOIN spans AS s"""


# --- views for the dashboards -----------------------------------------------------------------

PARTS_VIEW = "labtel_parts"
"""Every node's active parts of labtel's database: what the collector-health dashboard's Tables
panel reads, on one server and on a cluster alike."""


def parts_view(names: SchemaNames) -> str:
    """The view of `PARTS_VIEW`: on a cluster, the parts of every replica of every shard
    (`clusterAllReplicas`), each with the node it is on; on one server, that server's."""
    source = (
        f"clusterAllReplicas({quote_string(names.topology.cluster)}, system.parts)"
        if names.topology.cluster
        else "system.parts"
    )
    return (
        f"CREATE VIEW IF NOT EXISTS {names.qualified(PARTS_VIEW)}{names.on_cluster} AS\n"
        f"SELECT hostName() AS node, table, rows, bytes_on_disk, modification_time\n"
        f"FROM {source}\nWHERE database = {quote_string(names.database)} AND active"
    )


# --- table DDL ---------------------------------------------------------------------------------

_MAP = "Map(LowCardinality(String), String)"


def _lab_columns() -> str:
    lines = []
    for column, attribute in semconv.LAB_COLUMNS.items():
        own, resource = f"LogAttributes['{attribute}']", f"ResourceAttributes['{attribute}']"
        value = f"if({own} != '', {own}, {resource})"
        if column == "EventType":
            value = f"lower(if({own} != '', {own}, EventName))"
        lines.append(f"    {column} LowCardinality(String) MATERIALIZED {value},")
    return "\n".join(lines)


def utilization_columns() -> list[str]:
    """The lab columns utilization reads, each MATERIALIZED from its attributes (migration 6)."""
    columns = []
    for column, (attributes, from_resource) in semconv.UTILIZATION_COLUMNS.items():
        value = "''"
        for attribute in reversed(attributes):
            own, resource = f"LogAttributes['{attribute}']", f"ResourceAttributes['{attribute}']"
            fallback = f"if({resource} != '', {resource}, {value})" if from_resource else value
            value = f"if({own} != '', {own}, {fallback})"
        if column == "ActionStatus":
            value = f"lower({value})"
        kind = "String" if column == "ActionId" else "LowCardinality(String)"
        columns.append(f"{column} {kind} MATERIALIZED {value}")
    columns.append(f"DurationMs Float64 MATERIALIZED toFloat64OrZero(LogAttributes['{semconv.DURATION_MS}'])")
    return columns


LOGS_TIME_BUCKET = "toStartOfFiveMinutes(Timestamp)"
"""The first column of the logs table's sort key. It grows with Timestamp, so a query ordered by
(LOGS_TIME_BUCKET, Timestamp, …) returns the order of (Timestamp, …) while ClickHouse reads the
table in its key's order: it sorts only within five minutes, and stops early under a LIMIT."""


def logs_table(names: SchemaNames) -> str:
    """`otel_logs`: the contrib exporter's columns, plus labtel's event id and lab columns."""
    return f"""CREATE TABLE IF NOT EXISTS {names.logs_store}{names.on_cluster} (
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TimestampTime DateTime ALIAS toDateTime(Timestamp),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    TraceFlags UInt8,
    SeverityText LowCardinality(String) CODEC(ZSTD(1)),
    SeverityNumber UInt8,
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    Body String CODEC(ZSTD(1)),
    ResourceSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes {_MAP} CODEC(ZSTD(1)),
    ScopeSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion LowCardinality(String) CODEC(ZSTD(1)),
    ScopeAttributes {_MAP} CODEC(ZSTD(1)),
    LogAttributes {_MAP} CODEC(ZSTD(1)),
    EventName String CODEC(ZSTD(1)),
    ObservedTimestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    EventId UUID DEFAULT generateUUIDv7(),
    IngestBatch String CODEC(ZSTD(1)),
{_lab_columns()}
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_event_id EventId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_key mapKeys(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_value mapValues(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_key mapKeys(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_value mapValues(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_lower_body lower(Body) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8,
    INDEX idx_ingest_batch IngestBatch TYPE bloom_filter(0.001) GRANULARITY 4
) ENGINE = {names.topology.engine()}
PARTITION BY toDate(Timestamp)
ORDER BY ({LOGS_TIME_BUCKET}, ServiceName, Timestamp)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1"""


def traces_table(names: SchemaNames) -> str:
    """`otel_traces`, as the contrib exporter creates it."""
    return f"""CREATE TABLE IF NOT EXISTS {names.traces_store}{names.on_cluster} (
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    TraceState String CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanKind LowCardinality(String) CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes {_MAP} CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    SpanAttributes {_MAP} CODEC(ZSTD(1)),
    Duration UInt64 CODEC(ZSTD(1)),
    StatusCode LowCardinality(String) CODEC(ZSTD(1)),
    StatusMessage String CODEC(ZSTD(1)),
    Events Nested (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes {_MAP}
    ) CODEC(ZSTD(1)),
    Links Nested (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes {_MAP}
    ) CODEC(ZSTD(1)),
    IngestBatch String CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1,
    INDEX idx_ingest_batch IngestBatch TYPE bloom_filter(0.001) GRANULARITY 4
) ENGINE = {names.topology.engine()}
PARTITION BY toDate(Timestamp)
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp))
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1"""


def trace_id_ts_table(names: SchemaNames) -> list[str]:
    """The trace-id → time-range lookup Grafana uses to bound trace-by-id queries."""
    view = names.qualified(f"{names.traces_table}_trace_id_ts_mv")
    return [
        f"""CREATE TABLE IF NOT EXISTS {names.trace_id_ts_store}{names.on_cluster} (
    TraceId String CODEC(ZSTD(1)),
    Start SimpleAggregateFunction(min, DateTime),
    End SimpleAggregateFunction(max, DateTime),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.01) GRANULARITY 1
) ENGINE = {names.topology.engine("AggregatingMergeTree")}
PARTITION BY toDate(Start)
ORDER BY (TraceId)""",
        *distributed_table(names, f"{names.traces_table}_trace_id_ts", has_trace_id=True),
        # On each shard, from the stored spans to the shard's lookup (with `distributed`: both local).
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {view}{names.on_cluster} TO {names.trace_id_ts_store} AS
SELECT TraceId, min(toDateTime(Timestamp)) AS Start, max(toDateTime(Timestamp)) AS End
FROM {names.traces_store}
WHERE TraceId != ''
GROUP BY TraceId""",
    ]


def distributed_table(names: SchemaNames, table: str, *, has_trace_id: bool) -> list[str]:
    """With `distributed`: the Distributed table `table` over `<table>_local` on every shard, with
    the same columns (and none of the local table's indexes); otherwise nothing."""
    if not names.topology.distributed:
        return []
    local = names.topology.local_name(table)
    engine = names.topology.distributed_engine(names.database, local, has_trace_id)
    return [
        f"CREATE TABLE IF NOT EXISTS {names.qualified(table)}{names.on_cluster} AS {names.qualified(local)} "
        f"ENGINE = {engine}"
    ]


def alter(names: SchemaNames, table: str, clause: str, *, columns: bool = False) -> list[str]:
    """`ALTER TABLE ... clause` for a data table where its rows are stored; `columns`: a change of
    its columns, made on its Distributed table too (indexes, projections, settings stay local)."""
    statements = [f"ALTER TABLE {names.store(table)}{names.on_cluster} {clause}"]
    if columns and names.topology.distributed:
        statements.append(f"ALTER TABLE {names.qualified(table)}{names.on_cluster} {clause}")
    return statements


def delete_rows(names: SchemaNames, store_table: str, where: str) -> str:
    """A lightweight DELETE of a data table's rows where they are stored (on every shard)."""
    return f"DELETE FROM {store_table}{names.on_cluster} WHERE {where}"


def _view_select(signal: str, source: str, limits: RecordLimits) -> str:
    return logs_view_select(source, limits) if signal == "logs" else traces_view_select(source)


@cache
def ingest_fingerprint(signal: str, limits: RecordLimits = DEFAULT_LIMITS) -> str:
    """A short hash of everything that defines a signal's ingest path (schema, columns, views;
    for logs, the record limits its view checks)."""
    if signal == "metrics":
        from labtel.collector.storage import metrics_schema  # built on this module's SQL helpers

        definition = "\n".join((ingest_proto(signal), metrics_schema.ingest_definition()))
    else:
        definition = "\n".join(
            (ingest_proto(signal), _INGEST_COLUMNS[signal], _view_select(signal, "{source}", limits))
        )
    return hashlib.sha256(definition.encode()).hexdigest()[:10]


def ingest_objects(names: SchemaNames, signal: str) -> list[str]:
    """The Null input table and the flattening view(s) of one signal's ingest path."""
    if signal == "metrics":
        from labtel.collector.storage import metrics_schema

        return metrics_schema.ingest_objects(names)
    return [
        f"CREATE TABLE IF NOT EXISTS {names.ingest_table(signal)}{names.on_cluster} "
        f"({_INGEST_COLUMNS[signal]}) ENGINE = Null",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {names.ingest_view(signal)}{names.on_cluster} "
        f"TO {names.target(signal)} AS\n" + _view_select(signal, names.ingest_table(signal), names.limits),
    ]


def migrations_table(names: SchemaNames) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {names.migrations}{names.on_cluster} (
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3),
    labtel_version String
) ENGINE = {names.topology.engine(state=True)} ORDER BY version"""


def ttl_clause(column: str, seconds: int) -> str:
    """The TTL expression of a table, in the text ClickHouse shows it back as."""
    return f"toDateTime({column}) + toIntervalSecond({seconds})"


NEVER = "toDateTime('2106-02-07 06:28:15', 'UTC')"
"""The latest DateTime: a TTL that never comes."""


def expires_at_column() -> str:
    """`ExpiresAt`: when an event asked to be deleted (`lab.ttl_seconds` after its timestamp, or
    `lab.expires_at`), or 0 when it did not."""
    ttl = f"toFloat64OrZero(LogAttributes['{semconv.LAB_TTL_SECONDS}'])"
    at = f"LogAttributes['{semconv.LAB_EXPIRES_AT}']"
    return (
        f"ExpiresAt DateTime64(3) MATERIALIZED if({ttl} > 0, "
        f"toDateTime64(Timestamp, 3) + toIntervalMillisecond(toInt64({ttl} * 1000)), "
        f"parseDateTime64BestEffortOrZero({at}, 3, 'UTC'))"
    )


def logs_ttl_clause(seconds: int) -> str:
    """The logs table's TTL: an event goes at its own expiry or at the retention, whichever is first."""
    if seconds <= 0:
        return f"if(ExpiresAt = 0, {NEVER}, toDateTime(ExpiresAt))"
    retention = ttl_clause("Timestamp", seconds)
    return f"if(ExpiresAt = 0, {retention}, least(toDateTime(ExpiresAt), {retention}))"


HOURLY_COUNTS = "p_counts_hourly"
"""The projection of otel_logs holding event counts per hour, service, event type and severity."""


def hourly_counts_projection() -> str:
    """The hourly counts projection: `/stats` and dashboards count whole hours from it. Events
    with an expiry of their own (`ExpiresAt != 0`) are kept apart, since they may be hidden."""
    keys = "toStartOfHour(Timestamp), ExpiresAt = 0, ServiceName, EventType, SeverityNumber, SeverityText"
    return f"PROJECTION {HOURLY_COUNTS} (SELECT {keys}, count() GROUP BY {keys})"


HOURLY_NODES = "p_nodes_hourly"
"""The projection of otel_logs holding event counts per hour and node (with its workcell and lab)."""


def hourly_nodes_projection() -> str:
    """The hourly nodes projection: the utilization reports find the nodes seen in whole hours from
    it. Events with an expiry of their own (`ExpiresAt != 0`) are kept apart, since they may be hidden."""
    keys = "toStartOfHour(Timestamp), ExpiresAt = 0, NodeId, WorkcellId, LabName"
    return f"PROJECTION {HOURLY_NODES} (SELECT {keys}, count() GROUP BY {keys})"


BODY_WORDS_INDEX = "idx_body_words"
"""The text index of otel_logs that word search (`GET /events?q=`) reads (migration 11)."""

IDEOGRAPHS = (
    "\u3005-\u3007\u3021-\u3029\u3038-\u303b\u3041-\u309f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
)
"""The characters that are each a word of their own (the contents of a regex character class): Han
ideographs and hiragana, as Unicode's word boundaries (UAX #29) have them, since Chinese and Japanese
put no spaces between words. Runs of other letters (Latin, Cyrillic, katakana, Hangul, ...) and
digits are one word each."""


def _re2_class(ranges: str) -> str:
    """`ranges` (characters and `a-b` ranges) as an RE2 character class body, inside a SQL string."""
    return "".join(c if c == "-" else f"\\\\x{{{ord(c):x}}}" for c in ranges)


BODY_WORDS = (
    "if(isValidASCII(Body), lower(Body), replaceRegexpAll(replaceRegexpAll(replaceRegexpAll("
    "normalizeUTF8NFD(lowerUTF8(Body)), '\\\\p{Mn}+', ''), "
    f"'[^\\\\x00-\\\\x7f\\\\p{{L}}\\\\p{{N}}]+', ' '), '[{_re2_class(IDEOGRAPHS)}]', ' \\\\0 '))"
)
"""SQL: the body as the word index reads it, with its `splitByNonAlpha` tokenizer (which splits at
ASCII characters other than letters and digits only), so that its words are the runs of Unicode
letters and digits, each ideograph a word of its own, lower-cased in every script.

Without it the UTF-8 bytes of `—`, `°` or an emoji are word bytes to the tokenizer (in
"done—ok at 20°C" neither `done` nor `20` is a word), and `lower()` changes ASCII letters only. A
body with a byte outside ASCII is lower-cased by `lowerUTF8` and folded (decomposed, NFD, and its
combining marks dropped: `café`, `cafe\u0301` and `cafe` are one word, `cafe`), each run of non-ASCII
characters that are not letters or digits becomes a space, then each ideograph gets a space either side (two
passes: a capture group would take RE2 off its fast path, 2x the cost). An ASCII body (most of
them) is `lower(Body)`, as migration 4's index had it, with the same words: `if` runs the regexes for
the other rows only. Cost: see bench/search_index.py and the README. `query_api.events.search_tokens`
splits a search the same way."""


def body_words_index() -> str:
    """The word index of otel_logs, as `ADD INDEX` takes it."""
    return f"{BODY_WORDS_INDEX} {BODY_WORDS} TYPE text(tokenizer = 'splitByNonAlpha')"


def has_word(parameter: str) -> str:
    """SQL: the body has the word in the String parameter `parameter`, in any case (what the word
    index answers). The parameter must be one word, as `query_api.events.search_tokens` gives them."""
    return f"hasToken({BODY_WORDS}, lowerUTF8({{{parameter}:String}}))"


NOT_EXPIRED = "(ExpiresAt = 0 OR ExpiresAt > now64(3))"
"""SQL: the event has not expired (TTL deletes expired rows only at the next merge), row by row:
for lookups of a few rows; scans use `not_expired`."""


def not_expired(logs: str, within: str = "") -> str:
    """SQL: the event has not expired, for a query scanning many rows of `logs`.

    Reading every row's ExpiresAt costs about as much as a selector's other conditions together
    (+60 ms over 10M events, bench/query.py), and expired events not yet deleted are rare. So a
    scalar subquery first asks the ExpiresAt index whether any event of `logs` (within `within`, a
    condition on Timestamp, when given) has expired: when none has, ClickHouse folds the whole
    condition to true before it reads a row; otherwise it is NOT_EXPIRED."""
    scope = f" AND {within}" if within else ""
    return f"((SELECT count() = 0 FROM {logs} WHERE ExpiresAt > 0 AND ExpiresAt <= now64(3){scope}) OR {NOT_EXPIRED})"
