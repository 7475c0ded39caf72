"""The sharded schema on the embedded store: Distributed tables over `_local` ones, ingest through
them, reads, deletes of a batch, TTLs (tests/sharded_embedded.py, in a process of its own)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labtel.collector.storage import migrations

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("sharded")
    done = subprocess.run(
        [sys.executable, "-m", "tests.sharded_embedded", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_embedded_store_has_the_one_shard_cluster(observed: dict[str, Any]) -> None:
    assert observed["clusters"] == [{"cluster": "lab-cluster", "is_local": 1}]
    assert observed["applied"] == [m.version for m in migrations.MIGRATIONS]


def test_local_tables_equal_the_single_server_tables_and_distributed_ones_have_their_columns(
    observed: dict[str, Any],
) -> None:
    shapes = observed["shapes"]
    assert len(shapes) == 8  # logs, traces, trace-id lookup, five metrics tables
    for name, shape in shapes.items():
        assert shape["local"] == shape["plain"], name
        distributed = shape["distributed"]
        assert distributed["engine"] == "Distributed", name
        assert distributed["columns"] == shape["plain"]["columns"], name
        assert "indexes" not in distributed, name
        assert "projections" not in distributed, name
    assert any(column[0] == "DurationMs" for column in shapes["otel_logs"]["distributed"]["columns"])


def test_ingest_goes_through_the_distributed_tables_and_reads_come_back(observed: dict[str, Any]) -> None:
    assert observed["bodies"] == [f"sharded {i}" for i in range(5)]
    assert observed["batch_rows"] == 5
    assert observed["local_rows"] == 5
    assert observed["parts"] == [{"named": 1, "table": "my-logs.v1_local", "rows": 5}]  # the parts of every replica
    assert observed["trace_lookup"] == [{"n": 1, "ordered": True}]
    assert observed["metric_rows"] == {
        "gauge": 2,
        "sum": 1,
        "histogram": 1,
        "exponential_histogram": 1,
        "summary": 1,
    }


def test_batch_deletes_and_ttls_go_to_the_local_tables_on_every_shard(observed: dict[str, Any]) -> None:
    assert observed["after_delete"] == 0
    assert observed["deletes"]
    assert all(
        d.startswith("DELETE FROM `lab-db`.`my-logs.v1_local` ON CLUSTER `lab-cluster` WHERE")
        for d in observed["deletes"]
    )
    assert observed["ttl_changed"] == ["my-logs.v1_local"]
    assert observed["ddl_count"] > 50
    assert observed["ddl_without_on_cluster"] == []
