"""The exact path: per-request validation and normalization in Python.

The fast path hands concatenated requests to ClickHouse, whose ingest views refuse (with
`throwIf`) any record that is invalid or holds an array or key-value list value (ClickHouse
parses scalar values only). Such a batch comes here, one request at a time: an invalid request
gets a message saying what is wrong and where; a valid one is normalized so the fast path can
store it: every array or key-value list value is replaced by its JSON text, which is what
labtel stores for it, and a string value is stored as it is; fields the OTLP schema does not
hold (or holds as another type) are dropped. Log records over a limit
(labtel.collector.otlp.limits) are dropped from their request and counted: the rest is stored,
and the caller is told (an OTLP partial success); a request with nothing left is rejected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from labtel.collector.otlp.limits import DEFAULT_LIMITS, RecordLimits, log_record_problem
from labtel.collector.otlp.signals import LOGS, METRICS, TRACES, Signal
from labtel.collector.otlp.values import value_json
from labtel.collector.storage.metrics_schema import TEMPORAL_TYPES
from labtel.collector.storage.schema import MAX_TIME_NANOS, MAX_TIME_TEXT


@dataclass(frozen=True)
class Triage:
    """The verdict on one request: normalized bytes to store, or the reason it is invalid."""

    data: bytes | None
    error: str | None
    records: int
    """Records of the request: the rows it becomes (for metrics, data points, not Metric messages)."""
    rejected: int = 0
    """Records dropped for breaking a limit (`data` holds the others)."""
    rejection: str | None = None
    """Why the first of them was dropped."""


class _Invalid(ValueError):
    pass


@dataclass
class _Rejections:
    """Records dropped from one request for breaking a limit."""

    limits: RecordLimits
    count: int = 0
    first: str | None = None

    def add(self, where: str, problem: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{where}: {problem}"


def _flatten_value(value: AnyValue) -> None:
    if value.WhichOneof("value") in ("array_value", "kvlist_value"):
        value.string_value = value_json(value)


def _flatten(attributes: Iterable[KeyValue]) -> None:
    for kv in attributes:
        _flatten_value(kv.value)


def _check_id(value: bytes, sizes: tuple[int, ...], where: str) -> None:
    if len(value) not in sizes:
        expected = " or ".join(str(s) for s in sizes)
        raise _Invalid(f"{where}: must be {expected} bytes, got {len(value)}")


def _check_set(value: bytes, what: str, where: str) -> None:
    """A span's own trace or span id (`what`) must be set: all zero bytes are invalid (OTLP)."""
    if not value.strip(b"\0"):
        raise _Invalid(f"{where}: all zero bytes, an invalid {what} (OTLP)")


def _check_time(value: int, where: str) -> None:
    if value > MAX_TIME_NANOS:  # the latest time labtel stores, 2106-02-07T06:28:15Z
        raise _Invalid(f"{where}: {value} ns is beyond the latest storable time ({MAX_TIME_TEXT})")


def _logs(request: Message, rejections: _Rejections) -> int:
    count = 0
    for i, resource_logs in enumerate(request.resource_logs):  # type: ignore[attr-defined]
        _flatten(resource_logs.resource.attributes)
        for j, scope_logs in enumerate(resource_logs.scope_logs):
            _flatten(scope_logs.scope.attributes)
            dropped: list[int] = []
            for k, record in enumerate(scope_logs.log_records):
                where = f"resource_logs[{i}].scope_logs[{j}].log_records[{k}]"
                _check_id(record.trace_id, (0, 16), f"{where}.trace_id")
                _check_id(record.span_id, (0, 8), f"{where}.span_id")
                if not 0 <= record.severity_number <= 24:
                    raise _Invalid(f"{where}.severity_number: {record.severity_number} is outside 0..24")
                _check_time(record.time_unix_nano, f"{where}.time_unix_nano")
                _check_time(record.observed_time_unix_nano, f"{where}.observed_time_unix_nano")
                problem = log_record_problem(record, rejections.limits)
                if problem is not None:
                    rejections.add(where, problem)
                    dropped.append(k)
                    continue
                _flatten_value(record.body)
                _flatten(record.attributes)
                count += 1
            if dropped:
                gone = set(dropped)
                kept = [r for k, r in enumerate(scope_logs.log_records) if k not in gone]
                del scope_logs.log_records[:]
                scope_logs.log_records.extend(kept)
    return count


