"""The mixed load of the soak benchmark (bench/soak.py): rate-limited OTLP/gRPC ingest that retries
across collector restarts, a beacon stream for the SSE tails, query clients and periodic exports.

Every client is an asyncio task writing into one `Tally`; nothing here knows about the faults, so
whatever the collector does (killed, restarting, storage failing) is seen as a client sees it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import LOGS_EXPORT, _retry_delay, percentile
from workload import RequestStamper, build_request

BEACON_SERVICE = "soak-beacon"
BEACON_NUMBERS = 10**11
"""Beacons carry request numbers from here on (one record each); bulk requests count up from 1."""
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,  # refused while the collector restarts, or pushed back
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # may have been stored: a retry can duplicate, never lose
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
}
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


@dataclass
class Tally:
    """What the clients saw: acknowledged requests, latencies and errors by kind."""

    acked: dict[int, int] = field(default_factory=dict)
    """request number -> records, for every request the collector acknowledged"""
    unacked: dict[int, int] = field(default_factory=dict)
    """requests given up on (a non-retryable error, or still refused when the load ended)"""
    retried: set[int] = field(default_factory=set)
    """requests sent more than once: only these may be stored twice (at-least-once delivery)"""
    acked_records: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    beacons_acked: dict[int, float] = field(default_factory=dict)
    """beacon request number -> when it was acknowledged (time.monotonic())"""
    export_bytes: int = 0
    export_csv_rows: int = 0

    def latency(self, kind: str, ms: float) -> None:
        self.latencies_ms.setdefault(kind, []).append(ms)

    def latency_summary(self) -> dict[str, dict[str, float]]:
        """p50 / p99 / count per kind of call."""
        return {
            kind: {"p50_ms": round(percentile(v, 0.5), 1), "p99_ms": round(percentile(v, 0.99), 1), "count": len(v)}
            for kind, v in sorted(self.latencies_ms.items())
        }


class RateLimiter:
    """Request slots at a steady rate shared by all clients; after a stall (a restart) it does not
    burst to catch up by more than `burst` slots."""

    def __init__(self, per_s: float, burst: int = 8) -> None:
        self.interval = 1.0 / per_s
        self.burst = burst
        self.next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        self.next = max(self.next, now - self.burst * self.interval)
        slot, self.next = self.next, self.next + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class Templates:
    """Pre-built 1,000-event requests whose timestamps are kept recent: one of them is rebuilt with
    the current time every `refresh_s`, so queries, exports and windows of event time see live data."""

    def __init__(self, count: int, records: int) -> None:
        self.records = records
        self.stampers = [RequestStamper(build_request(seed, records)) for seed in range(count)]
        self._seeds = itertools.count(count)

    def stamp(self, number: int) -> bytes:
        return self.stampers[number % len(self.stampers)].stamp(number)

    async def refresh(self, stop: asyncio.Event, refresh_s: float) -> None:
        for index in itertools.cycle(range(len(self.stampers))):
            if await _stopped(stop, refresh_s):
                return
            seed = next(self._seeds) % 10_000
            template = await asyncio.to_thread(build_request, seed, self.records)
            self.stampers[index] = RequestStamper(template)


def beacon_request(number: int) -> bytes:
    """One event of the beacon service, stamped with the current time and its request number."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, text in (("bench.request", f"{number:012d}"), ("service.name", BEACON_SERVICE)):
        resource_logs.resource.attributes.append(KeyValue(key=key, value=AnyValue(string_value=text)))
    record = resource_logs.scope_logs.add().log_records.add()
    record.time_unix_nano = record.observed_time_unix_nano = time.time_ns()
    record.severity_number = 9  # type: ignore[assignment]
    record.severity_text = "INFO"
    record.body.string_value = f"beacon {number - BEACON_NUMBERS}"
    record.attributes.append(KeyValue(key="lab.event.type", value=AnyValue(string_value="health_check")))
    return request.SerializeToString()


