"""Ingest benchmark: K concurrent OTLP/gRPC clients against `labtel serve`, then a loss check.

    python bench/ingest.py --clients 32 --duration 30 [--json]

Starts `labtel serve` on a temporary data directory in a subprocess, drives it for T seconds with
pre-built requests of 1,000 realistic lab events, stops it, and counts every acknowledged record
in storage. In the same run it measures, side by side on this machine:
- the storage engine's own ceiling: an INSERT … SELECT of the stored rows into an identical table;
- a naive Python path: decode the protobuf, build rows, insert them with clickhouse-connect.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import RequestStamper, build_request

LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
CONTRIB_LOGS_PER_CORE = 40_000  # the contrib ClickHouse exporter's README, OTLP receiver + exporter

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:0", max_recv_msg_size_mib: 16}}
processors:
  batch: {{timeout: {timeout}, send_batch_size: {batch_size}, send_batch_max_size: {batch_max_size}, send_batch_max_bytes: {batch_bytes}}}
exporters:
  clickhouse:
    endpoint: "chdb://{data}{engine_options}"
    sending_queue: {{num_consumers: {consumers}, queue_size: {queue_size}{queue_extra}}}
{exporter_extra}
extensions:
  query_api: {{endpoint: "127.0.0.1:0"}}
  file_storage: {{directory: "{data}/wal"}}
service:
  extensions: [query_api, file_storage]
  pipelines:
    logs: {{receivers: [otlp], processors: [batch], exporters: [clickhouse]}}
"""


@dataclass
class LoadResult:
    acked: set[int] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)
    completions: list[float] = field(default_factory=list)
    pushed_back: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def _retry_delay(error: grpc.aio.AioRpcError) -> float:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return 0.5


async def drive(
    address: str, stampers: list[RequestStamper], clients: int, duration: float, records: int
) -> tuple[LoadResult, float, float]:
    result = LoadResult()
    numbers = itertools.count(1)
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
        for _ in range(min(clients, 8))
    ]
    calls = [ch.unary_unary(LOGS_EXPORT, request_serializer=None, response_deserializer=None) for ch in channels]
    start = time.monotonic()
    deadline = start + duration

    async def client(index: int) -> None:
        call = calls[index % len(calls)]
        while time.monotonic() < deadline:
            number = next(numbers)
            data = stampers[number % len(stampers)].stamp(number)
            sent = time.perf_counter()
            try:
                await call(data, timeout=60)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    result.pushed_back += 1
                    await asyncio.sleep(_retry_delay(error))
                else:
                    name = error.code().name
                    result.errors[name] = result.errors.get(name, 0) + 1
                continue
            result.latencies_ms.append((time.perf_counter() - sent) * 1000)
            result.completions.append(time.monotonic())
            result.acked.add(number)

    await asyncio.gather(*(client(i) for i in range(clients)))
    end = time.monotonic()
    for channel in channels:
        await channel.close()
    return result, start, end


