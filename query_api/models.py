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


class MetricInfo(BaseModel):
    """One stored metric: a name, its type and a service that sends it, with its points in range."""

    name: str
    type: str = Field(description="gauge, sum, histogram, exponential_histogram or summary")
    unit: str
    description: str
    service: str
    temporality: str | None = Field(
        description="delta or cumulative (sums and histograms; null for gauges and summaries)"
    )
    monotonic: bool | None = Field(description="whether a sum only grows (null for other types)")
    points: int = Field(description="data points stored in the range")
    first: str = Field(description="time of the first point in the range, RFC 3339 UTC")
    first_unix_nano: int
    last: str
    last_unix_nano: int


class MetricNames(BaseModel):
    """The stored metrics, by name, type and service."""

    names: list[MetricInfo]


class Exemplar(BaseModel):
    """A sample measurement kept with a data point, often with the trace it was made in."""

    t: str
    t_unix_nano: int
    value: float | None
    trace_id: str
    span_id: str
    attributes: dict[str, str] = Field(description="the measurement's attributes the aggregation dropped")


class SeriesPoint(BaseModel):
    """One time bucket of a series: its start and the aggregate of the points inside it."""

    t: str = Field(description="start of the bucket, RFC 3339 UTC")
    t_unix_nano: int
    value: float | None = Field(description="null when not a finite number (e.g. an average of nothing)")
    exemplars: list[Exemplar] = Field(default=[], description="up to 10 exemplars of the bucket's points")


class HistogramPoint(BaseModel):
    """One time bucket of a histogram series: the aggregate, and the bucket counts behind it."""

    t: str = Field(description="start of the bucket, RFC 3339 UTC")
    t_unix_nano: int
    value: float | None
    count: int = Field(description="values counted (delta points added up; cumulative: the last)")
    sum: float | None
    bucket_counts: list[int]
    explicit_bounds: list[float]
    exemplars: list[Exemplar] = []


class Series(BaseModel):
    """The points of one service's metric with one label set (the data point attributes)."""

    service: str
    labels: dict[str, str]
    points: list[HistogramPoint] | list[SeriesPoint]


class SeriesResult(BaseModel):
    """A metric's series over a time range, bucketed by `step_seconds`."""

    name: str
    type: str
    unit: str
    description: str
    temporality: str | None
    monotonic: bool | None
    agg: str = Field(description="avg, sum, min, max, count, last, rate, or quantile")
    quantile: float | None
    step_seconds: int
    start: str
    end: str
    series: list[Series]
