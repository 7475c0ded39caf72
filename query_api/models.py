"""The JSON shapes the query API answers with (and documents in OpenAPI)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Scope(BaseModel):
    """The instrumentation scope (library) that emitted a record."""

    name: str = ""
    version: str = ""
    attributes: dict[str, str] = {}
    schema_url: str = ""


class Event(BaseModel):
    """One stored log record, with the lab columns labtel derives from its attributes."""

    event_id: str = Field(description="Stable id of the stored record (UUID)")
    timestamp: str = Field(description="Event time, RFC 3339 UTC with nanoseconds")
    time_unix_nano: int
    observed_timestamp: str
    observed_time_unix_nano: int
    severity_text: str
    severity_number: int
    body: str
    service_name: str
    event_type: str = Field(description="`lab.event.type`, else the OTel event name")
    event_name: str
    node_id: str
    run_id: str
    workflow_id: str
    experiment_id: str
    trace_id: str
    span_id: str
    trace_flags: int
    attributes: dict[str, str]
    resource: dict[str, str]
    resource_schema_url: str
    scope: Scope


class EventPage(BaseModel):
    """A page of events, newest first; pass `next_cursor` as `cursor` for the next page."""

    events: list[Event]
    next_cursor: str | None


class SpanEvent(BaseModel):
    timestamp: str
    time_unix_nano: int
    name: str
    attributes: dict[str, str]


class SpanLink(BaseModel):
    trace_id: str
    span_id: str
    trace_state: str
    attributes: dict[str, str]


class Span(BaseModel):
    """One stored span, with the ids of the log events recorded inside it."""

    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service_name: str
    start: str
    start_time_unix_nano: int
    duration_ns: int
    status_code: str
    status_message: str
    trace_state: str
    attributes: dict[str, str]
    resource: dict[str, str]
    scope: Scope
    span_events: list[SpanEvent]
    links: list[SpanLink]
    event_ids: list[str] = Field(description="Events (log records) emitted inside this span")


class Trace(BaseModel):
    """A trace: its spans and every event that carries its trace id."""

    trace_id: str
    spans: list[Span]
    events: list[Event]


class Health(BaseModel):
    status: str
    version: str


class Readiness(BaseModel):
    ready: bool
    storage: str
    schema_version: int
    expected_schema_version: int
    reason: str = ""
