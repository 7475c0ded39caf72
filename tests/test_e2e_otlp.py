"""End to end with the real OpenTelemetry Python SDK: OTLP in (gRPC and HTTP), events out."""

from __future__ import annotations

import gzip
import time
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.helpers import LabtelServer, log_record, logs_request, wait_for


def sdk_pipeline(server: LabtelServer, protocol: str, service: str) -> tuple[LoggerProvider, TracerProvider]:
    """Providers wired to the server with the stock OTLP exporters (no globals touched)."""
    resource = Resource.create({"service.name": service, "lab.name": "chem-lab-A", "host.name": "lab-pc-07"})
    if protocol == "grpc":
        log_exporter: Any = GrpcLogExporter(endpoint=server.grpc, insecure=True)
        span_exporter: Any = GrpcSpanExporter(endpoint=server.grpc, insecure=True)
    else:
        log_exporter = HttpLogExporter(endpoint=f"{server.http}/v1/logs")
        span_exporter = HttpSpanExporter(endpoint=f"{server.http}/v1/traces")
    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    traces = TracerProvider(resource=resource)
    traces.add_span_processor(SimpleSpanProcessor(span_exporter))
    return logs, traces


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_logs_and_spans_round_trip(server: LabtelServer, protocol: str) -> None:
    service = f"ot2-{protocol}"
    logs, traces = sdk_pipeline(server, protocol, service)
    logger = logs.get_logger("lab.workcell", "1.2.3")
    tracer = traces.get_tracer("lab.workcell")
    sent_at = time.time_ns()
    with tracer.start_as_current_span("transfer-plate") as span:
        logger.emit(
            timestamp=sent_at,
            severity_number=SeverityNumber.WARN,
            severity_text="WARN",
            body="Plate reader lid stuck",
            attributes={
                "lab.event.type": "NODE_ERROR",
                "lab.node.id": "plate_reader_1",
                "lab.run.id": "run-042",
                "retries": 3,
                "temperature_c": 21.5,
                "lid_open": False,
                "tags": ["imaging", "lid"],
            },
        )
    logs.shutdown()
    traces.shutdown()
    context = span.get_span_context()
    trace_id, span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"

    page = server.get("/events", service=service).json()
    assert len(page["events"]) == 1
    event = page["events"][0]
    assert event["body"] == "Plate reader lid stuck"
    assert event["severity_number"] == 13
    assert event["severity_text"] == "WARN"
    assert event["time_unix_nano"] == sent_at
    assert event["trace_id"] == trace_id
    assert event["span_id"] == span_id
    assert event["attributes"] == {
        "lab.event.type": "NODE_ERROR",
        "lab.node.id": "plate_reader_1",
        "lab.run.id": "run-042",
        "retries": "3",
        "temperature_c": "21.5",
        "lid_open": "false",
        "tags": '["imaging","lid"]',
    }
    assert list(event["attributes"]) == sorted(event["attributes"])  # keys are stored sorted
    assert event["resource"]["service.name"] == service
    assert event["resource"]["lab.name"] == "chem-lab-A"
    assert event["resource"]["host.name"] == "lab-pc-07"
    assert event["scope"]["name"] == "lab.workcell"
    assert event["scope"]["version"] == "1.2.3"
    assert event["event_type"] == "node_error"
    assert event["node_id"] == "plate_reader_1"
    assert event["run_id"] == "run-042"

    by_id = server.get(f"/events/{event['event_id']}").json()
    assert by_id == event

    trace = server.get(f"/traces/{trace_id}").json()
    assert [s["name"] for s in trace["spans"]] == ["transfer-plate"]
    assert trace["spans"][0]["span_id"] == span_id
    assert trace["spans"][0]["service_name"] == service
    assert trace["spans"][0]["kind"] == "SPAN_KIND_INTERNAL"
    assert trace["spans"][0]["event_ids"] == [event["event_id"]]
    assert [e["event_id"] for e in trace["events"]] == [event["event_id"]]


