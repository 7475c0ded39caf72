"""OTLP protobuf encoding of log records, written directly as bytes.

The OpenTelemetry Python exporter builds protobuf objects record by record, which costs more
CPU than emitting the record did. Here a request is assembled from byte strings; attributes
that repeat (node ids, event types, users) come from a cache of their encoded form.

Values nested deeper than one level (a list inside a list, a map inside a map) are sent as their
JSON text: storage keeps nested values as exactly that text. (The collector stores list and map
values as JSON text too, on its exact path; records holding only scalars take its fast path.)
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from labtel.sdk.textform import json_text, plain

_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_double = struct.Struct("<d").pack

_VARINTS = [bytes([i]) for i in range(128)]
_CACHE_LIMIT = 8192


def varint(value: int) -> bytes:
    """A protobuf varint (negative ints as 64-bit two's complement)."""
    if 0 <= value < 128:
        return _VARINTS[value]
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


@dataclass(slots=True)
class LogRecordData:
    """One log record, as the SDK hands it to the exporter thread."""

    time_ns: int
    severity_number: int
    severity_text: str
    body: Any
    attributes: dict[str, Any]
    scope: str
    trace_id: bytes = b""
    span_id: bytes = b""
    trace_flags: int = 0
    event_name: str = ""
    observed_ns: int = 0


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int, float, bytes, bytearray))


class Encoded(bytes):
    """A value already encoded as its AnyValue, on the caller's thread (`snapshot`)."""


_IMMUTABLE = frozenset({str, int, float, bool, bytes, type(None)})


def snapshot(value: Any) -> Any:
    """`value` as it is now: immutable scalars as they are, anything else (dicts, lists, sets,
    bytearrays, arbitrary objects) encoded at once, so a later change by the caller, or a value
    that cannot even be rendered, does not reach the export thread."""
    if type(value) in _IMMUTABLE:
        return value
    try:
        return Encoded(any_value(value))
    except Exception as error:  # a value whose __str__ (or __float__, ...) raises
        return Encoded(any_value(f"<unrepresentable {type(value).__name__}: {type(error).__name__}>"))


def any_value(value: Any, nested: bool = False) -> bytes:
    """An encoded OTLP AnyValue (the message body, without a tag)."""
    if isinstance(value, str):
        return _field(b"\x0a", value.encode("utf-8", "backslashreplace"))
    if type(value) is Encoded:
        return bytes(value)
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return b"\x18" + varint(value)
        return _field(b"\x0a", str(value).encode())
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _field(b"\x3a", bytes(value))
    if value is None:
        return b""
    if isinstance(value, Mapping):
        if nested or not all(_is_scalar(v) for v in value.values()):
            return _field(b"\x0a", json_text(value).encode("utf-8", "backslashreplace"))
        pairs = b"".join(_field(b"\x0a", key_value(str(k), v, nested=True)) for k, v in value.items())
        return _field(b"\x32", pairs)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        if nested or not all(_is_scalar(v) for v in items):
            return _field(b"\x0a", json_text(items).encode("utf-8", "backslashreplace"))
        return _field(b"\x2a", b"".join(_field(b"\x0a", any_value(v, nested=True)) for v in items))
    converted = plain(value)
    if converted is not value:
        return any_value(converted, nested)
    if isinstance(value, (int, float)) or (hasattr(value, "__float__") and not hasattr(value, "__len__")):
        number = float(value)
        if number.is_integer() and math.isfinite(number) and hasattr(value, "__index__"):
            return b"\x18" + varint(int(number))
        return b"\x21" + _pack_double(number)
    if isinstance(value, Enum):
        return any_value(value.value, nested)
    return _field(b"\x0a", str(value).encode("utf-8", "backslashreplace"))


def key_value(key: str, value: Any, nested: bool = False) -> bytes:
    """An encoded KeyValue (without a tag)."""
    return _field(b"\x0a", key.encode("utf-8", "backslashreplace")) + _field(b"\x12", any_value(value, nested))


