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


@dataclass(frozen=True)
class RecordLimits:
    """The limits of one log record (defaults: far above what lab events hold)."""

    max_attributes_per_record: int = 128
    """Attributes of one record (OpenTelemetry's SDKs default to 128 too)."""
    max_attribute_value_length: int = 64 * 1024
    """Bytes of one string or bytes attribute value, also inside arrays and key-value lists."""
    max_body_length: int = 1024 * 1024
    """Bytes of a record's body (a string or bytes body; inside a list body, of each element)."""
    max_nesting_depth: int = 8
    """Levels of arrays and key-value lists inside one value (a scalar is 0, `[1]` is 1)."""


DEFAULT_LIMITS = RecordLimits()
"""The limits when none are configured."""


def _utf8_length(text: str, limit: int) -> int:
    """The UTF-8 length of `text`, computed only when it could exceed `limit`."""
    return len(text) if len(text) * 4 <= limit else len(text.encode("utf-8", "surrogatepass"))


def _value_problem(value: AnyValue, max_length: int, length_key: str, limits: RecordLimits, depth: int) -> str | None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        size = _utf8_length(value.string_value, max_length)
        return f"{size} bytes exceed {length_key} ({max_length})" if size > max_length else None
    if kind == "bytes_value":
        size = len(value.bytes_value)
        return f"{size} bytes exceed {length_key} ({max_length})" if size > max_length else None
    if kind not in ("array_value", "kvlist_value"):
        return None
    if depth + 1 > limits.max_nesting_depth:
        return f"nesting deeper than max_nesting_depth ({limits.max_nesting_depth})"
    items = value.array_value.values if kind == "array_value" else (kv.value for kv in value.kvlist_value.values)
    for item in items:
        problem = _value_problem(item, max_length, length_key, limits, depth + 1)
        if problem:
            return problem
    return None


def attributes_problem(attributes: Sequence[KeyValue], limits: RecordLimits) -> str | None:
    """Why a list of attributes breaks a limit, or None."""
    count = len(attributes)
    if count > limits.max_attributes_per_record:
        return f"{count} attributes exceed max_attributes_per_record ({limits.max_attributes_per_record})"
    for kv in attributes:
        problem = _value_problem(kv.value, limits.max_attribute_value_length, "max_attribute_value_length", limits, 0)
        if problem:
            return f"attribute {kv.key!r}: {problem}"
    return None


def log_record_problem(record: LogRecord, limits: RecordLimits) -> str | None:
    """Why one log record breaks a limit (naming the limit), or None when it is within all."""
    problem = _value_problem(record.body, limits.max_body_length, "max_body_length", limits, 0)
    if problem:
        return f"body: {problem}"
    return attributes_problem(record.attributes, limits)


def view_checks(record: str, limits: RecordLimits) -> list[str]:
    """SQL conditions (over a log record tuple of the ingest view) that hold when a record may be
    over a limit; such a batch takes the exact path, which decides and names the limit.

    Scalar strings and bytes only: list values take the exact path regardless."""
    length = limits.max_attribute_value_length
    body = limits.max_body_length
    return [
        f"length({record}.attributes) > {limits.max_attributes_per_record}",
        f"length({record}.body.string_value) > {body} OR length({record}.body.bytes_value) > {body}",
        f"arrayExists(v -> length(v.string_value) > {length} OR length(v.bytes_value) > {length},"
        f" {record}.attributes.value)",
    ]
