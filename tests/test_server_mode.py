"""Server mode: `labtel collector` and `labtel api` as separate processes against a ClickHouse server,
two collectors side by side (each with its own write-ahead log), and a two-shard ClickHouse cluster.

The server and cluster tests need Docker (testcontainers) or LABTEL_TEST_CLICKHOUSE_URL; where
neither exists they are skipped with the reason. The write-ahead log's lock runs everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames
from labtel.collector.wal import WALInUse, WriteAheadLog
from tests.cluster_helpers import REPLICA_PARAMS
from tests.conftest import docker_engine
from tests.helpers import LabtelServer, log_record, logs_request, wait_for, write_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.fixture(scope="module")
def cluster_urls() -> Iterator[list[str]]:
    """The four nodes (2 shards x 2 replicas, one Keeper) of deploy/docker-compose.cluster.yml."""
    if not docker_engine():
        pytest.skip("needs Docker to run a ClickHouse cluster (Keeper and four nodes) with testcontainers")
    from testcontainers.compose import DockerCompose

    nodes = ["ch-s1-r1", "ch-s1-r2", "ch-s2-r1", "ch-s2-r2"]
    compose = DockerCompose(DEPLOY, "docker-compose.cluster.yml", services=["keeper", *nodes], wait=True)
    with compose:
        urls = []
        for node in nodes:
            host, port = compose.get_service_host_and_port(node, 8123)
            urls.append(f"http://labtel:labtel@{host}:{port}")
        yield urls


def _send(collector: LabtelServer, body: str) -> None:
    response = httpx.post(
        f"http://{collector.http}/v1/logs",
        content=logs_request([log_record(body, {"lab.node.id": "dome"})]).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


@pytest.mark.clickhouse_server
def test_two_collectors_and_an_api_as_separate_processes_against_one_server(
    server_url: str, tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    database = f"labtel_test_{uuid.uuid4().hex[:8]}"
    collectors = []
    for name in ("one", "two"):
        workdir = tmp_path / name
        workdir.mkdir()
        config = write_config(workdir / "otel-config.yaml", workdir / "data", endpoint=server_url, database=database)
        collectors.append(server_factory(config=config, workdir=workdir, command="collector"))
    for collector in collectors:
        collector.start()
    assert (tmp_path / "one" / "wal").is_dir() and (tmp_path / "two" / "wal").is_dir()  # noqa: PT018
    api_dir = tmp_path / "api"
    api_dir.mkdir()
    api_config = write_config(api_dir / "otel-config.yaml", api_dir / "data", endpoint=server_url, database=database)
    api = server_factory(config=api_config, workdir=api_dir, command="api").start()
    _send(collectors[0], "through collector one")
    _send(collectors[1], "through collector two")

    def bodies() -> list[str]:
        response = httpx.get(f"http://{api.api}/events", params={"node": "dome"}, timeout=10)
        return sorted(e["body"] for e in response.json()["events"])

    assert wait_for(lambda: bodies() == ["through collector one", "through collector two"], timeout=30)
    store = Storage(parse_endpoint(server_url), SchemaNames(database))
    try:
        rows = store.rows(f"SELECT count() AS n, uniqExact(version) AS v FROM {store.names.migrations}")
        assert rows == [{"n": migrations.latest_version(), "v": migrations.latest_version()}]
    finally:
        store.command(f"DROP DATABASE IF EXISTS `{database}`")
        store.close()


@pytest.mark.clickhouse_server
def test_a_dead_first_endpoint_fails_over_to_the_server(server_url: str) -> None:
    dead = "http://127.0.0.1:9"  # discard port: refused
    store = Storage([parse_endpoint(dead), parse_endpoint(server_url)], SchemaNames("system"))
    try:
        assert store.command("SELECT 1") == 1
        assert store.target.url == server_url
    finally:
        store.close()


@pytest.mark.clickhouse_server
def test_a_two_shard_cluster_stores_through_distributed_tables(cluster_urls: list[str]) -> None:
    from labtel.collector.storage.topology import Topology
    from labtel.query_api.events import EventFilter, list_events

    topology = Topology("labtel", "ReplicatedMergeTree", REPLICA_PARAMS, distributed=True, sharding_key="TraceId")
    database = f"labtel-test-{uuid.uuid4().hex[:6]}"  # a '-' in the name: quoted everywhere
    stores = [
        Storage([parse_endpoint(url) for url in (first, *cluster_urls)], SchemaNames(database, topology=topology))
        for first in (cluster_urls[0], cluster_urls[2])
    ]
    try:
        reports: list[migrations.MigrationReport] = []
        threads = [threading.Thread(target=lambda s=s: reports.append(migrations.migrate(s))) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert sorted(v for r in reports for v in (m.version for m in r.applied)) == [
            m.version for m in migrations.MIGRATIONS
        ]
        for index, store in enumerate(stores):
            records = [
                log_record(f"shard test {index}-{i}", {"lab.node.id": "dome"}, trace_id=os.urandom(16))
                for i in range(20)
            ]
            store.insert_otlp("logs", logs_request(records).SerializeToString(), uuid.uuid4().hex)
        for url in cluster_urls:  # every node answers for the whole cluster
            reader = Storage(parse_endpoint(url), SchemaNames(database, topology=topology))
            events, _ = list_events(reader, EventFilter(node="dome"), 100, None)
            assert len(events) == 40
            reader.close()
        shards = stores[0].rows(
            f"SELECT count() AS n FROM clusterAllReplicas('labtel', `{database}`, `otel_logs_local`) "
            "GROUP BY hostName() ORDER BY hostName()"
        )
        assert len(shards) == 4  # rows on both shards, each replicated to its two replicas
        assert sum(row["n"] for row in shards) == 80
    finally:
        stores[0].command(f"DROP DATABASE IF EXISTS `{database}` ON CLUSTER labtel SYNC")
        for store in stores:
            store.close()


def test_two_collectors_cannot_share_a_write_ahead_log(tmp_path: Path) -> None:
    folder = tmp_path / "wal"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from labtel.collector.wal import WriteAheadLog; "
            f"WriteAheadLog(Path({str(folder)!r}), 1 << 20); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            WALInUse, match=rf"write-ahead log .*wal is in use by pid {holder.pid}: give each collector"
        ):
            WriteAheadLog(folder, 1 << 20)
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the lock goes with the process that held it
        try:
            log = WriteAheadLog(folder, 1 << 20)
            break
        except WALInUse:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert len(log) == 0
    assert WriteAheadLog(folder, 1 << 20) is not log  # the same process may open it again (a restart in tests)
