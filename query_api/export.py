"""`GET /export`: the events a filter selects, streamed as CSV, NDJSON or Parquet in bounded memory.

The range is cut into time windows of at most `chunk_rows` events, planned from a count of events
per five minutes (the table's own key, so the count is cheap) and refined where a window holds
more. Each window is one query, read while earlier ones are being sent (`PREFETCH` at a time),
so at most `PREFETCH` + 1 windows are in memory whatever the size of the export. Rows come oldest
first, ordered by (Timestamp, EventId) like the pages of `/events`; ClickHouse reads each window
in the table's key order and sorts only within five minutes (a full sort doubled the cost of a
window).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from labtel.collector.storage.client import Storage
from labtel.collector.storage.schema import LOGS_TIME_BUCKET
from labtel.query_api.events import EventFilter
from labtel.query_api.params import MAX_TIME_NS

EXPORT_COLUMNS: list[tuple[str, str, str]] = [
    ("event_id", "toString(EventId)", "stable id of the stored record (UUID)"),
    ("timestamp", "Timestamp", "event time, UTC, nanoseconds (RFC 3339 in CSV and NDJSON)"),
    ("time_unix_nano", "toUnixTimestamp64Nano(Timestamp)", "event time as Unix nanoseconds"),
    ("observed_timestamp", "ObservedTimestamp", "when the event was observed (collected)"),
    ("severity_text", "SeverityText", "INFO, WARN, ERROR, …"),
    ("severity_number", "SeverityNumber", "OpenTelemetry severity, 1-24"),
    ("service_name", "ServiceName", "resource `service.name`"),
    ("event_type", "EventType", "`lab.event.type`, lower case (else the OTel event name)"),
    ("body", "Body", "the message"),
    ("node_id", "NodeId", "`lab.node.id`"),
    ("run_id", "RunId", "`lab.run.id`"),
    ("workflow_id", "WorkflowId", "`lab.workflow.id`"),
    ("experiment_id", "ExperimentId", "`lab.experiment.id`"),
    ("trace_id", "TraceId", "32 hex digits, or empty"),
    ("span_id", "SpanId", "16 hex digits, or empty"),
    ("trace_flags", "TraceFlags", "W3C trace flags"),
    ("event_name", "EventName", "the OTel event name"),
    ("scope_name", "ScopeName", "instrumentation scope (logger) name"),
    ("scope_version", "ScopeVersion", "instrumentation scope version"),
    ("attributes", "LogAttributes", "the record's attributes (a JSON object in CSV)"),
    ("resource", "ResourceAttributes", "the resource's attributes (a JSON object in CSV)"),
]
"""The columns of an export, in order: (name, SQL, meaning)."""

_MAP_COLUMNS = {"LogAttributes", "ResourceAttributes"}
_SETTINGS = (
    "SETTINGS date_time_output_format = 'iso', session_timezone = 'UTC', output_format_arrow_string_as_string = 1, "
    "output_format_arrow_compression_method = 'none', output_format_json_quote_64bit_integers = 0, "
    # LowCardinality columns (and the maps' keys) leave ClickHouse as their dictionary and indexes,
    # which the Parquet writer takes as they are (`_parquet_writer`): a fifth less time for a Parquet
    # export than plain strings (bench/query.py)
    "output_format_arrow_low_cardinality_as_dictionary = 1"
)
_DICTIONARY_COLUMNS = [
    "severity_text",
    "service_name",
    "event_type",
    "node_id",
    "run_id",
    "workflow_id",
    "experiment_id",
    "event_name",
    "scope_name",
    "scope_version",
]
"""Columns with few distinct values: dictionary-encoded in Parquet (smaller, and cheaper to write)."""
_STATISTICS_COLUMNS = ["timestamp", "time_unix_nano", "severity_number"]
"""Columns whose min/max each row group records, so readers can skip row groups by time and severity."""
_PLAN_WIDTH_NS = 300 * 1_000_000_000
_MIN_WIDTH_NS = 1_000_000
PREFETCH = 2
"""Windows read ahead while one is written: ClickHouse reads a window in key order on one thread
(two threads were no faster), so two queries keep both cores busy beside the Parquet writer."""


@dataclass(frozen=True)
class Window:
    """A slice of the export: events with start_ns <= Timestamp < end_ns; `rows` when planned."""

    start_ns: int
    end_ns: int
    rows: int


def _last_ns(end_ns: int) -> int:
    """The last nanosecond of a window ending (exclusively) at `end_ns`, as an Int64 query
    parameter: the end of a window holding an event at MAX_TIME_NS (2^63 - 1) lies past Int64."""
    return min(end_ns - 1, MAX_TIME_NS)


def column_list(fmt: str) -> str:
    """The SELECT list of an export in ClickHouse format `fmt` (maps as JSON text in CSV)."""
    parts = []
    for name, sql, _ in EXPORT_COLUMNS:
        if fmt == "CSV" and sql in _MAP_COLUMNS:
            sql = f"toJSONString({sql})"
        parts.append(f"{sql} AS {name}")
    return ", ".join(parts)


def csv_header() -> bytes:
    return (",".join(f'"{name}"' for name, _, _ in EXPORT_COLUMNS) + "\n").encode()


def plan_windows(storage: Storage, flt: EventFilter, chunk_rows: int) -> list[Window]:
    """Time windows covering every selected event, each of at most `chunk_rows` events (but for
    events sharing one millisecond)."""
    where, params = flt.where()
    return _windows(storage, where, params, _PLAN_WIDTH_NS, None, chunk_rows)


def _windows(
    storage: Storage,
    where: str,
    params: dict[str, Any],
    width_ns: int,
    bounds: tuple[int, int] | None,
    chunk_rows: int,
) -> list[Window]:
    clause = where
    parameters = {**params, "plan_width": width_ns}
    if bounds is not None:
        clause += (
            " AND Timestamp >= fromUnixTimestamp64Nano({plan_lo:Int64})"
            " AND Timestamp <= fromUnixTimestamp64Nano({plan_last:Int64})"
        )
        parameters.update(plan_lo=bounds[0], plan_last=_last_ns(bounds[1]))
    buckets = storage.rows(
        f"SELECT intDiv(toUnixTimestamp64Nano(Timestamp), {{plan_width:Int64}}) AS b, count() AS n "
        f"FROM {storage.names.logs} WHERE {clause} GROUP BY b ORDER BY b",
        parameters=parameters,
    )
    windows: list[Window] = []
    current: Window | None = None
    for bucket in buckets:
        start, rows = int(bucket["b"]) * width_ns, int(bucket["n"])
        if rows > chunk_rows and width_ns > _MIN_WIDTH_NS:
            if current is not None:
                windows.append(current)
                current = None
            finer = max(_MIN_WIDTH_NS, width_ns // 100)
            windows += _windows(storage, where, params, finer, (start, start + width_ns), chunk_rows)
            continue
        if current is not None and current.rows + rows <= chunk_rows:
            current = Window(current.start_ns, start + width_ns, current.rows + rows)
            continue
        if current is not None:
            windows.append(current)
        current = Window(start, start + width_ns, rows)
    if current is not None:
        windows.append(current)
    return windows


def _window_sql(storage: Storage, where: str, fmt: str, limit: int | None) -> str:
    return (
        f"SELECT {column_list(fmt)} FROM {storage.names.logs} WHERE {where}"
        " AND Timestamp >= fromUnixTimestamp64Nano({window_lo:Int64})"
        " AND Timestamp <= fromUnixTimestamp64Nano({window_last:Int64})"
        f" ORDER BY {LOGS_TIME_BUCKET}, Timestamp, EventId{' LIMIT {window_limit:UInt64}' if limit is not None else ''} {_SETTINGS}"
    )


class _Sink:
    """A file for pyarrow's ParquetWriter that hands over what was written so far."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts = []
        return data


