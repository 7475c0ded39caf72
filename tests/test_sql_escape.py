"""The SQL sandbox against a corpus of escape attempts (tests/corpus/sql_escape.yaml): each is
refused or bounded, nothing is written, and the sandbox answers the next query."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from labtel.collector.config import QueryApiConfig, SqlSandboxConfig
from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage
from labtel.query_api.app import create_app
from tests.conftest import make_storage
from tests.helpers import log_record, logs_request

CORPUS: list[dict[str, Any]] = yaml.safe_load((Path(__file__).parent / "corpus" / "sql_escape.yaml").read_text())


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Storage]:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    data = logs_request([log_record(f"s{i}") for i in range(40)]).SerializeToString()
    storage.insert_otlp("logs", data, uuid.uuid4().hex)
    yield storage
    storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


@pytest.fixture(scope="module")
def client(store: Storage) -> Iterator[TestClient]:
    config = QueryApiConfig(
        sql=SqlSandboxConfig(
            timeout="1s",  # type: ignore[arg-type]
            max_rows_to_read=20_000_000,
            max_result_rows=1000,
            max_memory_usage=64 * 1024 * 1024,
        )
    )
    with TestClient(create_app(store, config)) as test_client:
        yield test_client


@pytest.mark.parametrize("entry", CORPUS, ids=[e["sql"][:60] for e in CORPUS])
def test_escape_attempt_is_refused_or_bounded(
    client: TestClient, store: Storage, entry: dict[str, Any], tmp_path: Path
) -> None:
    outfile = tmp_path / "stolen"
    response = client.post("/sql", json={"sql": entry["sql"].replace("{outfile}", str(outfile))})
    assert response.status_code in entry["expect"], (entry["sql"], response.status_code, response.text[:300])
    if response.status_code != 200:
        assert entry.get("detail", "") in response.json()["detail"]
    assert not outfile.exists()
    assert store.command(f"SELECT count() FROM {store.names.logs}") == 40
    assert client.post("/sql", json={"sql": "SELECT 7 AS x"}, params={"format": "csv"}).text == '"x"\n7\n'