class Ingest:
    """OTLP/gRPC Export calls that retry the same request (as OTLP exporters do) until it is
    acknowledged, through refusals, restarts and push-back."""

    def __init__(self, address: str, tally: Tally, channels: int = 4) -> None:
        self.tally = tally
        self.give_up_at = float("inf")
        """Requests still refused after this (set when the load ends) are given up, not acknowledged."""
        self.channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(channels)]
        self.calls = [
            ch.unary_unary(LOGS_EXPORT, request_serializer=None, response_deserializer=None) for ch in self.channels
        ]
        self._turn = itertools.count()

    async def send(self, number: int, data: bytes, records: int, kind: str) -> bool:
        """Export one request; True once acknowledged, False if given up (then it is not counted)."""
        delay = 0.2
        while True:
            call = self.calls[next(self._turn) % len(self.calls)]
            sent = time.perf_counter()
            try:
                await call(data, timeout=30)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code not in RETRYABLE:
                    self.tally.errors[f"{kind}:{code.name}"] += 1
                    break
                self.tally.retries[code.name] += 1
                self.tally.retried.add(number)
                if time.monotonic() > self.give_up_at:
                    break
                hinted = _retry_delay(error) if code == grpc.StatusCode.UNAVAILABLE else 0.0
                await asyncio.sleep(min(max(hinted, delay), 2.0))
                delay = min(delay * 1.6, 2.0)
                continue
            self.tally.latency(kind, (time.perf_counter() - sent) * 1000)
            self.tally.acked[number] = records
            return True
        self.tally.unacked[number] = records
        return False

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def ingest_client(
    ingest: Ingest, templates: Templates, limiter: RateLimiter, numbers: Iterator[int], stop: asyncio.Event
) -> None:
    """Bulk requests at the limiter's pace until `stop` (a request in retry then finishes its retries)."""
    while not stop.is_set():
        await limiter.wait()
        if stop.is_set():
            return
        number = next(numbers)
        if await ingest.send(number, templates.stamp(number), templates.records, "ingest"):
            ingest.tally.acked_records += templates.records


async def beacons(ingest: Ingest, per_s: float, stop: asyncio.Event) -> None:
    """One beacon event every 1/per_s seconds (each awaited before the next), for the SSE tails."""
    for number in itertools.count(BEACON_NUMBERS):
        if await _stopped(stop, 1.0 / per_s):
            return
        if await ingest.send(number, beacon_request(number), 1, "beacon"):
            ingest.tally.beacons_acked[number] = time.monotonic()


