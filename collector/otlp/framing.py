"""Check the protobuf framing of an Export request and count its records, without decoding them.

Concatenated Export requests form one valid request, which is how group commit inserts many
calls at once. That is only safe when every request is well framed down to its records: a
truncated request would otherwise swallow the bytes of the next one. A "lite" schema, in which
a request holds resources, a resource holds scopes and a scope holds records as opaque bytes,
lets the C protobuf parser (upb) prove that framing and count the records at ~0.03 µs each.
The records' contents are validated by ClickHouse when it parses them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from labtel.collector.otlp.signals import Signal

_REPEATED, _MESSAGE, _BYTES = 3, 11, 12


class FramingError(ValueError):
    """The bytes are not a well-formed Export request."""


@cache
def _lite_request_type() -> Any:
    proto = descriptor_pb2.FileDescriptorProto(name="labtel_lite.proto", package="labtel.lite", syntax="proto3")
    scope = proto.message_type.add(name="Scope")
    scope.field.add(name="items", number=2, type=_BYTES, label=_REPEATED)
    resource = proto.message_type.add(name="Resource")
    resource.field.add(name="scopes", number=2, type=_MESSAGE, label=_REPEATED, type_name=".labtel.lite.Scope")
    request = proto.message_type.add(name="Request")
    request.field.add(name="resources", number=1, type=_MESSAGE, label=_REPEATED, type_name=".labtel.lite.Resource")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("labtel.lite.Request"))


def count_records(signal: Signal, data: bytes) -> int:
    """Validate the framing of an Export request down to its records; return how many it has.

    Every OTLP request nests the same way (field 1: resources, field 2: scopes, field 2:
    records), so one lite schema serves logs, traces and metrics. Raises FramingError for
    bytes that cannot be a request of this signal. For metrics the records counted are Metric
    messages, which is what batching needs; the rows they become are data points, which the
    exact path counts where rows must be compared (the write-ahead log's replays).
    """
    request = _lite_request_type()()
    try:
        request.ParseFromString(data)
    except DecodeError as error:
        raise FramingError(f"not a valid {signal.request_type.DESCRIPTOR.name}: the protobuf is malformed") from error
    return sum(len(scope.items) for resource in request.resources for scope in resource.scopes)
