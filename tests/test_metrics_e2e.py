"""Metrics end to end: the OpenTelemetry Python SDK's OTLP metric exporters (gRPC and HTTP)
against `labtel serve`, read back through `GET /series/names` and `GET /series`."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from labtel.collector.otlp.signals import METRICS
from tests.helpers import LabtelServer, kv, write_config
from tests.metrics_requests import NOW_NS, metrics_request

EVER = "520w"
"""A step longer than any test: all of a series' points fall in one bucket."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabtelServer]:
    """One `labtel serve` with a metrics pipeline for the whole module."""
    tmp = tmp_path_factory.mktemp("metrics")
    config = write_config(tmp / "otel-config.yaml", tmp / "data", signals=("logs", "traces", "metrics"))
    running = LabtelServer(config=config, workdir=tmp).start()
    yield running
    running.kill()


def sdk_meter_provider(server: LabtelServer, protocol: str, service: str) -> MeterProvider:
    """A MeterProvider exporting to the server with a stock OTLP exporter (gRPC: cumulative,
    HTTP: delta for counters and histograms), only when flushed."""
    exporter: Any
    if protocol == "grpc":
        exporter = GrpcMetricExporter(endpoint=server.grpc, insecure=True)
    else:
        delta = AggregationTemporality.DELTA
        exporter = HttpMetricExporter(
            endpoint=f"{server.http}/v1/metrics", preferred_temporality={Counter: delta, Histogram: delta}
        )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    resource = Resource.create({"service.name": service, "lab.name": "chem-lab-A"})
    return MeterProvider(metric_readers=[reader], resource=resource)


def record_lab_metrics(provider: MeterProvider) -> tuple[str, str]:
    """A counter, an up-down counter, two gauges and a histogram, some inside a span; returns
    that span's trace and span id (the exemplars' ids)."""
    meter = provider.get_meter("lab.workcell", "1.2.3")
    tracer = TracerProvider().get_tracer("lab.workcell")
    counter = meter.create_counter("lab.plates.processed", unit="{plate}", description="Plates through the workcell")
    queue = meter.create_up_down_counter("lab.queue.depth", unit="{sample}")
    pressure = meter.create_gauge("lab.chamber.pressure", unit="hPa")
    durations = meter.create_histogram(
        "lab.transfer.duration", unit="s", explicit_bucket_boundaries_advisory=[0.1, 0.5, 1.0, 5.0]
    )

    def temperatures(options: CallbackOptions) -> Iterator[Observation]:
        yield Observation(37.25, {"room": "B12"})
        yield Observation(4.0, {"room": "cold"})

    meter.create_observable_gauge("lab.incubator.temperature", callbacks=[temperatures], unit="Cel")
    with tracer.start_as_current_span("transfer") as span:
        counter.add(3, {"lab.node.id": "ot2_1", "outcome": "ok"})
        durations.record(0.3, {"lab.node.id": "ot2_1"})
    counter.add(2, {"lab.node.id": "ot2_1", "outcome": "fail"})
    queue.add(5, {"queue": "intake"})
    queue.add(-2, {"queue": "intake"})
    pressure.set(1013.25, {"room": "B12"})
    for value in (0.05, 0.3, 0.7, 2.0, 10.0):
        durations.record(value, {"lab.node.id": "ot2_1"})
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


@pytest.fixture(scope="module")
def sent(server: LabtelServer) -> dict[str, tuple[str, str]]:
    """The lab metrics, sent once over gRPC and once over HTTP; the exemplar ids of each."""
    ids = {}
    for protocol in ("grpc", "http"):
        provider = sdk_meter_provider(server, protocol, f"workcell-{protocol}")
        ids[protocol] = record_lab_metrics(provider)
        provider.shutdown()  # exports once
    return ids


