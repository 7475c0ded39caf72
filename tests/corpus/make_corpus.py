"""Write the malformed-input corpus that tests/test_corpus.py sends to a running labtel.

    python tests/corpus/make_corpus.py tests/corpus          # the small files (committed)
    python tests/corpus/make_corpus.py --big /tmp/corpus      # the big ones (made at test time)

Every file is deterministic (fixed times, a seeded random generator), so the committed small
files are exactly what this script writes. What each file must be answered with is in
`manifest.yaml` beside this script.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

SERVICE = "corpus-entry"
"""The service of every record in the corpus; the test counts what is stored of them."""
TIME_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
KIB, MIB = 1024, 1024 * 1024


def record(body: str = "corpus", time_ns: int = TIME_NS, **fields: object) -> LogRecord:
    """A log record with a string body."""
    out = LogRecord(time_unix_nano=time_ns, **{"severity_number": 9, **fields})  # type: ignore[arg-type]
    out.body.string_value = body
    return out


def request(*records: LogRecord) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    resource_logs = req.resource_logs.add()
    resource_logs.resource.attributes.add(key="service.name").value.string_value = SERVICE
    resource_logs.scope_logs.add().log_records.extend(records)
    return req


def attrs(rec: LogRecord, count: int, value: str = "v") -> LogRecord:
    for n in range(count):
        rec.attributes.add(key=f"a{n}").value.string_value = value
    return rec


def nested(depth: int) -> AnyValue:
    """A key-value list `depth` levels deep."""
    value = AnyValue(string_value="leaf")
    for _ in range(depth):
        outer = AnyValue()
        outer.kvlist_value.values.append(KeyValue(key="k", value=value))
        value = outer
    return value


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    size, varint = len(payload), bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        varint.append(byte | (0x80 if size else 0))
        if not size:
            break
    return bytes([number << 3 | 2]) + bytes(varint) + payload


def very_deep(depth: int) -> bytes:
    """A request whose record holds a key-value list `depth` levels deep, encoded by hand (the
    protobuf library itself refuses to build messages nested deeper than 100)."""
    value = _field(1, b"leaf")  # AnyValue.string_value
    for _ in range(depth):
        value = _field(6, _field(1, _field(1, b"k") + _field(2, value)))  # kvlist → KeyValue(key, value)
    attribute = _field(6, _field(1, b"deep") + _field(2, value))  # LogRecord.attributes
    log_record = record("very deep").SerializeToString() + attribute
    resource = request().resource_logs[0].resource.SerializeToString()
    scope_logs = _field(2, log_record)  # ScopeLogs.log_records
    return _field(1, _field(1, resource) + _field(2, scope_logs))  # request.resource_logs


def with_attr(rec: LogRecord, key: str, value: AnyValue) -> LogRecord:
    rec.attributes.append(KeyValue(key=key, value=value))
    return rec


def invalid_utf8() -> bytes:
    """A record whose body string holds \\xff\\xfe: proto3 strings must be UTF-8."""
    marker = "\x00MARK\x00"
    data = request(record(marker)).SerializeToString()
    return data.replace(marker.encode(), b"\xff\xfeMARK\xff\xfe")


def truncated() -> bytes:
    data = request(*(record(f"truncated {n}") for n in range(4))).SerializeToString()
    return data[: len(data) // 2]


def random_bytes() -> bytes:
    return random.Random(11).randbytes(512)


def doubles() -> bytes:
    rec = record("nan and inf")
    for key, number in (("nan", float("nan")), ("inf", float("inf")), ("ninf", float("-inf"))):
        rec.attributes.add(key=key).value.double_value = number
    return request(rec).SerializeToString()


def partial() -> bytes:
    """Five records, two over a limit: the other three are stored (partial success)."""
    records = [record(f"partial {n}") for n in range(5)]
    attrs(records[1], 200)
    with_attr(records[3], "long", AnyValue(string_value="x" * (64 * KIB + 1)))
    return request(*records).SerializeToString()


def logs_json(record_json: dict[str, object]) -> bytes:
    body = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": SERVICE}}]},
                "scopeLogs": [
                    {"logRecords": [{"timeUnixNano": str(TIME_NS), "body": {"stringValue": "json"}, **record_json}]}
                ],
            }
        ]
    }
    return json.dumps(body).encode()


SMALL: dict[str, Callable[[], bytes]] = {
    "truncated.pb": truncated,
    "random.pb": random_bytes,
    "invalid_utf8.pb": invalid_utf8,
    "trace_id_short.pb": lambda: request(record("short id", trace_id=b"\x01" * 5)).SerializeToString(),
    "span_id_long.pb": lambda: request(record("long id", span_id=b"\x01" * 9)).SerializeToString(),
    "ids_zero.pb": lambda: request(record("zero ids", trace_id=bytes(16), span_id=bytes(8))).SerializeToString(),
    "time_zero.pb": lambda: request(record("time zero", time_ns=0)).SerializeToString(),
    "time_far_future.pb": lambda: request(record("far future", time_ns=2**64 - 1)).SerializeToString(),
    "time_2200.pb": lambda: request(record("year 2200", time_ns=7_258_118_400 * 10**9)).SerializeToString(),
    "severity_out_of_range.pb": lambda: request(record("sev", severity_number=99)).SerializeToString(),
    "nan_inf.pb": doubles,
    "deep_kvlist.pb": lambda: request(with_attr(record("deep"), "deep", nested(20))).SerializeToString(),
    "very_deep_kvlist.pb": lambda: very_deep(300),
    "nested_ok.pb": lambda: request(with_attr(record("nested ok"), "nested", nested(8))).SerializeToString(),
    "empty.pb": lambda: b"",
    "invalid.json": lambda: b'{"resourceLogs": [{"scopeLogs": [',
    "not_an_object.json": lambda: b"[1, 2, 3]",
    "trace_id_nonhex.json": lambda: logs_json({"traceId": "zz" * 16}),
    "trace_id_wrong_length.json": lambda: logs_json({"traceId": "ab" * 5}),
    "ids_zero.json": lambda: logs_json({"body": {"stringValue": "zero ids"}, "traceId": "0" * 32, "spanId": "0" * 16}),
    "time_negative.json": lambda: logs_json({"timeUnixNano": "-1"}),
    "trace_id_base64.json": lambda: logs_json({"traceId": base64.b64encode(b"\x01" * 16).decode()}),
    "bytes_not_base64.json": lambda: logs_json({"attributes": [{"key": "b", "value": {"bytesValue": "AAFo!aQ=="}}]}),
    "severity_unknown_name.json": lambda: logs_json({"severityNumber": "ERROR"}),
    "nan.json": lambda: logs_json({"attributes": [{"key": "x", "value": {"doubleValue": "NaN"}}]}),
    "invalid_utf8.json": lambda: logs_json({}).replace(b'"json"', b'"\xff\xfe"'),
    "deep.json": lambda: b"[" * 5000 + b"]" * 5000,
    "plain.txt": lambda: b"hello, this is not OTLP\n",
}

BIG: dict[str, Callable[[], bytes]] = {
    "partial_limits.pb": partial,
    "attributes_10k.pb": lambda: request(attrs(record("10k attributes"), 10_000)).SerializeToString(),
    "body_1mb.pb": lambda: request(record("b" * 1_000_000)).SerializeToString(),
    "body_over_limit.pb": lambda: request(record("b" * (MIB + 1))).SerializeToString(),
    "value_over_limit.pb": lambda: request(
        with_attr(record("long value"), "long", AnyValue(string_value="v" * (64 * KIB + 1)))
    ).SerializeToString(),
    "bytes_over_limit.pb": lambda: request(
        with_attr(record("long bytes"), "blob", AnyValue(bytes_value=b"\x00" * (64 * KIB + 1)))
    ).SerializeToString(),
    "oversized_request.pb": lambda: request(*(record("o" * MIB) for _ in range(21))).SerializeToString(),
}


def write(folder: Path, files: dict[str, Callable[[], bytes]]) -> list[Path]:
    """Write `files` into `folder`; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in files.items():
        path = folder / name
        path.write_bytes(make())
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--big", action="store_true", help="write the big files instead of the small ones")
    args = parser.parse_args(argv)
    for path in write(args.folder, BIG if args.big else SMALL):
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