class AttributeEncoder:
    """Encodes attribute lists, remembering the encoding of repeated (key, value) pairs."""

    def __init__(self, tag: bytes = b"\x32") -> None:
        self._tag = tag
        self._cache: dict[tuple[str, type, Any], bytes] = {}

    def encode(self, attributes: Mapping[str, Any]) -> bytes:
        cache = self._cache
        tag = self._tag
        parts = []
        for key, value in attributes.items():
            kind = type(value)
            if kind is str or kind is int or kind is bool:
                cache_key = (key, kind, value)
                encoded = cache.get(cache_key)
                if encoded is None:
                    encoded = _field(tag, key_value(key, value))
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    cache[cache_key] = encoded
                parts.append(encoded)
            else:
                parts.append(_field(tag, key_value(key, value)))
        return b"".join(parts)


def log_record(record: LogRecordData, attributes: AttributeEncoder) -> bytes:
    """An encoded LogRecord (without a tag)."""
    parts = [b"\x09" + _pack_fixed64(record.time_ns)]
    if record.observed_ns:
        parts.append(b"\x59" + _pack_fixed64(record.observed_ns))
    if record.severity_number:
        parts.append(b"\x10" + varint(record.severity_number))
    if record.severity_text:
        parts.append(_field(b"\x1a", record.severity_text.encode()))
    if record.body is not None:
        parts.append(_field(b"\x2a", any_value(record.body)))
    if record.attributes:
        parts.append(attributes.encode(record.attributes))
    if record.trace_id:
        parts.append(b"\x4a\x10" + record.trace_id)
        parts.append(b"\x52\x08" + record.span_id)
        if record.trace_flags:
            parts.append(b"\x45" + _pack_fixed32(record.trace_flags))
    if record.event_name:
        parts.append(_field(b"\x62", record.event_name.encode("utf-8", "backslashreplace")))
    return b"".join(parts)


def resource(attributes: Mapping[str, Any]) -> bytes:
    """An encoded Resource (without a tag)."""
    return AttributeEncoder(tag=b"\x0a").encode(attributes)


def scope(name: str, version: str = "") -> bytes:
    """An encoded InstrumentationScope (without a tag)."""
    out = _field(b"\x0a", name.encode("utf-8", "backslashreplace"))
    return out + _field(b"\x12", version.encode()) if version else out


def logs_request(resource_bytes: bytes, scopes: Iterable[tuple[bytes, Sequence[bytes]]]) -> bytes:
    """An encoded ExportLogsServiceRequest with one resource and the given (scope, records)."""
    scope_logs = b"".join(
        _field(b"\x12", _field(b"\x0a", scope_bytes) + b"".join(_field(b"\x12", r) for r in records))
        for scope_bytes, records in scopes
    )
    return _field(b"\x0a", _field(b"\x0a", resource_bytes) + scope_logs)


def split_request(data: bytes) -> list[tuple[bytes, int]]:
    """An ExportLogsServiceRequest cut in two halves by record, each with its resource and scope:
    [(request, records), ...]; empty when it holds a single record (it cannot be cut)."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest.FromString(data)
    entries = [
        (r, s, record)
        for r, resource_logs in enumerate(request.resource_logs)
        for s, scope_logs in enumerate(resource_logs.scope_logs)
        for record in scope_logs.log_records
    ]
    if len(entries) < 2:
        return []
    middle = len(entries) // 2
    return [(_subset(request, part), len(part)) for part in (entries[:middle], entries[middle:])]


def _subset(request: Any, entries: list[tuple[int, int, Any]]) -> bytes:
    """A request holding only `entries` (resource index, scope index, record) of `request`."""
    out = type(request)()  # an ExportLogsServiceRequest: the message class split_request imported
    targets: dict[tuple[int, int], Any] = {}
    resources: dict[int, Any] = {}
    for r, s, record in entries:
        target = targets.get((r, s))
        if target is None:
            resource_logs = resources.get(r)
            if resource_logs is None:
                source = request.resource_logs[r]
                resource_logs = resources[r] = out.resource_logs.add()
                resource_logs.resource.CopyFrom(source.resource)
                resource_logs.schema_url = source.schema_url
            scope_source = request.resource_logs[r].scope_logs[s]
            target = targets[(r, s)] = resource_logs.scope_logs.add()
            target.scope.CopyFrom(scope_source.scope)
            target.schema_url = scope_source.schema_url
        target.log_records.add().CopyFrom(record)
    return bytes(out.SerializeToString())
