"""Metrics requests built by hand: every metric type, with exemplars, for storage and API tests."""

from __future__ import annotations

import time

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from tests.helpers import kv

NOW_NS = time.time_ns() // 10**9 * 10**9
"""The time the points are at (whole seconds: the sum and exponential histogram tables hold seconds)."""
TRACE_ID, SPAN_ID = bytes.fromhex("ab" * 16), bytes.fromhex("cd" * 8)


def metrics_request(service: str, at_ns: int = NOW_NS) -> ExportMetricsServiceRequest:
    """One metric of each type, in this order: gauge, sum, histogram, exponential histogram, summary."""
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend([kv("service.name", service), kv("lab.name", "observatory")])
    resource_metrics.schema_url = "https://opentelemetry.io/schemas/1.26.0"
    scope_metrics = resource_metrics.scope_metrics.add()
    scope_metrics.scope.name, scope_metrics.scope.version = "lab.telescope", "0.9"
    scope_metrics.scope.attributes.extend([kv("site", "ridge")])
    start = at_ns - 60 * 10**9

    gauge = scope_metrics.metrics.add(name="hand.gauge", unit="Cel", description="Dome temperature")
    point = gauge.gauge.data_points.add(time_unix_nano=at_ns, start_time_unix_nano=start, as_double=12.5)
    point.attributes.extend([kv("dome", "north")])
    exemplar = point.exemplars.add(time_unix_nano=at_ns - 10**9, as_double=12.75, trace_id=TRACE_ID, span_id=SPAN_ID)
    exemplar.filtered_attributes.extend([kv("probe", "p1")])
    gauge.gauge.data_points.add(time_unix_nano=at_ns, as_int=-3).attributes.extend([kv("dome", "south")])

    total = scope_metrics.metrics.add(name="hand.sum", unit="{frame}")
    total.sum.aggregation_temporality, total.sum.is_monotonic = 2, True
    total.sum.data_points.add(time_unix_nano=at_ns, start_time_unix_nano=start, as_int=42)

    histogram = scope_metrics.metrics.add(name="hand.histogram", unit="s")
    histogram.histogram.aggregation_temporality = 1
    point = histogram.histogram.data_points.add(
        time_unix_nano=at_ns, start_time_unix_nano=start, count=7, sum=20.0, min=0.5, max=9.0
    )
    point.bucket_counts.extend([1, 2, 3, 1])
    point.explicit_bounds.extend([1.0, 2.0, 5.0])
    point.exemplars.add(time_unix_nano=at_ns, as_double=4.5, trace_id=TRACE_ID, span_id=SPAN_ID)

    exponential = scope_metrics.metrics.add(name="hand.exponential", unit="ms")
    exponential.exponential_histogram.aggregation_temporality = 2
    point = exponential.exponential_histogram.data_points.add(
        time_unix_nano=at_ns, start_time_unix_nano=start, count=6, sum=30.5, scale=2, zero_count=1, min=0, max=12
    )
    point.positive.offset, point.negative.offset = -1, 3
    point.positive.bucket_counts.extend([1, 0, 3])
    point.negative.bucket_counts.extend([1])

    summary = scope_metrics.metrics.add(name="hand.summary", unit="s")
    point = summary.summary.data_points.add(time_unix_nano=at_ns, start_time_unix_nano=start, count=4, sum=10.0)
    point.quantile_values.add(quantile=0.5, value=2.0)
    point.quantile_values.add(quantile=0.99, value=4.5)
    return request


def metric_kind(metric: Metric) -> str:
    """Which field of a Metric's `data` oneof is set."""
    kind: str = metric.WhichOneof("data")
    return kind
