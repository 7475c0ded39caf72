"""OTLP/JSON: the protobuf JSON mapping with hex trace and span ids (OTLP specification)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import Any

import orjson
from google.protobuf import json_format

from labtel.collector.otlp.signals import Signal

# Where ids live in each signal's JSON: (item list, the item's id fields, nested objects: their
# path below the item, through objects and lists of objects, and their id fields).
_EXEMPLARS = tuple((kind, "dataPoints", "exemplars") for kind in ("gauge", "sum", "histogram", "exponentialHistogram"))
_ID_FIELDS: dict[str, tuple[str, tuple[str, ...], tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]]] = {
    "logs": ("logRecords", ("traceId", "spanId"), ()),
    "traces": ("spans", ("traceId", "spanId", "parentSpanId"), ((("links",), ("traceId", "spanId")),)),
    "metrics": ("metrics", (), tuple((path, ("traceId", "spanId")) for path in _EXEMPLARS)),
}


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
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise OTLPJSONError(f"{where}.{key}: {value!r} is not hex") from None
        obj[key] = base64.b64encode(raw).decode("ascii")


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
    try:
        json_format.ParseDict(tree, message, ignore_unknown_fields=True)
    except (json_format.ParseError, binascii.Error, ValueError, TypeError) as error:
        raise OTLPJSONError(str(error)) from None
    return message.SerializeToString()


def protobuf_to_json(message: Any) -> bytes:
    """Serialize a response message (an Export*ServiceResponse or an rpc Status) as OTLP/JSON."""
    return json_format.MessageToJson(message, indent=None).encode()
