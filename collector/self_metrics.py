"""The collector's own metrics, stored as OTLP metrics beside the lab's (service `labtel-collector`).

Every `interval` the counters, gauges and histograms of `GET /metrics` are snapshotted into an
ExportMetricsServiceRequest (counters as cumulative monotonic sums, histograms as cumulative
histograms) and inserted into the metrics tables, so Grafana's "Collector health" dashboard reads
them with the ClickHouse datasource alone. Configured by `service.telemetry.metrics` in
`otel-config.yaml`: `level: none` turns it off, `interval` sets the period (default 15s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from datetime import timedelta
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, ScopeMetrics
from prometheus_client import CollectorRegistry

from labtel.collector import telemetry
from labtel.collector.config import TelemetryMetricsConfig
from labtel.collector.storage.client import Storage
from labtel.sdk import __version__

log = logging.getLogger(__name__)

SERVICE_NAME = "labtel-collector"
DEFAULT_INTERVAL = timedelta(seconds=15)


def _attributes(labels: dict[str, str]) -> list[KeyValue]:
    out = []
    for key, value in sorted(labels.items()):
        item = KeyValue(key=key)
        item.value.string_value = value
        out.append(item)
    return out


def snapshot(registry: CollectorRegistry, now_ns: int, start_ns: int) -> bytes:
    """The registry's current values as one serialized ExportMetricsServiceRequest."""
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.extend(
        _attributes(
            {
                "service.name": SERVICE_NAME,
                "service.version": __version__,
                "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
                "host.name": socket.gethostname(),
            }
        )
    )
    scope: ScopeMetrics = resource.scope_metrics.add()
    scope.scope.name, scope.scope.version = "labtel.collector", __version__
    for family in registry.collect():
        if family.type == "counter":
            metric = scope.metrics.add(name=family.name, description=family.documentation, unit=family.unit)
            metric.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
            metric.sum.is_monotonic = True
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    point = metric.sum.data_points.add(
                        time_unix_nano=now_ns, start_time_unix_nano=start_ns, as_double=sample.value
                    )
                    point.attributes.extend(_attributes(sample.labels))
        elif family.type == "gauge":
            metric = scope.metrics.add(name=family.name, description=family.documentation, unit=family.unit)
            for sample in family.samples:
                point = metric.gauge.data_points.add(time_unix_nano=now_ns, as_double=sample.value)
                point.attributes.extend(_attributes(sample.labels))
        elif family.type == "histogram":
            metric = scope.metrics.add(name=family.name, description=family.documentation, unit=family.unit)
            metric.histogram.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
            series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
            for sample in family.samples:
                labels = {k: v for k, v in sample.labels.items() if k != "le"}
                entry = series.setdefault(tuple(sorted(labels.items())), {"buckets": [], "count": 0.0, "sum": 0.0})
                if sample.name.endswith("_bucket"):
                    entry["buckets"].append((float(sample.labels["le"]), sample.value))
                elif sample.name.endswith("_count"):
                    entry["count"] = sample.value
                elif sample.name.endswith("_sum"):
                    entry["sum"] = sample.value
            for labels_key, entry in series.items():
                cumulative = sorted(entry["buckets"])
                bounds = [bound for bound, _ in cumulative if bound != float("inf")]
                counts, previous = [], 0.0
                for _, value in cumulative:
                    counts.append(int(value - previous))
                    previous = value
                histogram_point = metric.histogram.data_points.add(
                    time_unix_nano=now_ns,
                    start_time_unix_nano=start_ns,
                    count=int(entry["count"]),
                    sum=entry["sum"],
                    bucket_counts=counts,
                    explicit_bounds=bounds,
                )
                histogram_point.attributes.extend(_attributes(dict(labels_key)))
    return request.SerializeToString()


class SelfMetrics:
    """Stores the collector's own metrics in its storage every `interval`."""

    def __init__(self, storage: Storage, interval: timedelta = DEFAULT_INTERVAL) -> None:
        self._storage = storage
        self._interval_s = max(1.0, interval.total_seconds())
        self._started_ns = time.time_ns()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, storage: Storage, settings: TelemetryMetricsConfig) -> SelfMetrics | None:
        """The storer `service.telemetry.metrics` asks for, or None for `level: none`."""
        if settings.level == "none":
            return None
        return cls(storage, settings.interval)

    def store_once(self) -> None:
        """Insert one snapshot now (a storage failure is logged and the next snapshot tried)."""
        data = snapshot(telemetry.REGISTRY, time.time_ns(), self._started_ns)
        self._storage.insert_otlp("metrics", data, f"self-{uuid.uuid4().hex}")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await asyncio.to_thread(self.store_once)
            except Exception as error:  # the collector's own metrics never disturb it
                log.debug("storing the collector's own metrics failed: %s", error)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="labtel-self-metrics")

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
