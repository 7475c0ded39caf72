"""OTLP/JSON: the protobuf JSON mapping with hex trace and span ids (OTLP specification)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from typing import Any, cast

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from labtel.collector.otlp.signals import Signal

# Where ids live in each signal's JSON: (item list, the item's id fields, nested objects: their
# path below the item, through objects and lists of objects, and their id fields).
_EXEMPLARS = tuple((kind, "dataPoints", "exemplars") for kind in ("gauge", "sum", "histogram", "exponentialHistogram"))
_ID_FIELDS: dict[str, tuple[str, tuple[str, ...], tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]]] = {
    "logs": ("logRecords", ("traceId", "spanId"), ()),
    "traces": ("spans", ("traceId", "spanId", "parentSpanId"), ((("links",), ("traceId", "spanId")),)),
    "metrics": ("metrics", (), tuple((path, ("traceId", "spanId")) for path in _EXEMPLARS)),
}


_HEX = re.compile(r"[0-9a-fA-F]*")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
"""Standard or URL-safe base64, padded or not: what the protobuf JSON mapping accepts for bytes."""


class OTLPJSONError(ValueError):
    """The body is not valid OTLP/JSON for the signal."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _get(obj: dict[str, Any], camel: str) -> Any:
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return obj.get(camel, obj.get(snake))