def _traces(request: Message, rejections: _Rejections) -> int:
    count = 0
    for i, resource_spans in enumerate(request.resource_spans):  # type: ignore[attr-defined]
        _flatten(resource_spans.resource.attributes)
        for j, scope_spans in enumerate(resource_spans.scope_spans):
            _flatten(scope_spans.scope.attributes)
            for k, span in enumerate(scope_spans.spans):
                where = f"resource_spans[{i}].scope_spans[{j}].spans[{k}]"
                _check_id(span.trace_id, (16,), f"{where}.trace_id")
                _check_id(span.span_id, (8,), f"{where}.span_id")
                _check_set(span.trace_id, "trace id", f"{where}.trace_id")
                _check_set(span.span_id, "span id", f"{where}.span_id")
                _check_id(span.parent_span_id, (0, 8), f"{where}.parent_span_id")
                if not 0 <= span.kind <= 5:
                    raise _Invalid(f"{where}.kind: {span.kind} is not a SpanKind (0..5)")
                if not 0 <= span.status.code <= 2:
                    raise _Invalid(f"{where}.status.code: {span.status.code} is not a StatusCode (0..2)")
                _check_time(span.start_time_unix_nano, f"{where}.start_time_unix_nano")
                _check_time(span.end_time_unix_nano, f"{where}.end_time_unix_nano")
                _flatten(span.attributes)
                for e, event in enumerate(span.events):
                    _check_time(event.time_unix_nano, f"{where}.events[{e}].time_unix_nano")
                    _flatten(event.attributes)
                for n, link in enumerate(span.links):
                    _check_id(link.trace_id, (16,), f"{where}.links[{n}].trace_id")
                    _check_id(link.span_id, (8,), f"{where}.links[{n}].span_id")
                    _flatten(link.attributes)
                count += 1
    return count


def _exemplars(exemplars: Iterable[Any], where: str) -> None:
    for x, exemplar in enumerate(exemplars):
        at = f"{where}.exemplars[{x}]"
        _check_id(exemplar.trace_id, (0, 16), f"{at}.trace_id")
        _check_id(exemplar.span_id, (0, 8), f"{at}.span_id")
        _check_time(exemplar.time_unix_nano, f"{at}.time_unix_nano")
        _flatten(exemplar.filtered_attributes)


def _histogram_buckets(point: Any, where: str) -> None:
    """An explicit-bucket histogram's bounds are finite and strictly increasing, with one bucket
    more than bounds (or none): otherwise its quantiles would be read from the wrong buckets."""
    bounds = list(point.explicit_bounds)
    if len(point.bucket_counts) not in (0, len(bounds) + 1):
        raise _Invalid(
            f"{where}.bucket_counts: {len(point.bucket_counts)} buckets for "
            f"{len(bounds)} explicit_bounds; OTLP needs one bucket more than bounds"
        )
    for b, bound in enumerate(bounds):
        if not math.isfinite(bound):
            raise _Invalid(f"{where}.explicit_bounds[{b}]: {bound} is not a finite number (+Inf is implied)")
        if b and bound <= bounds[b - 1]:
            raise _Invalid(
                f"{where}.explicit_bounds[{b}]: {bound} is not above {bounds[b - 1]}; bounds must strictly increase"
            )


def _metrics(request: Message, rejections: _Rejections) -> int:
    """Counts data points (the rows they become), not Metric messages."""
    count = 0
    for i, resource_metrics in enumerate(request.resource_metrics):  # type: ignore[attr-defined]
        _flatten(resource_metrics.resource.attributes)
        for j, scope_metrics in enumerate(resource_metrics.scope_metrics):
            _flatten(scope_metrics.scope.attributes)
            for k, metric in enumerate(scope_metrics.metrics):
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue  # a metric without data stores nothing
                data = getattr(metric, kind)
                at = f"resource_metrics[{i}].scope_metrics[{j}].metrics[{k}].{kind}"
                if kind in TEMPORAL_TYPES and data.data_points and data.aggregation_temporality == 0:
                    raise _Invalid(
                        f"{at}.aggregation_temporality: UNSPECIFIED, which OTLP forbids; "
                        "send DELTA (1) or CUMULATIVE (2)"
                    )
                points = data.data_points
                for n, point in enumerate(points):
                    where = f"{at}.data_points[{n}]"
                    _check_time(point.start_time_unix_nano, f"{where}.start_time_unix_nano")
                    _check_time(point.time_unix_nano, f"{where}.time_unix_nano")
                    _flatten(point.attributes)
                    if kind != "summary":
                        _exemplars(point.exemplars, where)
                    if kind == "histogram":
                        _histogram_buckets(point, where)
                count += len(points)
    return count


_WALKERS = {LOGS.name: _logs, TRACES.name: _traces, METRICS.name: _metrics}


def triage(signal: Signal, data: bytes, limits: RecordLimits = DEFAULT_LIMITS) -> Triage:
    """Validate one serialized request; return it normalized for storage (without the log
    records over a limit), or why it is invalid."""
    request = signal.request_type()
    try:
        request.ParseFromString(data)
    except DecodeError as error:
        detail = str(error).removeprefix("Error parsing message")
        return Triage(None, f"not a valid {signal.request_type.DESCRIPTOR.name}{detail}", 0)
    rejections = _Rejections(limits)
    try:
        records = _WALKERS[signal.name](request, rejections)
    except _Invalid as error:
        return Triage(None, str(error), 0)
    if rejections.count and not records:
        more = f" (and {rejections.count - 1} more records)" if rejections.count > 1 else ""
        return Triage(None, f"{rejections.first}{more}", 0, rejections.count, rejections.first)
    # A field Python could not read as its declared type (a known number sent with another wire
    # type) is kept as an unknown field and serialized again, but ClickHouse refuses it: drop
    # it, as OTLP receivers do with fields they do not know.
    request.DiscardUnknownFields()
    return Triage(request.SerializeToString(), None, records, rejections.count, rejections.first)
