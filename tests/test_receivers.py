"""OTLP receivers answer bad input with the right error and keep what was accepted intact."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from labtel.collector.otlp.framing import FramingError, count_records
from labtel.collector.otlp.jsonfmt import OTLPJSONError, json_to_protobuf
from labtel.collector.otlp.signals import LOGS, METRICS, TRACES, Signal
from tests.helpers import LabtelServer, log_record, logs_request, write_config


def post(
    server: LabtelServer,
    body: bytes,
    content_type: str = "application/x-protobuf",
    path: str = "/v1/logs",
    **headers: str,
) -> httpx.Response:
    return httpx.post(server.http + path, content=body, headers={"Content-Type": content_type, **headers}, timeout=30)


def grpc_export(server: LabtelServer, body: bytes, method: str = LOGS.grpc_method) -> bytes:
    with grpc.insecure_channel(server.grpc) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        response: bytes = call(body, timeout=30)
        return response


def stored_bodies(server: LabtelServer) -> list[str]:
    return sorted(e["body"] for e in server.get("/events", limit=1000).json()["events"])


def test_framing_counts_records_and_refuses_truncation() -> None:
    request = logs_request([log_record(f"r{i}") for i in range(5)])
    request.resource_logs.add().scope_logs.add().log_records.add()
    data = request.SerializeToString()
    assert count_records(LOGS, data) == 6
    assert count_records(LOGS, data + data) == 12  # concatenation is one valid request
    assert count_records(LOGS, b"") == 0
    for cut in (1, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(FramingError):
            count_records(LOGS, data[:cut])


@pytest.fixture
def small_server(tmp_path: Path, server_factory: Callable[..., LabtelServer]) -> LabtelServer:
    config = write_config(
        tmp_path / "otel-config.yaml",
        tmp_path / "data",
        grpc_extra=", max_recv_msg_size_mib: 0.25",
        http_extra=", max_request_body_size: 100000",
    )
    return server_factory(config=config, workdir=tmp_path).start()


def test_http_errors_follow_otlp(small_server: LabtelServer) -> None:
    server = small_server
    ok = logs_request([log_record("before")]).SerializeToString()
    assert post(server, ok).status_code == 200

    response = post(server, b"{", "application/json")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["code"] == 3
    assert "invalid OTLP/JSON" in response.json()["message"]

    response = post(server, ok[:-3])
    assert response.status_code == 400
    status = status_pb2.Status.FromString(response.content)
    assert status.code == 3
    assert "malformed" in status.message

    response = post(server, ok, "text/plain")
    assert response.status_code == 415
    assert "Content-Type" in status_pb2.Status.FromString(response.content).message
    assert post(server, ok, **{"Content-Encoding": "br"}).status_code == 415

    big = logs_request([log_record("x" * 60_000), log_record("y" * 60_000)]).SerializeToString()
    assert post(server, big).status_code == 413
    bomb = gzip.compress(b"\x00" * 5_000_000)
    assert len(bomb) < 100_000
    response = post(server, bomb, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "decompressed" in status_pb2.Status.FromString(response.content).message
    assert post(server, b"not gzip", **{"Content-Encoding": "gzip"}).status_code == 400

    bad_id = logs_request([log_record("bad", trace_id=b"\x01\x02\x03")]).SerializeToString()
    response = post(server, bad_id)
    assert response.status_code == 400
    assert "trace_id: must be 0 or 16 bytes, got 3" in status_pb2.Status.FromString(response.content).message
    bad_hex = b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"xyz"}]}]}]}'
    response = post(server, bad_hex, "application/json")
    assert response.status_code == 400
    assert "is not hex" in response.json()["message"]

    response = httpx.get(server.http + "/v1/logs")  # every 4xx body is a google.rpc.Status (OTLP)
    assert (response.status_code, response.headers["allow"]) == (405, "POST")
    assert status_pb2.Status.FromString(response.content).message == "GET is not allowed on /v1/logs; use POST"
    response = post(server, b"{}", "application/json", path="/v1/log")
    assert (response.status_code, response.headers["content-type"]) == (404, "application/json")
    assert response.json()["message"] == "no OTLP endpoint at '/v1/log'; POST to /v1/logs, /v1/traces, /v1/metrics"
    response = post(server, b"", path="/v1/metrics")
    assert response.status_code == 404
    assert post(server, b"").status_code == 200  # an empty request is a valid, empty export

    assert post(server, logs_request([log_record("after")]).SerializeToString()).status_code == 200
    assert stored_bodies(server) == ["after", "before"]


def test_grpc_errors_follow_otlp(small_server: LabtelServer) -> None:
    server = small_server
    assert grpc_export(server, logs_request([log_record("before")]).SerializeToString()) == b""

    with pytest.raises(grpc.RpcError) as caught:
        grpc_export(server, b"\x0a\xff\xff")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(grpc.RpcError) as caught:
        grpc_export(server, logs_request([log_record("bad", span_id=b"\x01")]).SerializeToString())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "span_id: must be 0 or 8 bytes, got 1" in (caught.value.details() or "")

    with pytest.raises(grpc.RpcError) as caught:
        grpc_export(server, logs_request([log_record("z" * 300_000)]).SerializeToString())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    with pytest.raises(grpc.RpcError) as caught:
        grpc_export(server, b"", method=METRICS.grpc_method)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED

    assert grpc_export(server, logs_request([log_record("after")]).SerializeToString()) == b""
    assert stored_bodies(server) == ["after", "before"]


def test_many_concurrent_exports_are_all_stored(server: LabtelServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def send(i: int) -> None:
        request = ExportLogsServiceRequest()
        request.CopyFrom(logs_request([log_record(f"c{i}-{j}", {"i": i}) for j in range(50)]))
        assert grpc_export(server, request.SerializeToString()) == b""

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(send, range(64)))
    server.wait_until_stored()  # on a busy machine some were acknowledged from the write-ahead log
    page = server.get("/events", limit=1, q="c63-49").json()["events"]
    assert len(page) == 1
    seen = len(server.all_events(limit=1000))
    assert seen == 64 * 50


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":"Tip rack empty"}]}]}]}', "logRecords[0].body"),
        (
            b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"attributes":[{"key":"k","value":"plain"}]}]}]}]}',
            "logRecords[0].attributes[0].value: expected an object, got a string",
        ),
        (b'{"resourceLogs":[{"resource":"lab-1"}]}', "resourceLogs[0].resource"),
        (b'{"resourceLogs":[{"scopeLogs":[{"scope":["a"]}]}]}', "scopeLogs[0].scope: expected an object, got a list"),
    ],
)
def test_json_with_a_value_where_an_object_belongs_is_named(body: bytes, where: str) -> None:
    with pytest.raises(OTLPJSONError, match=re.escape(where)):
        json_to_protobuf(LOGS, body)


def _span_json(**span: object) -> bytes:
    ids = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "s"}
    return orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{**ids, **span}]}]}]})


def _log_json(**record: object) -> bytes:
    return orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]})


def _sum_json(**sum_: object) -> bytes:
    metric = {"name": "m", "sum": {"dataPoints": [{"asInt": "1"}], **sum_}}
    return orjson.dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [metric]}]}]})


@pytest.mark.parametrize(
    ("signal", "body", "message"),
    [
        (TRACES, _span_json(kind="SERVER"), "spans[0].kind: unknown SpanKind 'SERVER'"),
        (TRACES, _span_json(status={"code": "ERROR"}), "spans[0].status.code: unknown StatusCode 'ERROR'"),
        (LOGS, _log_json(severityNumber="ERRORX"), "logRecords[0].severityNumber: unknown SeverityNumber 'ERRORX'"),
        (LOGS, _log_json(severityNumber="2.0"), "unknown SeverityNumber '2.0'"),
        (
            METRICS,
            _sum_json(aggregationTemporality="CUMULATIVE"),
            "aggregationTemporality: unknown AggregationTemporality 'CUMULATIVE'",
        ),
        (LOGS, _log_json(body={"bytesValue": "!!!"}), "logRecords[0].body.bytesValue: '!!!' is not base64"),
        (LOGS, _log_json(body={"bytesValue": "AAFo aQ=="}), "'AAFo aQ==' is not base64"),
        (LOGS, _log_json(body={"bytesValue": "AAFoa"}), "'AAFoa' is not base64"),
        (LOGS, _log_json(traceId="W47/95gDgQPSabYzgT/GDA=="), "traceId: 'W47/95gDgQPSabYzgT/GDA==' is not hex (OTLP"),
        (LOGS, _log_json(traceId="5b8efff7 98038103d269b633813fc60c"), "is not hex"),
        (LOGS, _log_json(spanId="eee19b7ec3c1b17"), "spanId: 'eee19b7ec3c1b17' is not hex: an odd number of digits"),
    ],
)
def test_json_that_parsedict_would_store_as_something_else_is_refused(
    signal: Signal, body: bytes, message: str
) -> None:
    """ParseDict (ignoring unknown fields) stores an unknown enum name as 0 and decodes bytes after
    dropping every character that is not base64 ("!!!" as empty bytes): refused instead."""
    with pytest.raises(OTLPJSONError, match=re.escape(message)):
        json_to_protobuf(signal, body)


def test_json_enum_names_integers_and_base64_forms_are_read() -> None:
    spans = TRACES.request_type.FromString(json_to_protobuf(TRACES, _span_json(kind="SPAN_KIND_SERVER")))
    assert spans.resource_spans[0].scope_spans[0].spans[0].kind == 2  # type: ignore[attr-defined]
    for number in (17, "17", "SEVERITY_NUMBER_ERROR"):
        logs = LOGS.request_type.FromString(json_to_protobuf(LOGS, _log_json(severityNumber=number)))
        assert logs.resource_logs[0].scope_logs[0].log_records[0].severity_number == 17  # type: ignore[attr-defined]
    for text, raw in (
        ("AAFoaQ==", b"\x00\x01hi"),
        ("AAFoaQ", b"\x00\x01hi"),
        ("-_8=", b"\xfb\xff"),
        ("+/8", b"\xfb\xff"),
    ):
        logs = LOGS.request_type.FromString(json_to_protobuf(LOGS, _log_json(body={"bytesValue": text})))
        assert logs.resource_logs[0].scope_logs[0].log_records[0].body.bytes_value == raw  # type: ignore[attr-defined]


def test_json_of_the_wrong_type_is_refused_and_unknown_fields_ignored(server: LabtelServer) -> None:
    wrong = (
        b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":"Tip rack empty"},'
        b'{"body":{"stringValue":"ok"},"attributes":[{"key":"k","value":"plain string"}]}]}]}]}'
    )
    response = post(server, wrong, "application/json")
    assert response.status_code == 400
    assert "logRecords[0].body: expected an object, got a string" in response.json()["message"]
    unknown = (
        b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"kept"},"newField":"x",'
        b'"attributes":[{"key":"k","value":{"stringValue":"v"},"extra":{"a":1}}]}]}]}]}'
    )
    assert post(server, unknown, "application/json").status_code == 200
    server.wait_until_stored()
    [event] = server.all_events()
    assert (event["body"], event["attributes"]["k"]) == ("kept", "v")


def test_every_gzip_member_is_read_and_trailing_bytes_refused(small_server: LabtelServer) -> None:
    server = small_server
    first, second = (logs_request([log_record(name)]).SerializeToString() for name in ("member-1", "member-2"))
    gzipped = {"Content-Encoding": "gzip"}
    assert post(server, gzip.compress(first) + gzip.compress(second), **gzipped).status_code == 200
    response = post(server, gzip.compress(first) + b"GARBAGE", **gzipped)
    assert response.status_code == 400
    assert "7 bytes after the end of the gzip body" in status_pb2.Status.FromString(response.content).message
    assert post(server, gzip.compress(first) + gzip.compress(second)[:-4], **gzipped).status_code == 400
    half = logs_request([log_record("h" * 30_000)]).SerializeToString()  # two fit, four do not (100000)
    assert post(server, gzip.compress(half) * 2, **gzipped).status_code == 200
    response = post(server, gzip.compress(half) * 4, **gzipped)
    assert response.status_code == 413
    assert "decompressed" in status_pb2.Status.FromString(response.content).message
    server.wait_until_stored()
    assert stored_bodies(server) == ["h" * 30_000] * 2 + ["member-1", "member-2"]


def span_request(name: str, trace_id: bytes, span_id: bytes, parent_span_id: bytes = b"") -> bytes:
    """A one-span ExportTraceServiceRequest."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(logs_request([]).resource_logs[0].resource.attributes)
    span = resource_spans.scope_spans.add().spans.add(
        trace_id=trace_id, span_id=span_id, parent_span_id=parent_span_id, name=name
    )
    span.start_time_unix_nano = span.end_time_unix_nano = 1_750_000_000_000_000_000
    return request.SerializeToString()


