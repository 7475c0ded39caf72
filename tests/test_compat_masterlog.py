"""The real `master-log-client` (0.1.0) against `labtel serve`'s `/api/v1/logs` routes: synchronous
sends, background batching with `flush()` results, API keys, and the fields as labtel stores them."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from master_log_client import MasterLogClient, MasterLogResult

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
    mixed = httpx.post(
        f"{server.api}/api/v1/logs/batch",
        json={"logs": [{"body": "usable", "tags": ["route-test"]}, {"severity": "loud"}, "not an event"]},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert mixed.status_code == 200  # a 4xx would have the client send the stored event again
    assert mixed.json()["accepted"] == 1
    assert [(e["index"], "severity" in e["error"]) for e in mixed.json()["errors"]] == [(1, True), (2, False)]
    bad = httpx.post(f"{server.api}/api/v1/logs", json={"severity": "loud"}, headers={"Authorization": f"Bearer {KEY}"})
    assert bad.status_code == 422
    assert "severity" in bad.json()["detail"]


def test_unusable_fields_do_not_hold_up_a_batch(server: LabtelServer) -> None:
    # master-log-client keeps a batch that was not answered 2xx and sends it again at every flush:
    # an event with a field labtel cannot use is stored without it, and the batch answered stored.
    client = MasterLogClient(api_key=KEY, endpoint=server.api, async_mode=True, flush_interval_seconds=0.3)
    try:
        client.info("before", tags=["poison-test"])
        client.info("bad time", tags=["poison-test"], created_at="2026-12-01 10:00 CET")
        client.info("bad ttl", tags=["poison-test"], ttl_seconds=0)
        client.info("after", tags=["poison-test"])
        flushed = client.flush(timeout_seconds=30)
        assert flushed.ok, flushed.error
        client.info("later", tags=["poison-test"])
        assert client.flush(timeout_seconds=30).ok
        time.sleep(1)  # a batch kept by the client would be sent again by now
    finally:
        assert client.shutdown(timeout_seconds=30).ok
    server.wait_until_stored()
    events = {e["body"]: e for e in events_tagged(server, "poison-test")}
    assert sorted(events) == ["after", "bad time", "bad ttl", "before", "later"]
    assert len(events_tagged(server, "poison-test")) == 5  # each once
    bad_time = events["bad time"]["attributes"]
    assert bad_time["master_log.created_at"] == "2026-12-01 10:00 CET"
    assert "created_at" in bad_time["master_log.errors"]
    assert events["bad time"]["timestamp"][:10] == events["before"]["timestamp"][:10]  # the arrival time
    bad_ttl = events["bad ttl"]["attributes"]
    assert (bad_ttl["master_log.ttl_seconds"], "lab.ttl_seconds" in bad_ttl) == ("0", False)
    assert "ttl_seconds" in bad_ttl["master_log.errors"]


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


def test_the_client_block_is_told_from_the_users_metadata(server: LabtelServer) -> None:
    client = MasterLogClient(api_key=KEY, endpoint=server.api, async_mode=False)
    own_under = client.info("own _python_client", tags=["block-test"], metadata={"_python_client": {"mine": 1}})
    own_plain = client.info("own python_client", tags=["block-test"], metadata={"python_client": "mine"})
    assert own_under.ok
    assert own_plain.ok
    for result, kept in ((own_under, {"_python_client": {"mine": 1}}), (own_plain, {"python_client": "mine"})):
        (stored,) = server.all_events(**{"attr.lab.event.id": result.event_id})
        assert stored["attributes"]["master_log.metadata"] == json.dumps(kept, separators=(",", ":"))
        assert stored["resource"]["master_log.library"] == "master-log-client"


def stored_count(server: LabtelServer, tag: str) -> tuple[int, int]:
    """How many events tagged `tag` storage holds, and how many distinct `i` metadata values among them."""
    sql = (
        "SELECT count() AS n, uniqExact(LogAttributes['i']) AS distinct_i FROM otel.otel_logs "
        "WHERE has(JSONExtract(LogAttributes['tags'], 'Array(String)'), {tag:String})"
    )
    answer = httpx.post(f"{server.api}/sql", json={"sql": sql, "parameters": {"tag": tag}}, timeout=60)
    assert answer.status_code == 200, answer.text
    row = answer.json()["data"][0]
    return int(row["n"]), int(row["distinct_i"])


def flush_answer(client: MasterLogClient) -> MasterLogResult:
    """The client's flush result. With a long flush interval a flush request can miss the worker's
    wake-up (a race in the client) and wait for the next one: asking again wakes it."""
    for _ in range(12):
        result = client.flush(timeout_seconds=10)
        if result.ok or "timed out waiting for Master Log worker flush" not in (result.error or ""):
            return result
    raise AssertionError("master-log-client's worker never answered a flush")


def test_a_batch_above_the_old_limit_is_stored_once(server: LabtelServer) -> None:
    # master-log-client sends `batch_size` events per request; one configured above 10,000 (the
    # old limit, a 413 it would have sent again forever) sends up to 12,000 in one, stored whole.
    # A flush sends what its worker has drained from the client's queue by then: under load that
    # can be a part, the rest going with the next flush (test_compat_direct posts 12,000 in one),
    # and its answer can time out while its request is stored.
    count = 12_000
    client = MasterLogClient(
        api_key=KEY,
        endpoint=server.api,
        async_mode=True,
        batch_size=count,
        flush_interval_seconds=3600,  # sent when all 12,000 are pending, in one request
        max_queue_size=count + 1,
        backpressure=False,
        timeout_seconds=120,
    )
    try:
        assert all(client.info(f"replayed {i}", tags=["large-batch"], metadata={"i": i}).ok for i in range(count))
        deadline = time.monotonic() + 120
        while True:  # a flush's own answer can time out under load, and its count with it: ask storage
            flushed = flush_answer(client)
            assert flushed.ok, flushed.error
            server.wait_until_stored()
            if stored_count(server, "large-batch")[0] >= count:
                break
            assert time.monotonic() < deadline, f"{stored_count(server, 'large-batch')[0]} of {count} stored"
    finally:
        client.shutdown(timeout_seconds=10)
    server.wait_until_stored()
    assert stored_count(server, "large-batch") == (count, count)  # every event, each once


def test_a_body_over_the_byte_limit_is_a_413_the_client_reads(server: LabtelServer) -> None:
    # urllib (master-log-client) sends its whole body before it reads the answer: the server reads
    # the rest of a body over the limit and throws it away, so the client gets the 413 and its
    # message instead of a reset connection.
    client = MasterLogClient(
        api_key=KEY,
        endpoint=server.api,
        async_mode=True,
        batch_size=30,
        flush_interval_seconds=3600,
        timeout_seconds=60,
    )
    try:
        for i in range(30):  # 30 MB, over the 20 MiB of query_api.max_request_body_size
            assert client.info("x" * 1_000_000, tags=["over-limit"], metadata={"i": i}).ok
        flushed = flush_answer(client)
    finally:
        client.shutdown(timeout_seconds=10)
    assert not flushed.ok
    assert "HTTP 413" in (flushed.error or "")
    assert "over the limit of 20971520 bytes (query_api.max_request_body_size)" in (flushed.error or "")
    assert stored_count(server, "over-limit") == (0, 0)
    small = MasterLogClient(api_key=KEY, endpoint=server.api, async_mode=False)
    assert small.info("after the refused batch", tags=["over-limit-after"]).ok


def test_a_batch_whose_client_stopped_waiting_is_not_stored(server: LabtelServer) -> None:
    # master-log-client sends a batch again when it got no answer within timeout_seconds (2 s by
    # default): one its sender gave up on before it was stored is not stored, or it would be twice.
    logs = [
        {"severity": "info", "body": f"gone {i}", "tags": ["gone-test"], "metadata": {"i": i}} for i in range(40_000)
    ]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{server.api}/api/v1/logs/batch",
            json={"logs": logs},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=httpx.Timeout(60, read=0.05),
        )
    wait_for(lambda: "batch of 40000 events was not stored" in server.output(), timeout=60, what="the warning")
    assert "MASTER_LOG_TIMEOUT_SECONDS" in server.output()
    server.wait_until_stored()
    assert stored_count(server, "gone-test") == (0, 0)
    answer = httpx.post(
        f"{server.api}/api/v1/logs/batch", json={"logs": logs}, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 40_000
    server.wait_until_stored()
    assert stored_count(server, "gone-test") == (40_000, 40_000)
