"""Reading events: filters to parameterized SQL, rows to `Event`s, opaque page cursors.

Values never enter the SQL text: every filter is a `{name:Type}` server-side parameter.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID
from weakref import WeakKeyDictionary

import orjson

from labtel.collector.storage.client import Storage
from labtel.collector.storage.schema import IDEOGRAPHS, LOGS_TIME_BUCKET, NOT_EXPIRED, has_word
from labtel.query_api.models import Event, Scope
from labtel.query_api.params import ParamError, format_time_ns
from labtel.query_api.selector import translate
from labtel.sdk.event_types import event_type_value

EVENT_COLUMNS = """toString(EventId) AS event_id,
    toUnixTimestamp64Nano(Timestamp) AS ts,
    toUnixTimestamp64Nano(ObservedTimestamp) AS observed,
    SeverityText, SeverityNumber, Body, ServiceName, EventType, EventName,
    NodeId, RunId, WorkflowId, ExperimentId, TraceId, SpanId, TraceFlags,
    LogAttributes, ResourceAttributes, ResourceSchemaUrl,
    ScopeName, ScopeVersion, ScopeAttributes, ScopeSchemaUrl"""


@dataclass
class EventFilter:
    """What `GET /events`, `/events/query`, `/export`, `/events/stream` and `/stats` select on."""

    start_ns: int | None = None
    end_ns: int | None = None
    severity_min: int | None = None
    severity_max: int | None = None
    service: str | None = None
    event_type: str | None = None
    node: str | None = None
    run: str | None = None
    workflow: str | None = None
    experiment: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    tokens: list[str] = field(default_factory=list)
    contains: str | None = None
    selector: dict[str, Any] | None = None
    conditions: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)

    def time_range(self) -> str:
        """SQL: the filter's conditions on Timestamp ('' for all time); `where` binds their parameters."""
        conditions = []
        if self.start_ns is not None:
            conditions.append("Timestamp >= fromUnixTimestamp64Nano({start_ns:Int64})")
        if self.end_ns is not None:
            conditions.append("Timestamp < fromUnixTimestamp64Nano({end_ns:Int64})")
        return " AND ".join(conditions)

    def where(self, unexpired: str | None = NOT_EXPIRED) -> tuple[str, dict[str, Any]]:
        """The WHERE clause (without the keyword) and its parameters. `unexpired` is the condition
        leaving out events that expired by their own TTL before a merge deleted them (row by row,
        or `schema.not_expired` for a scan of many rows), None to keep them."""
        clauses = [unexpired or "1"]
        clauses += self.conditions
        params = dict(self.parameters)
        if times := self.time_range():
            clauses.append(times)
        if self.start_ns is not None:
            params["start_ns"] = self.start_ns
        if self.end_ns is not None:
            params["end_ns"] = self.end_ns
        if self.severity_min is not None:
            clauses.append("SeverityNumber >= {severity_min:UInt8}")
            params["severity_min"] = self.severity_min
        if self.severity_max is not None:
            clauses.append("SeverityNumber <= {severity_max:UInt8}")
            params["severity_max"] = self.severity_max
        for column, name, value in (
            ("ServiceName", "service", self.service),
            ("EventType", "event_type", event_type_value(self.event_type) if self.event_type else None),
            ("NodeId", "node", self.node),
            ("RunId", "run", self.run),
            ("WorkflowId", "workflow", self.workflow),
            ("ExperimentId", "experiment", self.experiment),
            ("TraceId", "trace_id", self.trace_id),
            ("SpanId", "span_id", self.span_id),
        ):
            if value is not None:
                clauses.append(f"{column} = {{{name}:String}}")
                params[name] = value
        for index, token in enumerate(self.tokens):
            clauses.append(has_word(f"token_{index}"))  # what the text index idx_body_words answers
            params[f"token_{index}"] = token
        if self.contains:
            clauses.append("positionCaseInsensitiveUTF8(Body, {contains:String}) > 0")
            params["contains"] = self.contains
        if self.selector:
            sql, selector_params = translate(self.selector, prefix="f")
            clauses.append(sql)
            params.update(selector_params)
        return " AND ".join(clauses), params


_WORD = re.compile(f"(?=[^\\W_])[{IDEOGRAPHS}]|(?:(?![{IDEOGRAPHS}])[^\\W_])+")
"""A word: one ideograph, or a run of other letters and digits (any script; `_` is not one)."""


