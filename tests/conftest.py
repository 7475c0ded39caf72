"""Fixtures: an in-process embedded store (one database per test) and labtel servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames
from tests.helpers import LabtelServer, write_config


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one embedded store this test process may open (chDB: one path per process)."""
    return tmp_path_factory.mktemp("chdb")


def make_storage(chdb_path: Path, database: str | None = None) -> Storage:
    names = SchemaNames(database or f"t_{uuid.uuid4().hex[:12]}")
    return Storage(parse_endpoint(f"chdb://{chdb_path}"), names)


@contextmanager
def migrated_storage(chdb_path: Path) -> Iterator[Storage]:
    """A freshly migrated database of its own in the process's embedded store, dropped after."""
    store = make_storage(chdb_path)
    migrations.migrate(store)
    try:
        yield store
    finally:
        store.command(f"DROP DATABASE IF EXISTS `{store.names.database}`")
        store.close()


@pytest.fixture
def storage(chdb_path: Path) -> Iterator[Storage]:
    """A freshly migrated database of its own in the process's embedded store."""
    with migrated_storage(chdb_path) as store:
        yield store


@pytest.fixture
def server_factory() -> Iterator[Callable[..., LabtelServer]]:
    """Make labtel servers (subprocesses); every one made is killed at the end of the test."""
    made: list[LabtelServer] = []

    def make(**kwargs: Any) -> LabtelServer:
        server = LabtelServer(**kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()


@pytest.fixture
def server(tmp_path: Path, server_factory: Callable[..., LabtelServer]) -> LabtelServer:
    """A running `labtel serve` with its own data directory and free ports."""
    config = write_config(tmp_path / "otel-config.yaml", tmp_path / "data")
    return server_factory(config=config, workdir=tmp_path).start()


def clickhouse_server_url() -> str | None:
    return os.environ.get("LABTEL_TEST_CLICKHOUSE_URL") or None


CLICKHOUSE_IMAGE = "clickhouse/clickhouse-server:26.9"
"""A server new enough for every migration (the text index needs 26.2 or newer)."""
NO_DOCKER = "needs a ClickHouse server: no Docker engine for testcontainers and LABTEL_TEST_CLICKHOUSE_URL is unset"


def docker_engine() -> bool:
    """Whether a Docker engine answers here (testcontainers needs one)."""
    return bool(shutil.which("docker")) and subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A ClickHouse server: $LABTEL_TEST_CLICKHOUSE_URL, or a container (skipped without Docker)."""
    url = clickhouse_server_url()
    if url:
        yield url
        return
    if not docker_engine():
        pytest.skip(NO_DOCKER)
    from testcontainers.clickhouse import ClickHouseContainer

    with ClickHouseContainer(CLICKHOUSE_IMAGE) as container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(8123)
        yield f"http://{container.username}:{container.password}@{host}:{port}"