def test_trace_with_nested_spans_joins_each_events(server: LabtelServer) -> None:
    logs, traces = sdk_pipeline(server, "grpc", "scheduler")
    logger, tracer = logs.get_logger("scheduler"), traces.get_tracer("scheduler")
    with tracer.start_as_current_span("workflow") as root:
        logger.emit(body="workflow started", severity_number=SeverityNumber.INFO)
        with tracer.start_as_current_span("step-1") as child:
            logger.emit(body="step 1 ran", severity_number=SeverityNumber.INFO)
            child.add_event("checkpoint", {"well": "A1"})
    logs.shutdown()
    traces.shutdown()
    trace_id = f"{root.get_span_context().trace_id:032x}"
    trace = server.get(f"/traces/{trace_id}").json()
    spans = {s["name"]: s for s in trace["spans"]}
    assert set(spans) == {"workflow", "step-1"}
    assert spans["step-1"]["parent_span_id"] == spans["workflow"]["span_id"]
    assert spans["step-1"]["span_events"][0]["name"] == "checkpoint"
    assert spans["step-1"]["span_events"][0]["attributes"] == {"well": "A1"}
    bodies = {e["event_id"]: e["body"] for e in trace["events"]}
    assert [bodies[i] for i in spans["workflow"]["event_ids"]] == ["workflow started"]
    assert [bodies[i] for i in spans["step-1"]["event_ids"]] == ["step 1 ran"]
    assert server.get("/traces/" + "0" * 32).status_code == 404
    assert server.get("/traces/not-hex").status_code == 400


JSON_BODY = {
    "resourceLogs": [
        {
            "resource": {
                "attributes": [
                    {"key": "service.name", "value": {"stringValue": "json-vs-proto"}},
                    {"key": "lab.name", "value": {"stringValue": "observatory"}},
                ]
            },
            "scopeLogs": [
                {
                    "scope": {"name": "mount", "version": "2.0"},
                    "logRecords": [
                        {
                            "timeUnixNano": "1795000000123456789",
                            "observedTimeUnixNano": "1795000000223456789",
                            "severityNumber": 17,
                            "severityText": "ERROR",
                            "body": {"stringValue": "Dome shutter fault"},
                            "attributes": [
                                {"key": "lab.node.id", "value": {"stringValue": "dome"}},
                                {"key": "path", "value": {"stringValue": "{PATH}"}},
                                {"key": "attempt", "value": {"intValue": "2"}},
                                {"key": "ratio", "value": {"doubleValue": 0.25}},
                                {"key": "ok", "value": {"boolValue": False}},
                                {"key": "raw", "value": {"bytesValue": "AAEC"}},
                                {
                                    "key": "axes",
                                    "value": {"arrayValue": {"values": [{"stringValue": "ra"}, {"intValue": "2"}]}},
                                },
                                {
                                    "key": "limits",
                                    "value": {
                                        "kvlistValue": {"values": [{"key": "min", "value": {"doubleValue": -1.5}}]}
                                    },
                                },
                            ],
                            "traceId": "5b8efff798038103d269b633813fc60c",
                            "spanId": "eee19b7ec3c1b174",
                            "flags": 1,
                        }
                    ],
                }
            ],
        }
    ],
}


def _without_identity(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "event_id"}


