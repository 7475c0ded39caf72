"""The collector's own metrics, in Prometheus text format at `GET /metrics`.

Counters and histograms are updated where things happen; gauges (queue depth, WAL size) are
set by their owners whenever they change.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RECEIVED_RECORDS = Counter(
    "labtel_receiver_records",
    "Records received, by what became of them (accepted, rejected, refused)",
    ["signal", "transport", "outcome"],
    registry=REGISTRY,
)
RECEIVED_REQUESTS = Counter(
    "labtel_receiver_requests",
    "Export calls answered, by outcome",
    ["signal", "transport", "outcome"],
    registry=REGISTRY,
)
EXPORT_LATENCY = Histogram(
    "labtel_receiver_export_duration_seconds",
    "Time from receiving an Export call to answering it",
    ["signal", "transport"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
QUEUE_RECORDS = Gauge(
    "labtel_queue_records",
    "Records waiting for or inside an insert, per pipeline",
    ["pipeline"],
    registry=REGISTRY,
)
INSERTS = Counter(
    "labtel_exporter_inserts",
    "Inserts into ClickHouse, by outcome (ok; failed: storage away or failing; refused: storage up but refusing the data, e.g. a batch the fast path cannot take)",
    ["exporter", "signal", "outcome"],
    registry=REGISTRY,
)
STORED_RECORDS = Counter(
    "labtel_exporter_stored_records",
    "Records stored, by path (fast, exact, replay)",
    ["exporter", "signal", "path"],
    registry=REGISTRY,
)
INSERT_LATENCY = Histogram(
    "labtel_exporter_insert_duration_seconds",
    "Duration of one insert statement",
    ["exporter", "signal"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RETRIES = Counter(
    "labtel_exporter_retries",
    "Batches whose insert failed and will be retried from the write-ahead log",
    ["exporter"],
    registry=REGISTRY,
)
WAL_BYTES = Gauge("labtel_wal_bytes", "Bytes in the write-ahead log, not yet stored", ["exporter"], registry=REGISTRY)
WAL_BATCHES = Gauge("labtel_wal_batches", "Batches in the write-ahead log", ["exporter"], registry=REGISTRY)
WAL_APPENDS = Counter(
    "labtel_wal_appends",
    "Batches acknowledged from the write-ahead log (storage slow or away)",
    ["exporter"],
    registry=REGISTRY,
)
WAL_QUARANTINED = Counter(
    "labtel_wal_quarantined",
    "Write-ahead log files set aside in quarantine/: a logged batch that cannot be read or stored "
    "(whole), or the requests of one that storage refused (the others stored)",
    ["exporter"],
    registry=REGISTRY,
)
STORAGE_UP = Gauge("labtel_storage_up", "1 when the last insert succeeded", ["exporter"], registry=REGISTRY)


def exposition() -> tuple[bytes, str]:
    """The current metrics in Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def record_export(signal: str, transport: str, records: int, outcome: str, started: float, rejected: int = 0) -> None:
    """Count one answered Export call: outcome is accepted, rejected (bad data) or refused (retry).

    `rejected` of an accepted call's records were refused (an OTLP partial success): they count
    as rejected records, the others under `outcome`."""
    RECEIVED_REQUESTS.labels(signal, transport, outcome).inc()
    if records - rejected:
        RECEIVED_RECORDS.labels(signal, transport, outcome).inc(records - rejected)
    if rejected:
        RECEIVED_RECORDS.labels(signal, transport, "rejected").inc(rejected)
    EXPORT_LATENCY.labels(signal, transport).observe(time.perf_counter() - started)
