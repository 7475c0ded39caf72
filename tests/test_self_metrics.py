"""The collector's own metrics are stored as OTLP metrics (service `labtel-collector`), for dashboards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from labtel.collector import telemetry
from labtel.collector.otlp.signals import LOGS
from labtel.collector.self_metrics import SERVICE_NAME, SelfMetrics
from labtel.collector.storage.client import Storage
from tests.helpers import LabtelServer, log_record, logs_request, wait_for, write_config


def test_a_snapshot_holds_counters_gauges_and_histograms(storage: Storage) -> None:
    telemetry.RECEIVED_RECORDS.labels("logs", "test", "accepted").inc(7)
    telemetry.QUEUE_RECORDS.labels("logs-test").set(3)
    telemetry.INSERT_LATENCY.labels("clickhouse-test", "logs").observe(0.02)
    SelfMetrics(storage).store_once()
    names = storage.names
    accepted = storage.command(
        f"SELECT max(Value) FROM {names.metrics_table('sum')} WHERE ServiceName = {{s:String}} "
        "AND MetricName = 'labtel_receiver_records' AND Attributes['transport'] = 'test' AND IsMonotonic",
        parameters={"s": SERVICE_NAME},
    )
    assert accepted >= 7
    queued = storage.command(
        f"SELECT max(Value) FROM {names.metrics_table('gauge')} WHERE MetricName = 'labtel_queue_records' "
        "AND Attributes['pipeline'] = 'logs-test'"
    )
    assert queued == 3
    count, bounds = storage.rows(
        f"SELECT Count AS c, ExplicitBounds AS b FROM {names.metrics_table('histogram')} "
        "WHERE MetricName = 'labtel_exporter_insert_duration_seconds' AND Attributes['exporter'] = 'clickhouse-test'"
    )[0].values()
    assert count >= 1
    assert bounds[:3] == [0.005, 0.01, 0.025]


def test_a_running_collector_stores_its_metrics(tmp_path: Path, server_factory: Callable[..., LabtelServer]) -> None:
    config = write_config(tmp_path / "otel-config.yaml", tmp_path / "data", self_metrics="{interval: 1s}")
    server = server_factory(config=config, workdir=tmp_path).start()
    httpx.post(
        f"{server.http}/v1/logs",
        content=logs_request([log_record("counted")]).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    ).raise_for_status()

    def stored() -> bool:
        response = server.get("/series", name="labtel_receiver_records", service=SERVICE_NAME, agg="last", step="1s")
        return response.status_code == 200 and any(
            s["labels"].get("outcome") == "accepted" and s["points"] for s in response.json()["series"]
        )

    wait_for(stored, timeout=30, what="the collector's own metrics")


def test_receivers_count_partial_successes_and_empty_exports(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    config = write_config(
        tmp_path / "otel-config.yaml", tmp_path / "data", exporter_extra="    limits: {max_body_length: 100}"
    )
    server = server_factory(config=config, workdir=tmp_path).start()
    one_too_long = logs_request([log_record("fits"), log_record("x" * 101)]).SerializeToString()

    def counted(metric: str, transport: str, outcome: str) -> float:
        return server.metric(f'labtel_{metric}_total{{outcome="{outcome}",signal="logs",transport="{transport}"}}')

    response = httpx.post(
        f"{server.http}/v1/logs", content=one_too_long, headers={"Content-Type": "application/x-protobuf"}
    )
    assert response.status_code == 200
    with grpc.insecure_channel(server.grpc) as channel:
        export = channel.unary_unary(LOGS.grpc_method, request_serializer=None, response_deserializer=None)
        assert (
            ExportLogsServiceResponse.FromString(export(one_too_long, timeout=30)).partial_success.rejected_log_records
            == 1
        )
        assert export(b"", timeout=30) == b""
    for transport in ("http", "grpc"):
        assert counted("receiver_records", transport, "accepted") == 1
        assert counted("receiver_records", transport, "rejected") == 1
    assert counted("receiver_requests", "grpc", "accepted") == 2  # the partial success and the empty export
