"""Values as the text labtel stores them, computed in plain Python.

Storage keeps attribute values and bodies as text: strings as they are, integers in decimal,
booleans as true/false, doubles in ClickHouse's shortest round-trip form, bytes in base64, and
lists and maps as compact JSON. The collector's SQL renders OTLP values this way; the SDK and the
collector's exact path use these functions to render the very same text in Python.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from enum import Enum
from typing import Any

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
    leading_zeros = len(fraction) - len(fraction.lstrip("0"))
    point = len(whole) + exponent if whole != "0" else exponent - leading_zeros
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


def plain(value: Any) -> Any:
    """A value of a common scientific type as the plain Python value it stands for, so that what
    it means is stored rather than its repr: a numpy array or scalar as its list or number
    (`tolist()`: a repr elides a long array's middle), a dataclass or pydantic model as a dict of its
    fields, a Decimal as its exact text (a float would lose digits), a date or time as ISO 8601
    text; anything else as it is."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, type):
        return value
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)  # a pydantic model
    if callable(dump):
        return dump(mode="json")
    if hasattr(value, "dtype") and callable(getattr(value, "tolist", None)):  # numpy (and alike)
        return value.tolist()
    return value


def json_text(value: Any) -> str:
    """A Python value (str, int, float, bool, bytes, None, lists, mappings) as compact JSON,
    exactly as storage renders the equivalent OTLP array or key-value list."""
    if isinstance(value, str):
        return json_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_double(value) if math.isfinite(value) else "null"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return json_string(base64.b64encode(bytes(value)).decode("ascii"))
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "{" + ",".join(json_string(str(k)) + ":" + json_text(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple, set, frozenset)):
        return "[" + ",".join(json_text(item) for item in value) + "]"
    if isinstance(value, Enum):
        return json_text(value.value)
    converted = plain(value)
    if converted is not value:
        return json_text(converted)
    return json_string(str(value))


def scalar_text(value: Any) -> str:
    """A Python scalar as the text stored for it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_double(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if value is None:
        return ""
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        return json_text(value)
    return str(value)


def digits(text: str) -> bool:
    """Whether `text` is digits 0-9 only (str.isdigit also takes ² and other characters int() refuses)."""
    return text.isascii() and text.isdigit()