def search_tokens(text: str) -> list[str]:
    """The words of a search, lower-cased and folded, as the word index splits bodies
    (schema.BODY_WORDS): every character that is not a letter or digit separates words (`node-12`
    is `node` and `12`). The text is lower-cased and folded before it is split, as bodies are:
    decomposed (NFD) without its combining marks, so `Café` is `cafe` (and `İ`, which lower-cases
    to `i` and a combining dot, is `i`)."""
    folded = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    return list(dict.fromkeys(_WORD.findall(folded)))


def search_words(text: str, name: str = "q") -> list[str]:
    """The words of a search parameter (`search_tokens`), refusing one without any: a search of
    only spaces or punctuation would look for nothing, so it would match every event."""
    words = search_tokens(text)
    if not words:
        raise ParamError(f"{name}: {text!r} has no word to search for: a search needs letters or digits")
    return words


def encode_cursor(ts_ns: int, event_id: str, ascending: bool = False) -> str:
    """An opaque position in a page order: after the event (ts_ns, event_id)."""
    return base64.urlsafe_b64encode(orjson.dumps([ts_ns, event_id, "a" if ascending else "d"])).decode().rstrip("=")


def decode_cursor(cursor: str, ascending: bool = False) -> tuple[int, str]:
    try:
        ts_ns, event_id, *rest = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        position = int(ts_ns), str(UUID(str(event_id)))
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise ParamError(f"cursor: {cursor!r} is not a cursor returned by this API") from None
    if rest and (rest[0] == "a") != ascending:
        raise ParamError("cursor: it was made for the other sort order")
    return position


def row_to_event(row: dict[str, Any]) -> Event:
    return Event(
        event_id=row["event_id"],
        timestamp=format_time_ns(row["ts"]),
        time_unix_nano=row["ts"],
        observed_timestamp=format_time_ns(row["observed"]),
        observed_time_unix_nano=row["observed"],
        severity_text=row["SeverityText"],
        severity_number=row["SeverityNumber"],
        body=row["Body"],
        service_name=row["ServiceName"],
        event_type=row["EventType"],
        event_name=row["EventName"],
        node_id=row["NodeId"],
        run_id=row["RunId"],
        workflow_id=row["WorkflowId"],
        experiment_id=row["ExperimentId"],
        trace_id=row["TraceId"],
        span_id=row["SpanId"],
        trace_flags=row["TraceFlags"],
        attributes=row["LogAttributes"],
        resource=row["ResourceAttributes"],
        resource_schema_url=row["ResourceSchemaUrl"],
        scope=Scope(
            name=row["ScopeName"],
            version=row["ScopeVersion"],
            attributes=row["ScopeAttributes"],
            schema_url=row["ScopeSchemaUrl"],
        ),
    )


FIRST_LOOK_NS = 6 * 3600 * 1_000_000_000
"""A page is first looked for in the six hours from its start (the newest stored event, or the
oldest), then, if they do not fill it, in all the rest: a page of recent events reads only the
recent parts of the table. Both looks read in the table's key order, which stops as soon as the
page is full (bench/query.py: a node's warnings of a day 104-112 -> 69-72 ms against windows of
1 h and 8 h read by time)."""
PAGE_SETTINGS = {"use_top_k_dynamic_filtering": 0}
"""ClickHouse's dynamic top-K filter (26.x) puts the `ORDER BY … LIMIT` threshold in PREWHERE ahead
of the page's own conditions, so their columns are read for every row of the range: a selector on
an attribute over 30 days took 8× as long with it (bench/query.py)."""
EXTENT_TTL_S = 10.0
"""How long a page reuses the stored time extent it started from. The extent only places the split
between a page's two looks, which together cover everything before and after it: a stale extent
costs time, never events."""
_INT64 = (-(2**63), 2**63 - 1)


def time_extent(storage: Storage) -> tuple[int, int] | None:
    """The first and last event time stored, in Unix nanoseconds (from the parts' min/max index)."""
    rows = storage.rows(
        "SELECT toUnixTimestamp64Nano(min(Timestamp)) AS lo, toUnixTimestamp64Nano(max(Timestamp)) AS hi, "
        f"count() AS n FROM {storage.names.logs}"
    )
    if not rows or not rows[0]["n"]:
        return None
    return int(rows[0]["lo"]), int(rows[0]["hi"])


_extents: WeakKeyDictionary[Storage, tuple[float, tuple[int, int]]] = WeakKeyDictionary()
_extents_lock = threading.Lock()