def test_otlp_http_json_equals_the_protobuf_path(server: LabtelServer) -> None:
    import orjson
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    bodies = {}
    for path in ("json", "protobuf"):
        text = orjson.dumps(JSON_BODY).decode().replace("{PATH}", path)
        bodies[path] = text
    response = httpx.post(
        f"{server.http}/v1/logs", content=bodies["json"], headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {}
    # The same request as protobuf: ids are bytes there, so convert the hex ids for json_format.
    import base64

    tree = orjson.loads(bodies["protobuf"])
    record = tree["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    record["traceId"] = base64.b64encode(bytes.fromhex(record["traceId"])).decode()
    record["spanId"] = base64.b64encode(bytes.fromhex(record["spanId"])).decode()
    message = json_format.ParseDict(tree, ExportLogsServiceRequest())
    response = httpx.post(
        f"{server.http}/v1/logs",
        content=gzip.compress(message.SerializeToString()),
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-protobuf"

    events = server.get("/events", service="json-vs-proto").json()["events"]
    assert len(events) == 2
    by_path = {e["attributes"]["path"]: e for e in events}
    for event in events:
        event["attributes"].pop("path")
    assert _without_identity(by_path["json"]) == _without_identity(by_path["protobuf"])
    event = by_path["json"]
    assert event["time_unix_nano"] == 1795000000123456789
    assert event["observed_time_unix_nano"] == 1795000000223456789
    assert event["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert event["span_id"] == "eee19b7ec3c1b174"
    assert event["trace_flags"] == 1
    assert event["attributes"] == {
        "lab.node.id": "dome",
        "attempt": "2",
        "ratio": "0.25",
        "ok": "false",
        "raw": "AAEC",
        "axes": '["ra",2]',
        "limits": '{"min":-1.5}',
    }


def test_events_filters_and_pagination(server: LabtelServer) -> None:
    base = 1_790_000_000_000_000_000
    records = [
        log_record(
            f"reading {i}",
            {"lab.node.id": f"node-{i % 3}", "lab.event.type": "data_store"},
            time_ns=base + i * 1_000_000_000,
            severity=9 if i % 4 else 17,
        )
        for i in range(25)
    ]
    request = logs_request(records, resource={"service.name": "pager"})
    response = httpx.post(
        f"{server.http}/v1/logs",
        content=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert response.status_code == 200
    seen = [e["body"] for e in server.all_events(service="pager", limit=7)]
    assert seen == [f"reading {i}" for i in reversed(range(25))]
    errors = server.get("/events", service="pager", severity_min="error").json()["events"]
    assert [e["body"] for e in errors] == [f"reading {i}" for i in (24, 20, 16, 12, 8, 4, 0)]
    node = server.get("/events", service="pager", node="node-1", contains="READING 1").json()["events"]
    assert [e["body"] for e in node] == ["reading 19", "reading 16", "reading 13", "reading 10", "reading 1"]
    words = server.get("/events", service="pager", node="node-1", q="READING 1").json()["events"]
    assert [e["body"] for e in words] == ["reading 1"]  # q matches whole words
    window = server.get("/events", service="pager", start=str((base + 5e9) / 1e9), end="2026-09-21T14:13:30Z").json()
    assert [e["body"] for e in window["events"]] == [f"reading {i}" for i in (9, 8, 7, 6, 5)]
    assert server.get("/events", event_type="DATA_STORE", limit=1).json()["events"][0]["event_type"] == "data_store"
    assert server.get("/events", start="yesterday").status_code == 400
    assert server.get("/events", severity_min="loud").status_code == 400
    assert server.get("/events", cursor="garbage").status_code == 400
    assert server.get("/events", limit=0).status_code == 422
    assert server.get("/events/not-a-uuid").status_code == 400
    assert server.get("/events/01a20b21-1a00-7cfa-ab47-478a3710af11").status_code == 404


def test_health_ready_and_openapi(server: LabtelServer) -> None:
    assert server.get("/health").json()["status"] == "ok"
    ready = server.get("/ready").json()
    assert ready["ready"] is True
    assert ready["schema_version"] == ready["expected_schema_version"]
    spec = server.get("/openapi.json").json()
    assert {"/events", "/events/{event_id}", "/traces/{trace_id}", "/health", "/ready"} <= set(spec["paths"])
    assert server.get("/docs").status_code == 200
    wait_for(lambda: server.get("/health").status_code == 200)