def _hex_to_base64(obj: dict[str, Any], camel: str, where: str) -> None:
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    for key in (camel, snake):
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise OTLPJSONError(f"{where}.{key}: expected a hex string, got {type(value).__name__}")
        if not _HEX.fullmatch(value):  # bytes.fromhex would also take spaces
            hint = " (OTLP/JSON ids are hex, not base64)" if _is_base64(value) else ""
            raise OTLPJSONError(f"{where}.{key}: {value!r} is not hex{hint}")
        if len(value) % 2:
            raise OTLPJSONError(f"{where}.{key}: {value!r} is not hex: an odd number of digits")
        obj[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")


def _is_base64(value: str) -> bool:
    """Whether `value` is base64 as the protobuf JSON mapping reads bytes (json_format's own
    decoding drops any other character silently: "!!!" would be stored as empty bytes)."""
    return _BASE64.fullmatch(value) is not None and len(value.rstrip("=")) % 4 != 1


def _list(obj: dict[str, Any], camel: str, where: str) -> list[Any]:
    value = _get(obj, camel)
    if value is None:
        return []
    if not isinstance(value, list):
        raise OTLPJSONError(f"{where}.{camel}: expected a list")
    return value


def _nested(obj: dict[str, Any], path: tuple[str, ...], where: str) -> Iterator[tuple[dict[str, Any], str]]:
    """The objects at `path` below `obj` (through objects and lists of objects), and where they are."""
    if not path:
        yield obj, where
        return
    key, rest = path[0], path[1:]
    value = _get(obj, key)
    if isinstance(value, dict):
        yield from _nested(value, rest, f"{where}.{key}")
    elif isinstance(value, list):
        for n, child in enumerate(value):
            if isinstance(child, dict):
                yield from _nested(child, rest, f"{where}.{key}[{n}]")


def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by their JSON and proto names, as ParseDict accepts them."""
    known = _FIELDS.get(descriptor.full_name)
    if known is None:
        known = {f.json_name: f for f in descriptor.fields} | {f.name: f for f in descriptor.fields}
        _FIELDS[descriptor.full_name] = known
    return known


_FIELDS: dict[str, dict[str, FieldDescriptor]] = {}


def _check_objects(tree: dict[str, Any], descriptor: Descriptor) -> None:
    """Refuse a known message field that does not hold an object (or a list of objects), an enum
    name the enum does not have, and bytes that are not base64.

    ParseDict with ignore_unknown_fields would read a string such as `"body": "text"` as a list
    of unknown field names and drop it silently, store an unknown enum name (`"kind": "SERVER"`)
    as 0, and decode bytes after dropping what is not base64; none of these is an unknown field.
    Unknown fields stay ignored; other scalar types are ParseDict's to check.
    """
    pending: list[tuple[dict[str, Any], Descriptor, str]] = [(tree, descriptor, "$")]
    while pending:
        obj, message, where = pending.pop()
        fields = _fields(message)
        found: list[tuple[dict[str, Any], Descriptor, str]] = []
        for key, value in obj.items():
            field = fields.get(key)
            if field is None or value is None:
                continue
            if field.message_type is None:
                if field.enum_type is not None or field.type == FieldDescriptor.TYPE_BYTES:
                    _check_scalar(field, value, f"{where}.{key}" if where != "$" else key)
                continue
            at = f"{where}.{key}" if where != "$" else key
            if field.is_repeated:
                if not isinstance(value, list):
                    raise OTLPJSONError(f"{at}: expected a list, got {_json_type(value)}")
                children = [(child, f"{at}[{n}]") for n, child in enumerate(value)]
            else:
                children = [(value, at)]
            for child, child_at in children:
                if not isinstance(child, dict):
                    raise OTLPJSONError(f"{child_at}: expected an object, got {_json_type(child)}")
                found.append((child, field.message_type, child_at))
        pending.extend(reversed(found))  # the first problem in document order is reported


def _check_scalar(field: FieldDescriptor, value: Any, at: str) -> None:
    """Refuse an enum or bytes string (or list of them) that ParseDict would store as something
    else without an error."""
    if isinstance(value, list):
        for n, item in enumerate(value):
            _check_scalar(field, item, f"{at}[{n}]")
        return
    if not isinstance(value, str):
        return
    if field.enum_type is not None:
        if value not in field.enum_type.values_by_name and not _is_integer(value):
            raise OTLPJSONError(f"{at}: unknown {field.enum_type.name} {value!r} (OTLP/JSON sends enums as integers)")
    elif not _is_base64(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise OTLPJSONError(f"{at}: {shown!r} is not base64")


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list"}
    return names.get(type(value), "an object" if isinstance(value, dict) else type(value).__name__)


def json_to_protobuf(signal: Signal, body: bytes) -> bytes:
    """Convert an OTLP/JSON request body into the serialized protobuf request."""
    try:
        tree = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise OTLPJSONError(f"invalid JSON: {error}") from None
    if not isinstance(tree, dict):
        raise OTLPJSONError("the body must be a JSON object")
    items, id_fields, nested = _ID_FIELDS[signal.name]
    resource_key, scope_key = _camel(signal.resource_field), _camel(signal.scope_field)
    for i, resource in enumerate(_list(tree, resource_key, "$")):
        if not isinstance(resource, dict):
            raise OTLPJSONError(f"{resource_key}[{i}]: expected an object")
        for j, scope in enumerate(_list(resource, scope_key, f"{resource_key}[{i}]")):
            if not isinstance(scope, dict):
                raise OTLPJSONError(f"{resource_key}[{i}].{scope_key}[{j}]: expected an object")
            for k, item in enumerate(_list(scope, items, f"{resource_key}[{i}].{scope_key}[{j}]")):
                where = f"{resource_key}[{i}].{scope_key}[{j}].{items}[{k}]"
                if not isinstance(item, dict):
                    raise OTLPJSONError(f"{where}: expected an object")
                for field in id_fields:
                    _hex_to_base64(item, field, where)
                for path, fields in nested:
                    for child, at in _nested(item, path, where):
                        for field in fields:
                            _hex_to_base64(child, field, at)
    message = signal.request_type()
    _check_objects(tree, cast(Descriptor, message.DESCRIPTOR))
    try:
        json_format.ParseDict(tree, message, ignore_unknown_fields=True)
    except (json_format.ParseError, binascii.Error, ValueError, TypeError) as error:
        raise OTLPJSONError(str(error)) from None
    return message.SerializeToString()


def protobuf_to_json(message: Any) -> bytes:
    """Serialize a response message (an Export*ServiceResponse or an rpc Status) as OTLP/JSON."""
    return json_format.MessageToJson(message, indent=None).encode()
