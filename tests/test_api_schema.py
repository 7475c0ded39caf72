"""schemathesis against the query API's own OpenAPI schema: whatever a client sends, no 5xx,
and every response matches the schema (in-process ASGI app, a seeded store)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from labtel.collector.config import CompatConfig, MadsciCompatConfig, QueryApiConfig, SqlSandboxConfig
from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage
from labtel.query_api.app import create_app
from tests.conftest import make_storage
from tests.helpers import log_record, logs_request

BASE = 1_785_000_000_000_000_000

EXCLUDED_PATHS = ["/events/stream"]
"""`/events/stream` is a live Server-Sent Events stream: it answers, then never ends (until the
client goes away), so a generated call would wait forever for its body. test_query_events.py
tests it with a client that disconnects."""


@pytest.fixture(scope="module")
def seeded(chdb_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Storage, Path]]:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    records = [
        log_record(
            f"step {i}",
            {"lab.node.id": f"node-{i % 3}", "lab.event.type": "action_complete", "lab.run.id": f"run-{i % 2}"},
            time_ns=BASE + i * 1_000_000_000,
            trace_id=bytes([i + 1]) * 16,
            span_id=bytes([i + 1]) * 8,
        )
        for i in range(20)
    ]
    data = logs_request(records, resource={"service.name": "schema"}).SerializeToString()
    storage.insert_otlp("logs", data, uuid.uuid4().hex)
    yield storage, tmp_path_factory.mktemp("backups")
    storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")


@pytest.mark.timeout(240)
def test_api_conforms_to_its_schema(seeded: tuple[Storage, Path]) -> None:
    """Every operation, a few generated requests each (valid ones, then ones that break the
    schema): no answer is a 5xx, and every answer matches the documented response schema."""
    storage, backups = seeded
    config = QueryApiConfig(
        sql=SqlSandboxConfig(timeout="2s", max_result_rows=10_000),  # type: ignore[arg-type]
        compat=CompatConfig(madsci=MadsciCompatConfig(backup_dir=str(backups))),
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(storage, config)).exclude(path=EXCLUDED_PATHS)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode, examples in ((GenerationMode.POSITIVE, 2), (GenerationMode.NEGATIVE, 2)):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.generate],
            )
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

            try:
                check()
            except Unsatisfiable:
                continue  # nothing to break: the operation takes no parameters of that kind
            except (Exception, BaseExceptionGroup) as error:  # collect every operation's failures
                failures.append(f"{operation.label} ({mode.value}): {str(error).strip()[:1500]}")
    assert operations > 40
    assert not failures, "\n\n".join(failures)
