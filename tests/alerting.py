"""Test helpers for alerts: a clock the test moves, notifiers that record, SMTP and HTTP receivers."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from labtel.collector.alerts.config import AlertsExporterConfig
from labtel.collector.storage.client import Storage
from tests.helpers import log_record, logs_request


class FakeClock:
    """Unix seconds that only move when the test says so."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def alerts_config(**values: Any) -> AlertsExporterConfig:
    """An alerts exporter config from plain values, as otel-config.yaml would give them."""
    return AlertsExporterConfig.model_validate(values)


def store_events(storage: Storage, events: list[dict[str, Any]], service: str = "alert-tests") -> None:
    """Insert log records: each dict has `body`, optional `severity`, `time_ns` and `attributes`."""
    records = [
        log_record(
            e.get("body", "event"),
            e.get("attributes", {}),
            severity=e.get("severity", 9),
            time_ns=e.get("time_ns"),
        )
        for e in events
    ]
    data = logs_request(records, resource={"service.name": service}).SerializeToString()
    storage.insert_otlp("logs", data, uuid.uuid4().hex)


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class WebhookReceiver:
    """A real HTTP server in a thread; answers the statuses queued in `responses` (a status, or a
    status and its Retry-After header), then 200."""

    responses: list[int | tuple[int, str]] = field(default_factory=list)
    received: list[ReceivedRequest] = field(default_factory=list)
    url: str = ""

    def wait(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} webhook requests, got {len(self.received)}")
            time.sleep(0.02)
        return self.received


@contextmanager
def webhook_receiver(responses: list[int | tuple[int, str]] | None = None) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(responses=list(responses or []))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"null")
            receiver.received.append(ReceivedRequest(self.path, dict(self.headers.items()), body))
            answer = receiver.responses.pop(0) if receiver.responses else 200
            status, retry_after = answer if isinstance(answer, tuple) else (answer, None)
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    """A loopback TCP port nothing listens on (bound and released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SmtpReceiver:
    """A real SMTP server (aiosmtpd) that keeps what it receives."""

    port: int
    envelopes: list[Any] = field(default_factory=list)

    def wait(self, count: int, timeout: float = 15.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.envelopes) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} emails, got {len(self.envelopes)}")
            time.sleep(0.02)
        return self.envelopes


@contextmanager
def smtp_receiver(port: int | None = None) -> Iterator[SmtpReceiver]:
    """A real SMTP server on `port` (a free one by default: a test can let a port be down first)."""
    from aiosmtpd.controller import Controller

    receiver = SmtpReceiver(port=port or free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            receiver.envelopes.append(envelope)
            return "250 Message accepted for delivery"

    controller = Controller(Handler(), hostname="127.0.0.1", port=receiver.port)
    controller.start()
    try:
        yield receiver
    finally:
        controller.stop()