@dataclass
class Tail:
    """One SSE client of `/events/stream` on the beacon service, resuming with Last-Event-ID."""

    name: str
    received: set[int] = field(default_factory=set)
    frames: int = 0
    connects: int = 0
    last_id: str | None = None

    async def run(self, client: httpx.AsyncClient, tally: Tally) -> None:
        """Follow the stream forever (cancelled at the end), reconnecting after every break."""
        while True:
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                async with client.stream(
                    "GET",
                    "/events/stream",
                    params={"service": BEACON_SERVICE, "poll": 0.5},
                    headers=headers,
                    timeout=httpx.Timeout(10.0, read=40.0),
                ) as response:
                    if response.status_code != 200:
                        tally.errors[f"sse:{response.status_code}"] += 1
                        await asyncio.sleep(1.0)
                        continue
                    self.connects += 1
                    await self._read(response)
            except httpx.HTTPError as error:
                tally.errors[f"sse:{type(error).__name__}"] += 1
            await asyncio.sleep(0.5)

    async def _read(self, response: httpx.Response) -> None:
        frame_id, data = None, ""
        async for line in response.aiter_lines():
            if line.startswith("id:"):
                frame_id = line[3:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif not line and data:
                event = json.loads(data)
                self.received.add(int(event["resource"]["bench.request"]))
                self.frames += 1
                self.last_id = frame_id
                frame_id, data = None, ""

    def summary(self, acked: dict[int, float], started: float) -> dict[str, Any]:
        """Beacons received and missed; the missed ones as seconds from the start of their acknowledgement."""
        missed = sorted(set(acked) - self.received)
        return {
            "connects": self.connects,
            "frames": self.frames,
            "beacons_received": len(self.received & set(acked)),
            "beacons_missed": len(missed),
            "missed_acked_at_s": [round(acked[n] - started, 1) for n in missed[:20]],
            "repeated_frames": self.frames - len(self.received),
        }


def queries() -> list[tuple[str, str, str, dict[str, Any]]]:
    """The query mix: (kind, method, path, request arguments)."""
    return [
        ("events", "GET", "/events", {"params": {"node": "robot_arm_3", "severity_min": "WARN", "since": "5m"}}),
        ("events_search", "GET", "/events", {"params": {"q": "centrifuge_7", "since": "2m", "limit": 50}}),
        (
            "events_query",
            "POST",
            "/events/query",
            {
                "json": {
                    "selector": {
                        "$and": [
                            {"source.node_id": "plate_reader_4"},
                            {"event_type": "action_failed"},
                            {"attributes.action.duration_ms": {"$gt": 20000}},
                        ]
                    },
                    "limit": 100,
                }
            },
        ),
        ("stats", "GET", "/stats", {"params": {"group_by": "service", "bucket": "1m", "since": "10m"}}),
        (
            "sql",
            "POST",
            "/sql",
            {
                "json": {
                    "sql": "SELECT ServiceName, count() AS n, quantile(0.99)(toFloat64OrZero("
                    "LogAttributes['action.duration_ms'])) AS p99 FROM otel_logs "
                    "WHERE Timestamp > now() - INTERVAL 2 MINUTE GROUP BY ServiceName ORDER BY n DESC"
                }
            },
        ),
    ]


async def query_client(
    client: httpx.AsyncClient, tally: Tally, offset: int, pause_s: float, stop: asyncio.Event
) -> None:
    """The query mix round robin, one call at a time, `pause_s` between calls."""
    mix = queries()
    for index in itertools.count(offset):
        kind, method, path, kwargs = mix[index % len(mix)]
        started = time.perf_counter()
        try:
            response = await client.request(method, path, timeout=60.0, **kwargs)
        except httpx.HTTPError as error:
            tally.errors[f"{kind}:{type(error).__name__}"] += 1
        else:
            if response.status_code == 200:
                tally.latency(kind, (time.perf_counter() - started) * 1000)
            else:
                tally.errors[f"{kind}:{response.status_code}"] += 1
        if await _stopped(stop, pause_s):
            return


async def exporter(
    client: httpx.AsyncClient, tally: Tally, every_s: float, window_s: float, stop: asyncio.Event
) -> None:
    """Every `every_s`: export the events of a `window_s` window ending 5 s ago (at most 100,000),
    CSV and Parquet in turn, streamed and discarded."""
    for fmt in itertools.cycle(("csv", "parquet")):
        if await _stopped(stop, every_s):
            return
        end = time.time() - 5.0
        params: dict[str, str | int] = {
            "format": fmt,
            "start": f"{end - window_s:.3f}",
            "end": f"{end:.3f}",
            "limit": 100_000,
        }
        kind = f"export_{fmt}"
        started = time.perf_counter()
        try:
            async with client.stream("GET", "/export", params=params, timeout=120.0) as response:
                if response.status_code != 200:
                    tally.errors[f"{kind}:{response.status_code}"] += 1
                    continue
                async for chunk in response.aiter_bytes():
                    tally.export_bytes += len(chunk)
                    if fmt == "csv":
                        tally.export_csv_rows += chunk.count(b"\n")
        except httpx.HTTPError as error:
            tally.errors[f"{kind}:{type(error).__name__}"] += 1
            continue
        tally.latency(kind, (time.perf_counter() - started) * 1000)


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` unless `stop` is set first; True if it is."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