def series(server: LabtelServer, name: str, **params: Any) -> dict[str, Any]:
    response = server.get("/series", name=name, step=EVER, **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def values(body: dict[str, Any]) -> dict[tuple[tuple[str, str], ...], float]:
    """Each series' only point's value, by its sorted labels."""
    found = {}
    for one in body["series"]:
        assert len(one["points"]) == 1, one
        found[tuple(sorted(one["labels"].items()))] = one["points"][0]["value"]
    return found


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_names_list_every_metric_with_type_and_points(
    server: LabtelServer, sent: dict[str, tuple[str, str]], protocol: str
) -> None:
    service = f"workcell-{protocol}"
    names = {(n["name"], n["type"]): n for n in server.get("/series/names", service=service).json()["names"]}
    assert set(names) == {
        ("lab.plates.processed", "sum"),
        ("lab.queue.depth", "sum"),
        ("lab.chamber.pressure", "gauge"),
        ("lab.incubator.temperature", "gauge"),
        ("lab.transfer.duration", "histogram"),
    }
    counter = names[("lab.plates.processed", "sum")]
    assert counter["unit"] == "{plate}"
    assert counter["description"] == "Plates through the workcell"
    assert counter["service"] == service
    assert counter["points"] == 2  # two label sets, one export
    assert counter["monotonic"] is True
    assert counter["temporality"] == ("cumulative" if protocol == "grpc" else "delta")
    queue = names[("lab.queue.depth", "sum")]
    assert (queue["monotonic"], queue["temporality"]) == (False, "cumulative")
    histogram = names[("lab.transfer.duration", "histogram")]
    assert histogram["temporality"] == counter["temporality"]
    assert (histogram["monotonic"], histogram["points"]) == (None, 1)
    gauge = names[("lab.incubator.temperature", "gauge")]
    assert (gauge["temporality"], gauge["monotonic"], gauge["points"], gauge["unit"]) == (None, None, 2, "Cel")
    assert abs(gauge["last_unix_nano"] - time.time_ns()) < 600 * 10**9
    assert gauge["first"].endswith("Z")
    later = server.get("/series/names", service=service, start=time.time() + 3600).json()["names"]
    assert later == []


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_series_values_and_labels(server: LabtelServer, sent: dict[str, tuple[str, str]], protocol: str) -> None:
    service = f"workcell-{protocol}"
    counter = series(server, "lab.plates.processed", service=service, agg="last")
    assert (counter["type"], counter["unit"], counter["monotonic"]) == ("sum", "{plate}", True)
    assert counter["temporality"] == ("cumulative" if protocol == "grpc" else "delta")
    assert values(counter) == {
        (("lab.node.id", "ot2_1"), ("outcome", "fail")): 2.0,
        (("lab.node.id", "ot2_1"), ("outcome", "ok")): 3.0,
    }
    assert {s["service"] for s in counter["series"]} == {service}
    only_ok = series(server, "lab.plates.processed", service=service, **{"label.outcome": "ok"})
    assert values(only_ok) == {(("lab.node.id", "ot2_1"), ("outcome", "ok")): 3.0}
    assert values(series(server, "lab.queue.depth", service=service)) == {(("queue", "intake"),): 3.0}
    assert values(series(server, "lab.chamber.pressure", service=service)) == {(("room", "B12"),): 1013.25}
    temperature = series(server, "lab.incubator.temperature", service=service)
    assert (temperature["type"], temperature["temporality"], temperature["monotonic"]) == ("gauge", None, None)
    assert values(temperature) == {(("room", "B12"),): 37.25, (("room", "cold"),): 4.0}
    assert values(series(server, "lab.incubator.temperature", service=service, agg="count")) == {
        (("room", "B12"),): 1.0,
        (("room", "cold"),): 1.0,
    }
    point = temperature["series"][0]["points"][0]
    assert point["t_unix_nano"] % (10**9) == 0
    assert point["t"].endswith("Z")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_histogram_buckets_and_quantiles(server: LabtelServer, sent: dict[str, tuple[str, str]], protocol: str) -> None:
    service = f"workcell-{protocol}"
    body = series(server, "lab.transfer.duration", service=service, agg="count")
    assert (body["type"], body["unit"]) == ("histogram", "s")
    ((labels, point),) = [(s["labels"], s["points"][0]) for s in body["series"]]
    assert labels == {"lab.node.id": "ot2_1"}
    assert point["explicit_bounds"] == [0.1, 0.5, 1.0, 5.0]
    assert point["bucket_counts"] == [1, 2, 1, 1, 1]
    assert (point["value"], point["count"]) == (6.0, 6)
    assert point["sum"] == pytest.approx(13.35)
    avg = series(server, "lab.transfer.duration", service=service)["series"][0]["points"][0]
    assert avg["value"] == pytest.approx(13.35 / 6)
    # Rank 3 of 6 ends bucket (0.1, 0.5]; rank 5.7 lies in the last bucket, closed by Max = 10.
    median = series(server, "lab.transfer.duration", service=service, quantile="0.5")
    assert median["agg"] == "quantile"
    assert median["series"][0]["points"][0]["value"] == pytest.approx(0.5)
    p95 = series(server, "lab.transfer.duration", service=service, quantile="0.95")
    assert p95["series"][0]["points"][0]["value"] == pytest.approx(8.5)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_exemplars_carry_the_trace(server: LabtelServer, sent: dict[str, tuple[str, str]], protocol: str) -> None:
    trace_id, span_id = sent[protocol]
    service = f"workcell-{protocol}"
    counter = series(server, "lab.plates.processed", service=service, **{"label.outcome": "ok"})
    (exemplar,) = counter["series"][0]["points"][0]["exemplars"]
    assert (exemplar["trace_id"], exemplar["span_id"], exemplar["value"]) == (trace_id, span_id, 3.0)
    histogram = series(server, "lab.transfer.duration", service=service)
    traced = [e for e in histogram["series"][0]["points"][0]["exemplars"] if e["trace_id"]]
    assert [(e["trace_id"], e["span_id"], e["value"]) for e in traced] == [(trace_id, span_id, 0.3)]
    untraced = series(server, "lab.plates.processed", service=service, **{"label.outcome": "fail"})
    assert untraced["series"][0]["points"][0]["exemplars"] == []


def test_rate_of_a_cumulative_and_a_delta_counter(server: LabtelServer) -> None:
    for protocol in ("grpc", "http"):
        provider = sdk_meter_provider(server, protocol, f"scanner-{protocol}")
        scans = provider.get_meter("lab.scanner").create_counter("lab.samples.scanned")
        scans.add(10, {"scanner": "s1"})
        provider.force_flush()
        scans.add(5, {"scanner": "s1"})
        provider.shutdown()
    step_s = 520 * 7 * 86400
    cumulative = series(server, "lab.samples.scanned", service="scanner-grpc", agg="rate")
    assert cumulative["agg"] == "rate"
    # A cumulative counter's rate counts what it grew by between its points (10 → 15).
    assert sum(p["value"] for p in cumulative["series"][0]["points"]) * step_s == pytest.approx(5)
    delta = series(server, "lab.samples.scanned", service="scanner-http", agg="rate")
    assert sum(p["value"] for p in delta["series"][0]["points"]) * step_s == pytest.approx(15)
    assert values(series(server, "lab.samples.scanned", service="scanner-grpc", agg="max")) == {
        (("scanner", "s1"),): 15.0
    }
    assert values(series(server, "lab.samples.scanned", service="scanner-http", agg="sum")) == {
        (("scanner", "s1"),): 15.0
    }


def test_a_rate_bucket_does_not_depend_on_where_the_range_starts(server: LabtelServer) -> None:
    """A cumulative counter's growth from its last point before `start` counts in the bucket of its
    first point inside (looked for a step or 15 minutes back), so a bucket's rate is the same
    whatever range it is asked in."""
    t0 = NOW_NS // (3600 * 10**9) * 3600 * 10**9 - 2 * 3600 * 10**9  # two hours ago, on an hour
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.extend([kv("service.name", "rate-edges")])
    counter = resource.scope_metrics.add().metrics.add(name="lab.rate.edges")
    counter.sum.aggregation_temporality, counter.sum.is_monotonic = 2, True
    # every 30 s: 5, 10 | 25, 30 | a restart at 110 s: 4, 10
    for at_s, value, started_s in [
        (0, 5, -10),
        (30, 10, -10),
        (60, 25, -10),
        (90, 30, -10),
        (120, 4, 110),
        (150, 10, 110),
    ]:
        counter.sum.data_points.add(
            time_unix_nano=t0 + at_s * 10**9, start_time_unix_nano=t0 + started_s * 10**9, as_int=value
        )
    assert post(server, request.SerializeToString()).status_code == 200
    server.wait_until_stored()

    def growth(start_s: int, end_s: int = 180) -> dict[int, float]:
        window = {"start": str(t0 // 10**9 + start_s), "end": str(t0 // 10**9 + end_s)}
        body = server.get("/series", name="lab.rate.edges", agg="rate", step="60s", **window).json()
        return {(p["t_unix_nano"] - t0) // 10**9: round(p["value"] * 60, 6) for p in body["series"][0]["points"]}

    assert growth(0) == {0: 5, 60: 20, 120: 10}  # the restart counts from zero: 4, then 6
    assert growth(60) == {60: 20, 120: 10}
    assert growth(45) == {60: 20, 120: 10}
    assert growth(120) == {120: 10}
    assert growth(60, 90) == {60: 15}  # only the points inside count: 10 -> 25


def post(server: LabtelServer, body: bytes, content_type: str = "application/x-protobuf") -> httpx.Response:
    return httpx.post(server.http + METRICS.http_path, content=body, headers={"Content-Type": content_type}, timeout=30)


def to_otlp_json(request: ExportMetricsServiceRequest) -> bytes:
    """OTLP/JSON of a request: the protobuf JSON mapping with hex trace and span ids."""
    tree = json_format.MessageToDict(request)
    for resource in tree["resourceMetrics"]:
        for scope in resource["scopeMetrics"]:
            for metric in scope["metrics"]:
                for kind in ("gauge", "sum", "histogram", "exponentialHistogram"):
                    for point in metric.get(kind, {}).get("dataPoints", []):
                        for exemplar in point.get("exemplars", []):
                            for key in ("traceId", "spanId"):
                                if key in exemplar:
                                    exemplar[key] = base64.b64decode(exemplar[key]).hex()
    return json.dumps(tree).encode()


def test_otlp_json_stores_what_protobuf_stores(server: LabtelServer) -> None:
    assert post(server, metrics_request("via-protobuf").SerializeToString()).status_code == 200
    response = post(server, to_otlp_json(metrics_request("via-json")), "application/json")
    assert response.status_code == 200, response.text
    assert response.json() == {}
    window = {"start": (NOW_NS - 3600 * 10**9) / 1e9, "end": (NOW_NS + 60 * 10**9) / 1e9}
    names = {n["name"] for n in server.get("/series/names", service="via-json", **window).json()["names"]}
    assert names == {"hand.gauge", "hand.sum", "hand.histogram", "hand.exponential", "hand.summary"}
    for name in sorted(names):
        answers = [series(server, name, service=service, **window) for service in ("via-protobuf", "via-json")]
        for answer in answers:
            assert answer["series"], name
            for one in answer["series"]:
                one.pop("service")
        assert answers[0] == answers[1], name
    gauge = series(server, "hand.gauge", service="via-json", **window)
    (exemplar,) = gauge["series"][0]["points"][0]["exemplars"]
    assert (exemplar["trace_id"], exemplar["span_id"]) == ("ab" * 16, "cd" * 8)
    assert exemplar["attributes"] == {"probe": "p1"}


def grpc_export(server: LabtelServer, body: bytes) -> None:
    with grpc.insecure_channel(server.grpc) as channel:
        call = channel.unary_unary(METRICS.grpc_method, request_serializer=None, response_deserializer=None)
        call(body, timeout=30)


def test_invalid_metrics_are_rejected(server: LabtelServer) -> None:
    request = metrics_request("invalid")
    exemplar = request.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0].exemplars[0]
    exemplar.trace_id = b"\x01\x02\x03"
    where = "resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0].exemplars[0].trace_id"
    with pytest.raises(grpc.RpcError) as caught:
        grpc_export(server, request.SerializeToString())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{where}: must be 0 or 16 bytes, got 3" in (caught.value.details() or "")
    response = post(server, request.SerializeToString())
    assert response.status_code == 400
    assert f"{where}: must be 0 or 16 bytes, got 3" in status_pb2.Status.FromString(response.content).message

    bad_hex = to_otlp_json(metrics_request("invalid")).replace(b'"' + b"ab" * 16 + b'"', b'"not-hex"')
    response = post(server, bad_hex, "application/json")
    assert response.status_code == 400
    assert "exemplars[0].traceId: 'not-hex' is not hex" in response.json()["message"]

    lopsided = metrics_request("invalid")
    point = lopsided.resource_metrics[0].scope_metrics[0].metrics[2].histogram.data_points[0]
    point.bucket_counts.append(1)
    response = post(server, lopsided.SerializeToString())
    assert response.status_code == 400
    assert "histogram.data_points[0].bucket_counts: 5 buckets for 3 explicit_bounds" in (
        status_pb2.Status.FromString(response.content).message
    )
    assert server.get("/series/names", service="invalid").json()["names"] == []


def _unordered(metric: Any) -> None:
    metric.histogram.data_points[0].explicit_bounds[1] = metric.histogram.data_points[0].explicit_bounds[0]


def _infinite(metric: Any) -> None:
    metric.histogram.data_points[0].explicit_bounds[2] = float("inf")


def _nan(metric: Any) -> None:
    metric.histogram.data_points[0].explicit_bounds[0] = float("nan")


def _unspecified(metric: Any) -> None:
    metric.histogram.aggregation_temporality = 0


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (
            _unordered,
            "histogram.data_points[0].explicit_bounds[1]: 1.0 is not above 1.0; bounds must strictly increase",
        ),
        (_infinite, "histogram.data_points[0].explicit_bounds[2]: inf is not a finite number"),
        (_nan, "histogram.data_points[0].explicit_bounds[0]: nan is not a finite number"),
        (_unspecified, "metrics[2].histogram.aggregation_temporality: UNSPECIFIED, which OTLP forbids"),
    ],
)
def test_histograms_that_cannot_be_read_are_rejected(
    server: LabtelServer, spoil: Callable[[Any], None], message: str
) -> None:
    """Bounds out of order or not finite would put quantiles in the wrong buckets, and a sum
    without a temporality cannot be turned into a rate: INVALID_ARGUMENT / 400, naming the field."""
    service = f"spoilt-{uuid.uuid4().hex[:6]}"
    request = metrics_request(service)
    spoil(request.resource_metrics[0].scope_metrics[0].metrics[2])
    with pytest.raises(grpc.RpcError) as caught:
        grpc_export(server, request.SerializeToString())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    response = post(server, request.SerializeToString())
    assert response.status_code == 400
    assert message in status_pb2.Status.FromString(response.content).message
    assert server.get("/series/names", service=service).json()["names"] == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "name: required"),
        ({"name": "lab.queue.depth", "step": "soon"}, "step: invalid duration 'soon'"),
        ({"name": "lab.queue.depth", "step": "500ms"}, "step: '500ms' must be a whole number of seconds"),
        ({"name": "lab.queue.depth", "step": "1s", "start": "2020-01-01T00:00:00Z"}, "step: 1s makes"),
        ({"name": "lab.queue.depth", "agg": "median"}, "agg: 'median' is not one of"),
        ({"name": "lab.queue.depth", "quantile": "1.5"}, "quantile: 1.5 is outside 0..1"),
        ({"name": "lab.queue.depth", "quantile": "high"}, "quantile: 'high' is not a number"),
        ({"name": "lab.queue.depth", "quantile": "0.9"}, "quantile: computed for histograms only"),
        ({"name": "lab.transfer.duration", "quantile": "0.9", "agg": "avg"}, "quantile: give either"),
        ({"name": "lab.transfer.duration", "agg": "max"}, "agg: a histogram takes avg, sum, count"),
        ({"name": "lab.chamber.pressure", "agg": "rate"}, "agg: rate applies to sums"),
        ({"name": "lab.queue.depth", "start": "yesterday"}, "start: 'yesterday' is not a time"),
        (
            {"name": "lab.queue.depth", "start": "2030-01-01", "end": "2020-01-01"},
            "start: 2030-01-01T00:00:00.000000000Z is after end",
        ),
        ({"name": "lab.queue.depth", "type": "counter"}, "type: 'counter' is not one of"),
        ({"name": "lab.queue.depth", "lable.queue": "intake"}, "lable.queue: unknown parameter"),
    ],
)
def test_series_parameter_errors_name_the_parameter(
    server: LabtelServer, sent: dict[str, tuple[str, str]], params: dict[str, str], message: str
) -> None:
    response = server.get("/series", **params)
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


def test_unknown_metric_and_self_metrics(server: LabtelServer, sent: dict[str, tuple[str, str]]) -> None:
    response = server.get("/series", name="no.such.metric")
    assert response.status_code == 404
    assert "no metric named 'no.such.metric'" in response.json()["detail"]
    assert server.get("/series/names", start="nonsense").status_code == 400
    wrong_type = server.get("/series", name="lab.queue.depth", type="gauge")
    assert wrong_type.status_code == 404
    prometheus = server.get("/metrics")
    assert prometheus.headers["content-type"].startswith("text/plain")
    assert 'labtel_receiver_records_total{outcome="accepted",signal="metrics",transport="grpc"}' in prometheus.text