def test_spans_with_all_zero_ids_are_refused_naming_the_field(server: LabtelServer) -> None:
    where = "resource_spans[0].scope_spans[0].spans[0]"
    zero_trace = span_request("zero trace", bytes(16), b"\x02" * 8)
    response = post(server, zero_trace, path="/v1/traces")
    assert response.status_code == 400
    message = status_pb2.Status.FromString(response.content).message
    assert f"{where}.trace_id: all zero bytes, an invalid trace id (OTLP)" in message
    with pytest.raises(grpc.RpcError) as caught:
        grpc_export(server, span_request("zero span", b"\x01" * 16, bytes(8)), method=TRACES.grpc_method)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{where}.span_id: all zero bytes, an invalid span id (OTLP)" in (caught.value.details() or "")

    # A parent span id of zeros is "not set": the span is a root, stored with ParentSpanId ''.
    root = span_request("root", b"\x01" * 16, b"\x03" * 8, parent_span_id=bytes(8))
    assert post(server, root, path="/v1/traces").status_code == 200
    zero_log = logs_request([log_record("zero ids", trace_id=bytes(16), span_id=bytes(8))]).SerializeToString()
    assert post(server, zero_log).status_code == 200
    server.wait_until_stored()
    spans = server.get(f"/traces/{'01' * 16}").json()["spans"]
    assert {(s["name"], s["parent_span_id"]) for s in spans} == {("root", "")}
    [event] = server.all_events()
    assert (event["body"], event["trace_id"], event["span_id"]) == ("zero ids", "", "")
    assert server.get("/events", trace_id="0" * 32).json()["events"] == []
