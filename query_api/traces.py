"""Reading traces: spans of a trace, joined with the events recorded inside them."""

from __future__ import annotations

from typing import Any

from labtel.collector.storage.client import Storage
from labtel.query_api.events import events_of_trace
from labtel.query_api.models import Scope, Span, SpanEvent, SpanLink, Trace
from labtel.query_api.params import format_time_ns

SPAN_COLUMNS = """SpanId, ParentSpanId, SpanName, SpanKind, ServiceName,
    toUnixTimestamp64Nano(Timestamp) AS start_ns, Duration, StatusCode, StatusMessage, TraceState,
    SpanAttributes, ResourceAttributes, ScopeName, ScopeVersion,
    arrayMap(t -> toUnixTimestamp64Nano(t), `Events.Timestamp`) AS event_ns, `Events.Name` AS event_names,
    `Events.Attributes` AS event_attributes,
    `Links.TraceId` AS link_trace_ids, `Links.SpanId` AS link_span_ids, `Links.TraceState` AS link_states,
    `Links.Attributes` AS link_attributes"""


def _span(row: dict[str, Any], event_ids: list[str]) -> Span:
    return Span(
        span_id=row["SpanId"],
        parent_span_id=row["ParentSpanId"],
        name=row["SpanName"],
        kind=row["SpanKind"],
        service_name=row["ServiceName"],
        start=format_time_ns(row["start_ns"]),
        start_time_unix_nano=row["start_ns"],
        duration_ns=row["Duration"],
        status_code=row["StatusCode"],
        status_message=row["StatusMessage"],
        trace_state=row["TraceState"],
        attributes=row["SpanAttributes"],
        resource=row["ResourceAttributes"],
        scope=Scope(name=row["ScopeName"], version=row["ScopeVersion"]),
        span_events=[
            SpanEvent(timestamp=format_time_ns(ns), time_unix_nano=ns, name=name, attributes=attributes)
            for ns, name, attributes in zip(row["event_ns"], row["event_names"], row["event_attributes"], strict=True)
        ],
        links=[
            SpanLink(trace_id=t, span_id=s, trace_state=state, attributes=attributes)
            for t, s, state, attributes in zip(
                row["link_trace_ids"],
                row["link_span_ids"],
                row["link_states"],
                row["link_attributes"],
                strict=True,
            )
        ],
        event_ids=event_ids,
    )


def get_trace(storage: Storage, trace_id: str) -> Trace | None:
    """A trace's spans (oldest first) and events, or None when nothing carries that id."""
    names = storage.names
    # The trace-id lookup bounds the scan to the trace's time range, as Grafana does.
    rows = storage.rows(
        f"""WITH (SELECT (min(Start), max(End)) FROM {names.trace_id_ts} WHERE TraceId = {{trace_id:String}}) AS bounds
        SELECT {SPAN_COLUMNS} FROM {names.traces}
        WHERE TraceId = {{trace_id:String}}
          AND (bounds.1 = toDateTime(0) OR (Timestamp >= bounds.1 AND Timestamp <= bounds.2 + 1))
        ORDER BY Timestamp, SpanId""",
        parameters={"trace_id": trace_id},
    )
    events = events_of_trace(storage, trace_id)
    if not rows and not events:
        return None
    by_span: dict[str, list[str]] = {}
    for event in events:
        by_span.setdefault(event.span_id, []).append(event.event_id)
    spans = [_span(row, by_span.get(row["SpanId"], [])) for row in rows]
    return Trace(trace_id=trace_id, spans=spans, events=events)
