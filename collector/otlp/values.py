"""OTLP AnyValues as the text labtel stores, rendered in Python.

The ingest views render values in SQL (`labtel.collector.storage.schema.value_text`); this
module renders the very same text in Python for the exact path and for tests that compare the
two. Scalars: strings as they are, ints in decimal, bools as true/false, doubles in
ClickHouse's shortest round-trip form, bytes in base64. Arrays and key-value lists: compact
JSON, with NaN and infinities as null, as ClickHouse's `toJSONString` writes them.
"""

from __future__ import annotations

import base64
import json
import math
import re

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_CONTROL_ESCAPE = re.compile(r"\\u00([0-9a-f]{2})")


def format_double(value: float) -> str:
    """A float as ClickHouse's toString(Float64) writes it (shortest digits, fixed notation
    between 1e-7 and 1e21, otherwise `<digits>e<exponent>`)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    text = repr(value)
    sign = "-" if text.startswith("-") else ""
    mantissa, _, exponent_text = text.lstrip("-").partition("e")
    exponent = int(exponent_text) if exponent_text else 0
    whole, _, fraction = mantissa.partition(".")
    fraction = "" if fraction == "0" else fraction
    point = len(whole) + exponent if whole != "0" else exponent - (len(fraction) - len(fraction.lstrip("0")))
    digits = (whole + fraction).lstrip("0").rstrip("0") or "0"
    if -6 < point <= 21:
        if point <= 0:
            body = "0." + "0" * -point + digits
        elif point >= len(digits):
            body = digits + "0" * (point - len(digits))
        else:
            body = digits[:point] + "." + digits[point:]
    else:
        body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "") + f"e{point - 1}"
    return sign + body


def json_string(text: str) -> str:
    """A JSON string literal as ClickHouse's toJSONString writes it (with `/` unescaped)."""
    encoded = json.dumps(text, ensure_ascii=False)
    encoded = _CONTROL_ESCAPE.sub(lambda m: "\\u00" + m.group(1).upper(), encoded)
    return encoded.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


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
