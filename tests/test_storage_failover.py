"""Failover endpoints: a ClickHouse that cannot be reached is skipped for the next one in the list."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from labtel.collector.storage.client import ServerOptions, Storage, StorageError, parse_endpoint
from labtel.collector.storage.schema import SchemaNames


def _refused_port() -> int:
    """A local port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def hanging_up_port() -> Iterator[int]:
    """A local port that accepts connections and closes them at once (a server going away)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


def test_a_dead_first_endpoint_fails_over_to_the_next(chdb_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{_refused_port()}"
    storage = Storage(
        [parse_endpoint(dead), parse_endpoint(f"chdb://{chdb_path}")],
        SchemaNames(f"t_{uuid.uuid4().hex[:8]}"),
        server_options=ServerOptions(connect_timeout_s=2.0),
    )
    try:
        with caplog.at_level(logging.WARNING, logger="labtel.collector.storage.client"):
            assert storage.command("SELECT 41 + 1") == 42
        assert storage.target.embedded
        assert "ClickHouse failover: embedded ClickHouse (chDB)" in caplog.text
        assert storage.ping()
        other = storage.in_database()
        assert other.target.embedded  # a derived storage starts where its parent is
        other.close()
    finally:
        storage.close()


def test_a_server_hanging_up_is_skipped_too(chdb_path: Path, hanging_up_port: int) -> None:
    storage = Storage(
        [parse_endpoint(f"http://127.0.0.1:{hanging_up_port}"), parse_endpoint(f"chdb://{chdb_path}")],
        SchemaNames(f"t_{uuid.uuid4().hex[:8]}"),
        server_options=ServerOptions(connect_timeout_s=2.0),
    )
    try:
        assert storage.command("SELECT 1") == 1
        assert storage.target.embedded
    finally:
        storage.close()


def test_when_no_endpoint_answers_the_error_names_every_one() -> None:
    ports = [_refused_port(), _refused_port()]
    storage = Storage(
        [parse_endpoint(f"http://127.0.0.1:{port}") for port in ports],
        SchemaNames("otel"),
        server_options=ServerOptions(connect_timeout_s=1.0),
    )
    try:
        with pytest.raises(StorageError) as caught:
            storage.command("SELECT 1")
        for port in ports:
            assert f"cannot reach ClickHouse server at http://127.0.0.1:{port}" in str(caught.value)
        assert not storage.ping()
    finally:
        storage.close()


def test_server_options_reach_clickhouse_connect() -> None:
    options = ServerOptions(secure=True, verify=False, ca_cert="/etc/ssl/lab-ca.pem", connect_timeout_s=3)
    assert options.client_kwargs() == {"secure": True, "verify": False, "ca_cert": "/etc/ssl/lab-ca.pem"}
    assert ServerOptions().client_kwargs() == {"verify": True}
