"""OTLP AnyValues as the text labtel stores, rendered in Python.

The ingest views render scalar values in SQL (`labtel.collector.storage.schema.value_text`);
this module renders the very same text in Python, and arrays and key-value lists as JSON, for the
exact path and for tests that compare the two (the number and string forms live in
labtel.sdk.textform, shared with the SDK).
"""

from __future__ import annotations

import base64
import math

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from labtel.sdk.textform import format_double, json_string

__all__ = ["format_double", "json_string", "value_json", "value_text"]


def value_json(value: AnyValue) -> str:
    """Any AnyValue, at any depth, as compact JSON."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return json_string(value.string_value)
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        return format_double(value.double_value) if math.isfinite(value.double_value) else "null"
    if kind == "bytes_value":
        return json_string(base64.b64encode(value.bytes_value).decode("ascii"))
    if kind == "array_value":
        return "[" + ",".join(value_json(item) for item in value.array_value.values) + "]"
    if kind == "kvlist_value":
        pairs = (json_string(kv.key) + ":" + value_json(kv.value) for kv in value.kvlist_value.values)
        return "{" + ",".join(pairs) + "}"
    return "null"


def value_text(value: AnyValue) -> str:
    """An AnyValue as the text stored in a Body or an attribute map."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        return format_double(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if kind in ("array_value", "kvlist_value"):
        return value_json(value)
    return ""
