"""Metrics ingest benchmark: what one insert costs, next to a logs insert, on an embedded store.

    python bench/metrics_insert.py [--inserts 20] [--points 2000] [--json]

ClickHouse plans the ingest views of a signal on every insert, so a small request measures that
fixed cost (metrics: one rendering view and five type views; logs: one view); a request of
`--points` gauge and histogram data points measures the cost per data point on top of it.
Inserts run one at a time, in this process, on a temporary data directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import kv, log_record, logs_request
from tests.metrics_requests import NOW_NS, metrics_request


def large_request(points: int) -> ExportMetricsServiceRequest:
    """Half gauge points and half histogram points, each with three attributes."""
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.extend([kv("service.name", "bench"), kv("host.name", "lab-pc-07")])
    scope = resource.scope_metrics.add()
    gauge = scope.metrics.add(name="bench.temperature", unit="Cel").gauge
    histogram = scope.metrics.add(name="bench.duration", unit="s").histogram
    histogram.aggregation_temporality = 2
    for i in range(points // 2):
        attributes = [kv("node", f"n{i % 50}"), kv("room", f"r{i % 7}"), kv("step", i)]
        point = gauge.data_points.add(time_unix_nano=NOW_NS + i, as_double=20.0 + i % 10)
        point.attributes.extend(attributes)
        bucket = histogram.data_points.add(time_unix_nano=NOW_NS + i, count=6, sum=13.5, min=0.1, max=9)
        bucket.attributes.extend(attributes)
        bucket.explicit_bounds.extend([0.5, 1.0, 5.0])
        bucket.bucket_counts.extend([1, 2, 2, 1])
    return request


def timed(storage: Any, signal: str, data: bytes, inserts: int) -> list[float]:
    """Milliseconds of each of `inserts` inserts of `data`."""
    times = []
    for _ in range(inserts):
        started = time.perf_counter()
        storage.insert_otlp(signal, data, uuid.uuid4().hex)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inserts", type=int, default=20)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from labtel.collector.storage import migrations
    from labtel.collector.storage.client import Storage, parse_endpoint
    from labtel.collector.storage.schema import SchemaNames

    with tempfile.TemporaryDirectory(prefix="labtel-bench-") as data:
        storage = Storage(parse_endpoint(f"chdb://{data}"), SchemaNames("otel"))
        migrations.migrate(storage)
        small_metrics = metrics_request("bench").SerializeToString()
        small_logs = logs_request([log_record("bench")]).SerializeToString()
        timed(storage, "metrics", small_metrics, 2)  # warm up
        metrics_ms = timed(storage, "metrics", small_metrics, args.inserts)
        logs_ms = timed(storage, "logs", small_logs, args.inserts)
        big = large_request(args.points).SerializeToString()
        big_ms = timed(storage, "metrics", big, max(3, args.inserts // 4))
        storage.close()
    fixed = statistics.median(metrics_ms)
    per_point_us = (statistics.median(big_ms) - fixed) * 1000 / args.points
    result = {
        "metrics_insert_ms_median": round(fixed, 1),
        "metrics_insert_ms_min": round(min(metrics_ms), 1),
        "logs_insert_ms_median": round(statistics.median(logs_ms), 1),
        "large_request_points": args.points,
        "large_request_ms_median": round(statistics.median(big_ms), 1),
        "us_per_data_point": round(per_point_us, 1),
        "data_points_per_s_one_insert_thread": round(args.points / statistics.median(big_ms) * 1000),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:40} {value}")


if __name__ == "__main__":
    main()
