"""What one log record may hold to be stored: attribute count, value length, body size, nesting.

Records over a limit are rejected, never truncated: a truncated lab event would be stored as if it
were whole. The checks run where they cost nothing per record on the fast path: the logs ingest
view refuses a batch holding a record over a count or length limit (`view_checks`), so only such
batches reach Python, where `log_record_problem` names the record and the limit. Nesting depth
exists only in array and key-value list values, which take the exact path anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from labtel.collector.otlp.values import value_json


@dataclass(frozen=True)
class RecordLimits:
    """The limits of one log record (defaults: far above what lab events hold)."""

    max_attributes_per_record: int = 128
    """Attributes of one record (OpenTelemetry's SDKs default to 128 too)."""
    max_attribute_value_length: int = 64 * 1024
    """Bytes of one attribute value as stored: a string's UTF-8, a bytes value's bytes, a list's JSON."""
    max_body_length: int = 1024 * 1024
    """Bytes of a record's body, measured like an attribute value."""
    max_nesting_depth: int = 8
    """Levels of arrays and key-value lists in one value (a scalar is 0, `[1]` is 1, `{"a": [1]}` 2)."""


DEFAULT_LIMITS = RecordLimits()
"""The limits when none are configured."""


def _utf8_length(text: str, limit: int) -> int:
    """The UTF-8 length of `text`, computed only when it could exceed `limit`."""
    return len(text) if len(text) * 4 <= limit else len(text.encode("utf-8", "surrogatepass"))


def fits(text: str, limit: int) -> bool:
    """Whether `text` is at most `limit` bytes as UTF-8 (how the storage measures values)."""
    return _utf8_length(text, limit) <= limit


def _depth(value: AnyValue) -> int:
    """Levels of arrays and key-value lists in a value (a scalar is 0)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return 1 + max((_depth(item) for item in value.array_value.values), default=0)
    if kind == "kvlist_value":
        return 1 + max((_depth(kv.value) for kv in value.kvlist_value.values), default=0)
    return 0


def _value_problem(value: AnyValue, max_length: int, length_key: str, limits: RecordLimits) -> str | None:
    """Why a value breaks a limit: its length is that of the text labtel stores for it (a
    string's UTF-8, a bytes value's raw bytes, a list's JSON), so what the exact path accepts,
    normalized, passes the ingest view's checks."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        size = _utf8_length(value.string_value, max_length)
    elif kind == "bytes_value":
        size = len(value.bytes_value)
    elif kind in ("array_value", "kvlist_value"):
        depth = _depth(value)
        if depth > limits.max_nesting_depth:
            return f"{depth} levels of nesting exceed max_nesting_depth ({limits.max_nesting_depth})"
        size = _utf8_length(value_json(value), max_length)
    else:
        return None
    return f"{size} bytes exceed {length_key} ({max_length})" if size > max_length else None


def attributes_problem(attributes: Sequence[KeyValue], limits: RecordLimits) -> str | None:
    """Why a list of attributes breaks a limit, or None."""
    count = len(attributes)
    if count > limits.max_attributes_per_record:
        return f"{count} attributes exceed max_attributes_per_record ({limits.max_attributes_per_record})"
    for kv in attributes:
        problem = _value_problem(kv.value, limits.max_attribute_value_length, "max_attribute_value_length", limits)
        if problem:
            return f"attribute {kv.key!r}: {problem}"
    return None


def log_record_problem(record: LogRecord, limits: RecordLimits) -> str | None:
    """Why one log record breaks a limit (naming the limit), or None when it is within all."""
    problem = _value_problem(record.body, limits.max_body_length, "max_body_length", limits)
    if problem:
        return f"body: {problem}"
    return attributes_problem(record.attributes, limits)


def view_checks(record: str, limits: RecordLimits) -> list[str]:
    """SQL conditions over one log record tuple of the ingest view that hold when it is over the
    count or body limit; such a batch takes the exact path, which names the limit.

    One condition of sums: OR and AND evaluate their arguments lazily, and filtering the columns
    for that costs more per record than computing these cheap checks outright."""
    body = limits.max_body_length
    return [
        f"(length({record}.attributes) > {limits.max_attributes_per_record})"
        f" + (length({record}.body.string_value) > {body}) + (length({record}.body.bytes_value) > {body}) > 0"
    ]


def request_view_checks(records: str, limits: RecordLimits) -> list[str]:
    """SQL conditions over all log records of an ingested request (`records`: their nested column)
    that hold when a scalar attribute value is over the length limit.

    At the request level (one row per insert), over the flattened values the UTF-8 check reads
    too: one pass over their lengths, and one lambda to plan per insert. List values take the
    exact path regardless, where their nesting and JSON length are checked."""
    length = limits.max_attribute_value_length
    values = f"{records}.attributes.value"
    return [
        f"arrayExists(s -> length(s) > {length}, arrayFlatten({values}.string_value))"
        f" OR arrayExists(s -> length(s) > {length}, arrayFlatten({values}.bytes_value))"
    ]
