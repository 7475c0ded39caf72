"""The real `master-log-client` (0.1.0) against `labtel serve`'s `/api/v1/logs` routes: synchronous
sends, background batching with `flush()` results, API keys, and the fields as labtel stores them."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from master_log_client import MasterLogClient

from tests.compat_helpers import compat_server
from tests.helpers import LabtelServer, wait_for

KEY, ENV_KEY = "config-key", "env-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabtelServer]:
    """One `labtel serve` with a key in its config and two more in $LABTEL_API_KEYS."""
    running = compat_server(
        tmp_path_factory.mktemp("masterlog"), f"api_keys: [{KEY}]", env={"LABTEL_API_KEYS": f"{ENV_KEY}, other"}
    )
    yield running
    running.kill()


def events_tagged(server: LabtelServer, tag: str) -> list[dict[str, Any]]:
    found = server.all_events(**{"resource.master_log.library": "master-log-client"}, limit=1000)
    return [e for e in found if tag in e["attributes"].get("tags", "")]


def test_synchronous_sends(server: LabtelServer) -> None:
    client = MasterLogClient(api_key=KEY, endpoint=server.api, async_mode=False)
    result = client.log(
        "Captured frame",
        42,
        "for",
        "M31",
        severity="warn",
        tags="imaging, sync-test,imaging",
        metadata={"fwhm_arcseconds": 3.4, "camera": {"id": "cam-1"}},
        created_at="2026-03-01T22:00:00Z",
    )
    assert result.ok, result.error
    assert (result.status_code, result.accepted) == (200, 1)
    assert result.event_id
    for send in (client.trace, client.debug, client.info, client.error, client.fatal):
        assert send("severity check", tags=["sync-test"]).ok
    (stored,) = server.all_events(**{"attr.lab.event.id": result.event_id})
    assert stored["body"] == "Captured frame 42 for M31"
    assert stored["timestamp"].startswith("2026-03-01T22:00:00")
    assert (stored["severity_text"], stored["event_type"]) == ("WARN", "log_warning")
    attributes, resource = stored["attributes"], stored["resource"]
    assert attributes["title"] == "Captured frame 42 for M31"
    assert attributes["tags"] == '["imaging","sync-test"]'
    assert (attributes["fwhm_arcseconds"], attributes["camera.id"]) == ("3.4", "cam-1")
    assert "python_client" not in attributes["master_log.metadata"]
    assert resource["service.name"] == (Path(sys.argv[0]).name if sys.argv[0] else "python")  # the process name
    assert resource["master_log.library"] == "master-log-client"
    assert int(resource["process.pid"]) > 0
    assert resource["host.name"]
    severities = {e["attributes"]["severity"]: e["severity_number"] for e in events_tagged(server, "sync-test")}
    assert severities == {"trace": 1, "debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21}


def test_background_batching_and_flush(server: LabtelServer) -> None:
    # A flush request can reach the worker after the wake-up it sends (a race in the client): the
    # worker then answers at its next interval, so the interval stays short (the client's default).
    client = MasterLogClient(
        api_key=ENV_KEY, endpoint=f"{server.api}/api/v1", async_mode=True, batch_size=7, flush_interval_seconds=1
    )
    try:
        queued = [client.info(f"batched {i}", tags=["batch-test"], metadata={"i": i}) for i in range(20)]
        assert all(r.ok and r.queued for r in queued)
        flushed = client.flush(timeout_seconds=30)
        assert flushed.ok, flushed.error
        assert 0 <= (flushed.accepted or 0) <= 20  # what the worker's last send carried
    finally:
        assert client.shutdown(timeout_seconds=30).ok
    events = wait_for(lambda: (found := events_tagged(server, "batch-test")) and len(found) == 20 and found)
    assert sorted(int(e["attributes"]["i"]) for e in events) == list(range(20))
    empty = MasterLogClient(api_key=ENV_KEY, endpoint=server.api, async_mode=True)
    assert empty.flush(timeout_seconds=10).accepted == 0
    empty.shutdown(timeout_seconds=10)


def test_batch_route_answers_accepted_and_ids(server: LabtelServer) -> None:
    logs = [{"severity": "info", "body": f"b{i}", "tags": ["route-test"], "metadata": {}} for i in range(3)]
    answer = httpx.post(
        f"{server.api}/api/v1/logs/batch", json={"logs": logs}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["accepted"] == 3
    assert len({e["id"] for e in body["events"]}) == 3
    bad = httpx.post(
        f"{server.api}/api/v1/logs/batch",
        json={"logs": [{"severity": "loud"}]},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert bad.status_code == 422
    assert "severity" in bad.json()["detail"]


def test_keys_are_checked(server: LabtelServer) -> None:
    wrong = MasterLogClient(api_key="nope", endpoint=server.api, async_mode=False).info("rejected")
    assert not wrong.ok
    assert "401" in (wrong.error or "")
    missing = httpx.post(f"{server.api}/api/v1/logs", json={"severity": "info", "body": "x"})
    assert missing.status_code == 401
    other = MasterLogClient(api_key="other", endpoint=f"{server.api}/api/v1/logs", async_mode=False)
    assert other.info("env keys are comma-separated").ok
    assert "accept any key" not in server.output()


def test_ttl_expires_events(server: LabtelServer) -> None:
    client = MasterLogClient(api_key=KEY, endpoint=server.api, async_mode=False)
    short = client.info("satellite glint", ttl_seconds=1, tags=["ttl-test"])
    kept = client.info("kept", expires_at="2100-01-01T00:00:00Z", tags=["ttl-test"])
    assert short.ok
    assert kept.ok
    server.wait_until_stored()
    time.sleep(1.5)
    remaining = events_tagged(server, "ttl-test")
    assert [e["attributes"]["lab.event.id"] for e in remaining] == [kept.event_id]
    assert remaining[0]["attributes"]["lab.expires_at"] == "2100-01-01T00:00:00Z"
