"""Test helpers: a labtel server in a subprocess, OTLP requests built by hand, polling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from labtel.collector.otlp.records import any_value
from labtel.collector.storage import migrations, schema
from labtel.collector.storage.client import Storage
from labtel.collector.storage.topology import quote_string

T = TypeVar("T")

CONFIG_TEMPLATE = """
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:0"{grpc_extra}}}
      http: {{endpoint: "127.0.0.1:0"{http_extra}}}
processors:
  batch: {{timeout: {batch_timeout}}}
exporters:
  clickhouse:
    endpoint: "{endpoint}"
    database: {database}
    sending_queue: {{storage: file_storage{queue_extra}}}
    retry_on_failure: {{initial_interval: 100ms, max_interval: 1s}}
{exporter_extra}
extensions:
  query_api: {{endpoint: "127.0.0.1:0"}}
  file_storage: {{directory: "{wal_dir}"}}
service:
  extensions: [query_api, file_storage]
  telemetry: {{metrics: {self_metrics}}}
  pipelines:
{pipelines}
"""
PIPELINE = "    {signal}: {{receivers: [otlp], processors: [batch], exporters: [clickhouse]}}"


def write_config(
    path: Path,
    data_dir: Path,
    *,
    endpoint: str | None = None,
    database: str = "otel",
    batch_timeout: str = "20ms",
    grpc_extra: str = "",
    http_extra: str = "",
    queue_extra: str = "",
    exporter_extra: str = "",
    signals: tuple[str, ...] = ("logs", "traces"),
    self_metrics: str = "{level: none}",
) -> Path:
    """A collector config listening on free loopback ports, storing in `data_dir`, with a
    pipeline for each of `signals` (the collector's own metrics are not stored unless
    `self_metrics` says so, e.g. `{interval: 1s}`)."""
    path.write_text(
        CONFIG_TEMPLATE.format(
            endpoint=endpoint or f"chdb://{data_dir}",
            database=database,
            batch_timeout=batch_timeout,
            grpc_extra=grpc_extra,
            http_extra=http_extra,
            exporter_extra=exporter_extra,
            queue_extra=queue_extra,
            wal_dir=data_dir.parent / "wal",
            pipelines="\n".join(PIPELINE.format(signal=signal) for signal in signals),
            self_metrics=self_metrics,
        )
    )
    return path


def wait_for(check: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class LabtelServer:
    """`labtel serve` (or another command) in a subprocess, on the ports it reports."""

    config: Path
    workdir: Path
    command: str = "serve"
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    token: str = ""
    """An API key `get` sends (for servers whose query API has an authenticator)."""
    process: subprocess.Popen[bytes] | None = None
    listeners: dict[str, str] = field(default_factory=dict)

    @property
    def ready_file(self) -> Path:
        return self.workdir / f"ready-{self.command}.json"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"labtel-{self.command}.log"

    def start(self, timeout: float = 90.0) -> LabtelServer:
        self.ready_file.unlink(missing_ok=True)
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "labtel.cli",
                self.command,
                "--config",
                str(self.config),
                "--ready-file",
                str(self.ready_file),
                *self.extra_args,
            ],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"labtel {self.command} exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"labtel {self.command} did not become ready:\n{self.output()}")
            time.sleep(0.05)
        self.listeners = json.loads(self.ready_file.read_text())["listeners"]
        return self

    def output(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    @property
    def grpc(self) -> str:
        return self.listeners["OTLP/gRPC"]

    @property
    def http(self) -> str:
        return f"http://{self.listeners['OTLP/HTTP']}"

    @property
    def api(self) -> str:
        return f"http://{self.listeners['query API']}"

    def get(self, path: str, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.get(self.api + path, params=params, headers=headers, timeout=30)

    def metric(self, name: str) -> float:
        """The sum of a self-metric's samples whose line starts with `name` (labels may follow)."""
        text = self.get("/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def wait_until_stored(self, timeout: float = 60.0) -> None:
        """Acknowledged data is durable at once but may sit in the write-ahead log while an insert
        finishes: wait until the log is empty, so everything acknowledged is queryable."""
        wait_for(lambda: self.metric("labtel_wal_batches") == 0, timeout=timeout, what="the WAL to drain")

    def all_events(self, **filters: Any) -> list[dict[str, Any]]:
        """Every event matching `filters`, following `next_cursor` page by page."""
        events: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.get("/events", **filters, **({"cursor": cursor} if cursor else {})).json()
            events.extend(page["events"])
            cursor = page["next_cursor"]
            if not cursor:
                return events

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
            raise AssertionError(f"labtel {self.command} did not stop within {timeout}s:\n{self.output()}") from None
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


def kv(key: str, value: Any) -> KeyValue:
    """A KeyValue with the AnyValue type Python's type suggests (lists → arrays, dicts → kvlists)."""
    return KeyValue(key=key, value=any_value(value))


def logs_request(
    records: list[LogRecord], resource: dict[str, Any] | None = None, scope: str = "tests"
) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.extend(kv(k, v) for k, v in (resource or {"service.name": "tests"}).items())
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = scope
    scope_logs.log_records.extend(records)
    return request


def log_record(
    body: Any = "hello",
    attributes: dict[str, Any] | None = None,
    *,
    time_ns: int | None = None,
    severity: int = 9,
    trace_id: bytes = b"",
    span_id: bytes = b"",
) -> LogRecord:
    record = LogRecord(
        time_unix_nano=time.time_ns() if time_ns is None else time_ns,
        severity_number=severity,  # type: ignore[arg-type]
        trace_id=trace_id,
        span_id=span_id,
    )
    record.body.CopyFrom(any_value(body))
    record.attributes.extend(kv(k, v) for k, v in (attributes or {}).items())
    return record


def wrong_wire_type_request(body: str) -> bytes:
    """A request whose record repeats its body (field 5, a message) as a varint: protobuf readers
    take that for an unknown field, ClickHouse refuses the whole insert."""
    plain = logs_request([log_record(body)], resource={"service.name": "odd"})
    resource_logs = plain.resource_logs[0]
    record = resource_logs.scope_logs[0].log_records[0].SerializeToString() + _varint(5 << 3) + _varint(7)
    scope_logs = _field(2, record)
    return _field(1, _field(1, resource_logs.resource.SerializeToString()) + _field(2, scope_logs))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def store_at_version(store: Storage, version: int) -> None:
    """Make `store`'s database as an older labtel left it: the first `version` migrations applied
    and recorded, with their ingest tables and views (the next start migrates the rest)."""
    store.command(f"CREATE DATABASE {schema.quote_identifier(store.names.database)}")
    store.command(schema.migrations_table(store.names))
    for migration in migrations.MIGRATIONS[:version]:
        for statement in migration.statements(store.names):
            store.command(statement)
        store.command(
            f"INSERT INTO {store.names.migrations} (version, name) VALUES "
            f"({migration.version}, {quote_string(migration.name)})"
        )
    migrations.ensure_ingest(store)


@contextmanager
def serving(app: Any, path: str = "/export") -> Iterator[str]:
    """`app` on a real uvicorn server in this process (to see its threads, storage and timing):
    its URL of `path`."""
    import socket
    import threading

    import uvicorn

    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn started")
        yield f"http://127.0.0.1:{listener.getsockname()[1]}{path}"
    finally:
        server.should_exit = True
        thread.join(10)