class RssSampler(threading.Thread):
    """Peak resident memory of a process, sampled from /proc."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.25)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_server(
    workdir: Path, config: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """`labtel serve` on `config` in a subprocess (log appended to workdir/server.log), once it is ready."""
    path = workdir / "otel-config.yaml"
    path.write_text(config)
    ready = workdir / "ready.json"
    ready.unlink(missing_ok=True)  # a restart on the same directory waits for its own ready file
    log = (workdir / "server.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "labtel.cli",
            "serve",
            "--config",
            str(path),
            "--ready-file",
            str(ready),
            "--log-level",
            "warning",
        ],
        cwd=workdir,
        env=None if env is None else {**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 120
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"labtel serve failed to start:\n{(workdir / 'server.log').read_text()}")
        time.sleep(0.05)
    return process, json.loads(ready.read_text())["listeners"]


def stored_per_request(storage: Any) -> dict[int, int]:
    """Stored records per request number (`bench.request`, see workload.RequestStamper)."""
    rows = storage.rows(
        "SELECT ResourceAttributes['bench.request'] AS r, count() AS c FROM otel.otel_logs WHERE r != '' GROUP BY r"
    )
    return {int(r["r"]): int(r["c"]) for r in rows}


def measure_storage(data_dir: Path, acked: set[int], records: int, naive_requests: list[bytes]) -> dict[str, Any]:
    """Count stored records per request; then the engine ceiling and the naive Python path."""
    from labtel.collector.storage.client import Storage, parse_endpoint
    from labtel.collector.storage.schema import SchemaNames

    storage = Storage(parse_endpoint(f"chdb://{data_dir}"), SchemaNames("otel"))
    stored_by_request = stored_per_request(storage)
    stored_of_acked = sum(min(stored_by_request.get(n, 0), records) for n in acked)
    duplicates = sum(max(0, c - records) for c in stored_by_request.values())
    total_rows = sum(stored_by_request.values())

    storage.command("DROP TABLE IF EXISTS otel.ceiling")
    storage.command("CREATE TABLE otel.ceiling AS otel.otel_logs")
    sample = min(total_rows, 2_000_000)
    started = time.perf_counter()
    storage.command(
        f"INSERT INTO otel.ceiling SELECT * FROM otel.otel_logs LIMIT {sample} "
        "SETTINGS max_insert_threads = 2, max_threads = 2"
    )
    ceiling = sample / (time.perf_counter() - started) if sample else 0.0

    naive = naive_python_path(storage, naive_requests)
    storage.close()
    return {
        "stored_of_acked": stored_of_acked,
        "duplicates": duplicates,
        "stored_total": total_rows,
        "ceiling": ceiling,
        "naive": naive,
    }


def naive_python_path(storage: Any, requests: list[bytes]) -> float:
    """Records/s of the obvious implementation: protobuf decode, Python rows, clickhouse-connect insert."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from labtel.collector.otlp.values import value_text

    columns = [
        "Timestamp",
        "ObservedTimestamp",
        "TraceId",
        "SpanId",
        "TraceFlags",
        "SeverityText",
        "SeverityNumber",
        "ServiceName",
        "Body",
        "ResourceSchemaUrl",
        "ResourceAttributes",
        "ScopeSchemaUrl",
        "ScopeName",
        "ScopeVersion",
        "ScopeAttributes",
        "LogAttributes",
        "EventName",
    ]
    storage.command("TRUNCATE TABLE otel.ceiling")
    started = time.perf_counter()
    total = 0
    for data in requests:
        request = ExportLogsServiceRequest.FromString(data)
        rows = []
        for resource_logs in request.resource_logs:
            resource = {kv.key: value_text(kv.value) for kv in resource_logs.resource.attributes}
            service = resource.get("service.name", "")
            for scope_logs in resource_logs.scope_logs:
                scope = scope_logs.scope
                scope_attrs = {kv.key: value_text(kv.value) for kv in scope.attributes}
                for r in scope_logs.log_records:
                    rows.append(
                        [
                            r.time_unix_nano,
                            r.observed_time_unix_nano,
                            r.trace_id.hex(),
                            r.span_id.hex(),
                            r.flags & 0xFF,
                            r.severity_text,
                            r.severity_number,
                            service,
                            value_text(r.body),
                            resource_logs.schema_url,
                            dict(sorted(resource.items())),
                            scope_logs.schema_url,
                            scope.name,
                            scope.version,
                            scope_attrs,
                            dict(sorted((kv.key, value_text(kv.value)) for kv in r.attributes)),
                            r.event_name,
                        ]
                    )
        with storage.client() as client:
            client.insert("otel.ceiling", rows, column_names=columns)
        total += len(rows)
    return total / (time.perf_counter() - started)