def _wide(kind: pa.DataType) -> pa.DataType:
    """`kind` with its dictionaries (also as a map's keys or items) indexed by int32."""
    if pa.types.is_dictionary(kind):
        return pa.dictionary(pa.int32(), kind.value_type)
    if pa.types.is_map(kind):
        key, item = kind.key_field, kind.item_field
        return pa.map_(key.with_type(_wide(key.type)), item.with_type(_wide(item.type)))
    return kind


def _wide_indices(schema: pa.Schema) -> pa.Schema:
    """The schema of an export's Parquet writer: the columns of the first window as ClickHouse
    sent them, every dictionary indexed by int32, so that each window's tables fit it."""
    return pa.schema([field.with_type(_wide(field.type)) for field in schema], metadata=schema.metadata)


def _parquet_writer(sink: _Sink, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer of tables as ClickHouse sends them: LowCardinality columns (and the maps'
    keys) as dictionaries, written as they are (no decoding, no second hashing: a tenth less time
    for a Parquet export, bench/query.py). The file keeps no Arrow schema, so every reader sees
    plain strings where ClickHouse had dictionaries, and timestamps in UTC."""
    return pq.ParquetWriter(
        sink,
        schema,
        compression="zstd",
        use_dictionary=_DICTIONARY_COLUMNS,
        write_statistics=_STATISTICS_COLUMNS,
        store_schema=False,
    )


class ExportTooLarge(ValueError):
    """The export would hold more events than `max_rows` allows (HTTP 413)."""


def export_chunks(
    storage: Storage,
    flt: EventFilter,
    fmt_name: str,
    chunk_rows: int,
    limit: int | None = None,
    max_rows: int = 0,
) -> Generator[bytes, None, None]:
    """The bytes of an export in `fmt_name` (csv, ndjson, parquet), window by window. Raises
    ExportTooLarge (before anything is read) when more than `max_rows` (0: any number) events
    match and `limit` does not bound them."""
    fmt = {"csv": "CSV", "ndjson": "JSONEachRow", "parquet": "ArrowStream"}[fmt_name]
    where, params = flt.where()
    windows = plan_windows(storage, flt, chunk_rows)
    matching = sum(window.rows for window in windows)
    if max_rows and min(matching, limit or matching) > max_rows:
        raise ExportTooLarge(
            f"the export selects {matching} events, more than export.max_rows ({max_rows}); "
            "narrow the time range or the filters, or pass limit"
        )
    remaining = limit

    def fetch(window: Window, window_limit: int | None) -> bytes:
        sql = _window_sql(storage, where, fmt, window_limit)
        parameters = {**params, "window_lo": window.start_ns, "window_last": _last_ns(window.end_ns)}
        if window_limit is not None:
            parameters["window_limit"] = window_limit
        return storage.raw(sql, fmt, parameters=parameters)

    writer: pq.ParquetWriter | None = None
    sink = _Sink()
    if fmt_name == "csv":
        yield csv_header()
    with ThreadPoolExecutor(max_workers=PREFETCH, thread_name_prefix="labtel-export") as prefetch:
        index = 0

        def next_fetch() -> Future[bytes] | None:
            nonlocal index, remaining
            if index >= len(windows) or remaining == 0:
                return None
            window = windows[index]
            index += 1
            # With a limit, each window also stops at the events it was planned with: rows stored
            # into it since (a write-ahead log replayed, a late batch) would carry the export past it.
            window_limit = None if remaining is None else min(remaining, window.rows)
            if remaining is not None:
                remaining -= min(remaining, window.rows)
            return prefetch.submit(fetch, window, window_limit)

        pending: deque[Future[bytes]] = deque()
        while len(pending) < PREFETCH and (started := next_fetch()) is not None:
            pending.append(started)
        while pending:
            data = pending.popleft().result()
            if (started := next_fetch()) is not None:  # the next windows are read while this one is sent
                pending.append(started)
            if fmt_name != "parquet":
                yield data
                continue
            table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()  # no copy: the table uses `data`
            del data
            if writer is None:
                writer = _parquet_writer(sink, _wide_indices(table.schema))
            if table.schema != writer.schema:  # dictionaries with narrower indices
                table = table.cast(writer.schema)
            writer.write_table(table)
            del table
            yield sink.take()
    if fmt_name == "parquet":
        if writer is None:  # nothing selected: a file with the columns and no rows
            empty = storage.raw(
                _window_sql(storage, "0", fmt, None), fmt, parameters={"window_lo": 0, "window_last": 0}
            )
            writer = _parquet_writer(sink, _wide_indices(pa.ipc.open_stream(pa.py_buffer(empty)).schema))
        writer.close()
        yield sink.take()
