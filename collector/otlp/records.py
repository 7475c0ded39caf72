"""Log records built in Python (by the compatibility routes, or by the collector about itself) as
one serialized ExportLogsServiceRequest, to store through the same path as any OTLP call."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

Scalar = str | bool | int | float


@dataclass
class Record:
    """One event to store: what becomes one OTLP log record, and its resource."""

    body: str
    time_ns: int
    severity_number: int = 9
    attributes: dict[str, Scalar] = field(default_factory=dict)
    resource: dict[str, Scalar] = field(default_factory=dict)
    event_name: str = ""
    trace_id: bytes = b""
    span_id: bytes = b""
    observed_ns: int = 0
    severity_text: str = ""


def any_value(value: object) -> AnyValue:
    """A Python value as an OTLP AnyValue of its own type: bool, int, float, str and bytes as
    themselves, lists as arrays, dicts as key-value lists, None as an empty value."""
    out = AnyValue()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, list):
        out.array_value.values.extend(any_value(item) for item in value)
    elif isinstance(value, dict):
        out.kvlist_value.values.extend(KeyValue(key=key, value=any_value(item)) for key, item in value.items())
    elif value is not None:
        raise TypeError(f"no OTLP AnyValue for {type(value).__name__}")
    return out


def key_values(items: Mapping[str, Scalar]) -> Iterable[KeyValue]:
    """Attributes as OTLP KeyValues."""
    return (KeyValue(key=key, value=any_value(value)) for key, value in items.items())


def logs_request(records: list[Record], scope: str, scope_version: str = "") -> bytes:
    """The records as one serialized ExportLogsServiceRequest (one resource entry per distinct
    resource). Raises ValueError for text that is not valid Unicode (a lone surrogate)."""
    request = ExportLogsServiceRequest()
    groups: dict[bytes, list[Record]] = {}
    for record in records:
        groups.setdefault(orjson.dumps(record.resource, option=orjson.OPT_SORT_KEYS), []).append(record)
    for members in groups.values():
        resource_logs = request.resource_logs.add()
        resource_logs.resource.attributes.extend(key_values(members[0].resource))
        scope_logs = resource_logs.scope_logs.add()
        scope_logs.scope.name = scope
        scope_logs.scope.version = scope_version
        for record in members:
            log = LogRecord(
                time_unix_nano=max(0, record.time_ns),
                observed_time_unix_nano=record.observed_ns or time.time_ns(),
                severity_number=record.severity_number,  # type: ignore[arg-type]
                severity_text=record.severity_text,
                trace_id=record.trace_id,
                span_id=record.span_id,
                event_name=record.event_name,
            )
            log.body.string_value = record.body
            log.attributes.extend(key_values(record.attributes))
            scope_logs.log_records.append(log)
    try:
        return request.SerializeToString()
    except UnicodeError as error:
        raise ValueError(str(error)) from None