def finish(workdir: Path, keep: bool, failed: bool) -> None:
    """The end of a benchmark run: keep or remove its temporary directory, exit 1 if it failed."""
    if keep:
        print(f"kept {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds excluded from the rate")
    parser.add_argument("--records", type=int, default=1000, help="records per request")
    parser.add_argument("--consumers", type=int, default=2, help="exporter sending_queue.num_consumers")
    parser.add_argument("--batch-size", type=int, default=8192, help="batch send_batch_size (records)")
    parser.add_argument("--batch-max-size", type=int, default=12288, help="batch send_batch_max_size (records)")
    parser.add_argument("--batch-timeout", default="200ms")
    parser.add_argument("--queue-size", type=int, default=65_536, help="exporter sending_queue.queue_size")
    parser.add_argument("--exporter-extra", default="", help="extra YAML lines for the exporter")
    parser.add_argument("--wal-ack-after", default="2s", help="sending_queue.wal_ack_after")
    parser.add_argument("--no-wal", action="store_true", help="run without the write-ahead log")
    parser.add_argument("--engine-options", default="", help="chDB options, e.g. ?max_server_memory_usage=600000000")
    parser.add_argument("--naive-requests", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="labtel-bench-"))
    data_dir = workdir / "data"
    config = CONFIG.format(
        data=data_dir,
        consumers=args.consumers,
        batch_size=args.batch_size,
        batch_max_size=args.batch_max_size,
        batch_bytes=64 << 20,
        timeout=args.batch_timeout,
        queue_size=args.queue_size,
        exporter_extra=args.exporter_extra,
        engine_options=args.engine_options,
        queue_extra="" if args.no_wal else f", storage: file_storage, wal_ack_after: {args.wal_ack_after}",
    )
    templates = [build_request(seed, args.records) for seed in range(16)]
    stampers = [RequestStamper(t) for t in templates]
    process, listeners = start_server(workdir, config)
    sampler = RssSampler(process.pid)
    sampler.start()
    try:
        load, start, end = asyncio.run(
            drive(listeners["OTLP/gRPC"], stampers, args.clients, args.duration, args.records)
        )
    finally:
        sampler.stop.set()
        process.send_signal(signal.SIGTERM)
        code = process.wait(300)
    measured = [t for t in load.completions if t >= start + args.warmup]
    window = max(end - (start + args.warmup), 1e-9)
    rate = len(measured) * args.records / window
    naive_requests = [stampers[i % len(stampers)].stamp(10**11 + i) for i in range(args.naive_requests)]
    stored = measure_storage(data_dir, load.acked, args.records, naive_requests)
    acked_records = len(load.acked) * args.records
    cores = os.cpu_count() or 1
    result = {
        "records_per_s": round(rate),
        "acked": acked_records,
        "stored": stored["stored_of_acked"],
        "lost": acked_records - stored["stored_of_acked"],
        "duplicates": stored["duplicates"],
        "p50_ms": round(percentile(load.latencies_ms, 0.50), 1),
        "p99_ms": round(percentile(load.latencies_ms, 0.99), 1),
        "mean_ms": round(statistics.fmean(load.latencies_ms), 1) if load.latencies_ms else 0.0,
        "pushed_back": load.pushed_back,
        "errors": load.errors,
        "engine_ceiling_records_per_s": round(stored["ceiling"]),
        "ratio_to_ceiling": round(rate / stored["ceiling"], 3) if stored["ceiling"] else None,
        "naive_python_records_per_s": round(stored["naive"]),
        "ratio_to_naive_python": round(rate / stored["naive"], 2) if stored["naive"] else None,
        "contrib_reference_records_per_s": CONTRIB_LOGS_PER_CORE * cores,
        "ratio_to_contrib_reference": round(rate / (CONTRIB_LOGS_PER_CORE * cores), 2),
        "rss_mb": round(sampler.peak_kb / 1024, 1),
        "server_exit_code": code,
        "clients": args.clients,
        "duration_s": args.duration,
        "cores": cores,
    }
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    finish(workdir, args.keep, failed=bool(result["lost"]) or code != 0)


if __name__ == "__main__":
    main()