def recent_extent(storage: Storage) -> tuple[int, int] | None:
    """`time_extent`, as read at most EXTENT_TTL_S ago (an empty store is asked again every time)."""
    now = time.monotonic()
    with _extents_lock:
        kept = _extents.get(storage)
    if kept is not None and now - kept[0] < EXTENT_TTL_S:
        return kept[1]
    extent = time_extent(storage)
    if extent is not None:
        with _extents_lock:
            _extents[storage] = (now, extent)
    return extent


def list_events(
    storage: Storage, flt: EventFilter, limit: int, cursor: str | None, ascending: bool = False
) -> tuple[list[Event], str | None]:
    """A page of events (newest first, or oldest first) and the cursor of the next page (None at
    the end).

    The order is (Timestamp, EventId), a total order, so paging neither repeats nor skips events
    while new ones arrive. See FIRST_LOOK_NS for how the page is looked for."""
    # Words and trace ids are looked up in indexes that skip what cannot match: one look is enough
    # (and there the top-K filter helps: the few granules left are read whole anyway).
    indexed = bool(flt.tokens or flt.trace_id)
    # Elsewhere the page's own conditions are the PREWHERE, and the expiry is checked only for the
    # rows they leave: ClickHouse would put ExpiresAt among the columns read for every row of the
    # range (bench/query.py: `$and` of three 110-123 -> 98-102 ms).
    where, params = flt.where() if indexed else flt.where(unexpired=None)
    direction = "ASC" if ascending else "DESC"
    inward = max if ascending else min  # of two beginnings, the one further into the page
    start = flt.start_ns if ascending else flt.end_ns  # where the page begins, when bounded
    if cursor:
        ts_ns, event_id = decode_cursor(cursor, ascending)
        after = ">" if ascending else "<"
        # Timestamp's own bound lets the primary key skip what the earlier pages read
        where += (
            f" AND Timestamp {after}= fromUnixTimestamp64Nano({{cursor_ts:Int64}})"
            f" AND (Timestamp, EventId) {after} (fromUnixTimestamp64Nano({{cursor_ts:Int64}}), "
            "toUUID({cursor_id:String}))"
        )
        params.update(cursor_ts=ts_ns, cursor_id=event_id)
        start = ts_ns if start is None else inward(start, ts_ns)
    by_time = f"Timestamp {direction}, EventId {direction}"
    order = by_time if indexed else f"{LOGS_TIME_BUCKET} {direction}, {by_time}"
    looks = [f"WHERE {where}"]
    if not indexed:
        extent = recent_extent(storage)
        if extent is None:
            return [], None
        stored = extent[0] if ascending else extent[1]
        start = stored if start is None else inward(start, stored)
        split = start + FIRST_LOOK_NS if ascending else start - FIRST_LOOK_NS
        params["split"] = min(max(split, _INT64[0]), _INT64[1])
        sides = ("<", ">=") if ascending else (">=", "<")
        looks = [
            f"PREWHERE {where} AND Timestamp {side} fromUnixTimestamp64Nano({{split:Int64}}) WHERE {NOT_EXPIRED}"
            for side in sides
        ]
    settings = None if indexed else storage.supported(PAGE_SETTINGS)
    rows: list[dict[str, Any]] = []
    for look in looks:
        params["limit"] = limit + 1 - len(rows)
        rows += storage.rows(
            f"SELECT {EVENT_COLUMNS} FROM {storage.names.logs} {look} ORDER BY {order} LIMIT {{limit:UInt32}}",
            parameters=params,
            settings=settings,
        )
        if len(rows) > limit:
            break
    events = [row_to_event(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit and events:
        last = events[-1]
        next_cursor = encode_cursor(last.time_unix_nano, last.event_id, ascending)
    return events, next_cursor


def get_event(storage: Storage, event_id: str) -> Event | None:
    rows = storage.rows(
        f"SELECT {EVENT_COLUMNS} FROM {storage.names.logs} "
        f"WHERE EventId = toUUID({{event_id:String}}) AND {NOT_EXPIRED} LIMIT 1",
        parameters={"event_id": event_id},
    )
    return row_to_event(rows[0]) if rows else None


def events_of_trace(storage: Storage, trace_id: str) -> list[Event]:
    rows = storage.rows(
        f"SELECT {EVENT_COLUMNS} FROM {storage.names.logs} WHERE TraceId = {{trace_id:String}} AND {NOT_EXPIRED} "
        "ORDER BY Timestamp, EventId",
        parameters={"trace_id": trace_id},
    )
    return [row_to_event(row) for row in rows]
