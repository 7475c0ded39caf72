"""The compatibility routes when the API runs alone (`labtel api`): records go straight into
storage with `insert_otlp`, and a storage failure is a 503 with Retry-After, never a 500."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from labtel.collector.alerts.engine import AlertEngine
from labtel.collector.config import CompatConfig, MadsciCompatConfig, QueryApiConfig
from labtel.collector.storage.client import Storage
from labtel.query_api.app import create_app
from tests.alerting import FakeClock, alerts_config
from tests.conftest import make_storage
from tests.helpers import log_record, logs_request

JSON = {"content-type": "application/json"}


def test_direct_inserts_are_stored(storage: Storage) -> None:
    client = TestClient(create_app(storage))
    madsci = client.post("/madsci/event", json={"_id": "01JJ4S0WNGEF5FQAZG5KDGJRBV", "event_data": {"message": "hi"}})
    assert madsci.status_code == 200
    assert client.post("/madsci/event", json={"_id": "01JJ4S0WNGEF5FQAZG5KDGJRBV"}).status_code == 200
    logged = client.post("/api/v1/logs", json={"severity": "info", "body": "direct", "tags": ["d"]})
    assert logged.json()["accepted"] == 1
    assert client.post("/panoptes/event", json={"type": "weather", "data": {"wind": 3}}).json()["seq"] >= 1
    rows = storage.rows(f"SELECT ServiceName, Body FROM {storage.names.logs} ORDER BY ServiceName")
    assert [(r["ServiceName"], r["Body"]) for r in rows] == [
        ("madsci", "hi"),  # once: the duplicate id was not stored again
        ("master-log", "direct"),
        ("panoptes-telemetry", '{"wind":3}'),
    ]
    assert client.get("/madsci/event/01JJ4S0WNGEF5FQAZG5KDGJRBV").json()["event_data"] == {"message": "hi"}


@pytest.fixture
def faulty(
    storage: Storage, chdb_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, Path]]:
    """A client of the API over a second storage of `storage`'s store, and the file whose
    existence makes that storage fail (LABTEL_FAULT_INJECTION_FILE): touch it, storage is away."""
    fault = tmp_path / "storage-away"
    monkeypatch.setenv("LABTEL_FAULT_INJECTION_FILE", str(fault))
    failing = make_storage(chdb_path, storage.names.database)
    try:
        yield TestClient(create_app(failing)), fault
    finally:
        failing.close()


def test_storage_failure_is_503_with_retry_after(storage: Storage, faulty: tuple[TestClient, Path]) -> None:
    client, fault = faulty
    fault.touch()
    for path, body in (
        ("/madsci/event", {"event_data": "lost?"}),
        ("/api/v1/logs", {"severity": "error", "body": "lost?"}),
        ("/panoptes/event", {"type": "weather", "data": {}, "make_current": False}),
    ):
        answer = client.post(path, json=body)
        assert answer.status_code == 503, (path, answer.text)
        assert int(answer.headers["Retry-After"]) >= 1
    fault.unlink()
    assert client.post("/madsci/event", json={"event_data": "stored now"}).status_code == 200
    assert storage.command(f"SELECT count() FROM {storage.names.logs}") == 1


def test_direct_inserts_fit_the_storage_limits(storage: Storage) -> None:
    client = TestClient(create_app(storage))
    data = {f"k{i}": i for i in range(150)} | {"readings": list(range(20_000))}
    posted = client.post("/madsci/event", json={"event_data": data})
    assert posted.status_code == 200, posted.text
    assert client.get(f"/madsci/event/{posted.json()['_id']}").json()["event_data"] == data
    logged = client.post("/api/v1/logs", json={"body": "z" * 2_000_000, "metadata": data})
    assert logged.status_code == 200, logged.text
    (row,) = storage.rows(f"SELECT length(Body) AS n FROM {storage.names.logs} WHERE ServiceName = 'master-log'")
    assert row["n"] <= 1024 * 1024


def test_a_madsci_alert_fires_the_default_alert_rule(storage: Storage) -> None:
    clock = FakeClock()
    config = alerts_config(notifiers={"webhook/ops": {"url": "http://127.0.0.1:9/hook"}}, group_wait="30s")
    engine = AlertEngine("alerts", config, storage, clock)
    engine.load()
    client = TestClient(create_app(storage))
    for alert in (True, False):  # at WARNING, under the default rule's alert_level (ERROR)
        event = {"event_type": "node_status_update", "log_level": 30, "alert": alert, "event_data": f"alert={alert}"}
        assert client.post("/madsci/event", json=event).status_code == 200
    assert engine.evaluate().deliver == []  # grouped: nothing before group_wait
    clock.advance(31)
    [fired] = engine.evaluate().deliver
    assert (fired.rule, [e.body for e in fired.events]) == ("default", ["alert=True"])


def test_an_event_id_posted_again_after_a_purge_is_stored_again(storage: Storage) -> None:
    client = TestClient(create_app(storage))
    event_id = "01JJ4S0WNGEF5FQAZG5KDGPURG"
    assert client.post("/madsci/event", json={"_id": event_id, "event_data": "first"}).status_code == 200
    assert client.post("/madsci/events/archive", json={"event_ids": [event_id]}).json()["archived_count"] == 1
    assert client.delete("/madsci/events/archived", params={"older_than_days": 0}).json()["deleted_count"] == 1
    assert client.get(f"/madsci/event/{event_id}").status_code == 404
    assert client.post("/madsci/event", json={"_id": event_id, "event_data": "again"}).status_code == 200
    assert client.get(f"/madsci/event/{event_id}").json()["event_data"] == "again"


def test_naive_madsci_times_follow_the_local_zones_daylight_saving(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "America/Chicago")  # no compat.madsci.timezone: the server's zone
    client = TestClient(create_app(storage))
    assert client.get("/madsci/settings").json()["naive_timestamp_timezone"] == "America/Chicago"
    for stamp in ("2026-07-01T12:00:00", "2026-01-15T12:00:00"):
        assert client.post("/madsci/event", json={"event_timestamp": stamp, "event_data": stamp}).status_code == 200
    rows = storage.rows(f"SELECT Body, toString(Timestamp) AS ts FROM {storage.names.logs} ORDER BY Timestamp")
    assert [(r["Body"], r["ts"][:19]) for r in rows] == [
        ("2026-01-15T12:00:00", "2026-01-15 18:00:00"),  # CST, UTC-6
        ("2026-07-01T12:00:00", "2026-07-01 17:00:00"),  # CDT, UTC-5
    ]


def test_madsci_selectors_match_fields_where_documents_read_them(storage: Storage) -> None:
    client = TestClient(create_app(storage))
    alert, text, archived = "01JJ4S0WNGEF5FQAZG5KDGALRT", "01JJ4S0WNGEF5FQAZG5KDGTEXT", "01JJ4S0WNGEF5FQAZG5KDGARCH"
    for event in (
        {"_id": alert, "alert": True, "event_data": {"message": "boom"}},
        {"_id": text, "event_data": "Event message or data"},
        {"_id": archived, "event_data": {"message": "old"}},
    ):
        assert client.post("/madsci/event", json=event).status_code == 200
    assert client.post("/madsci/events/archive", json={"event_ids": [archived]}).status_code == 200
    logged = client.post("/api/v1/logs", json={"body": "not a MADSci event"}).json()["events"][0]["id"]

    def ids(selector: dict[str, object]) -> set[str]:
        answer = client.post("/madsci/events/query", json=selector)
        assert answer.status_code == 200, answer.text
        return set(answer.json())

    everything = {alert, text, archived, logged}
    assert ids({}) == everything
    assert ids({"archived": True}) == {archived}
    assert ids({"archived": False}) == ids({"archived": {"$ne": True}}) == everything - {archived}
    assert ids({"alert": True}) == {alert}
    assert ids({"alert": False}) == everything - {alert}
    assert ids({"event_data": "Event message or data"}) == {text}
    assert ids({"event_data.service": "master-log"}) == ids({"event_data": {"service": "master-log"}}) == {logged}
    assert ids({"event_data.message": "not a MADSci event"}) == {logged}
    assert ids({"event_data.message": "boom"}) == {alert}
    assert client.get(f"/madsci/event/{logged}").json()["event_data"]["service"] == "master-log"


def test_a_posted_madsci_event_is_answered_as_it_reads_back(storage: Storage) -> None:
    client = TestClient(create_app(storage))
    event = {"event_type": "EventType.NODE_ERROR", "log_level": "ERROR", "event_data": {"message": "lid stuck"}}
    answer = client.post("/madsci/event", json=event | {"source": {"node_id": "01JJ4S0WNGEF5FQAZG5KDGNODE"}}).json()
    assert (answer["event_type"], answer["log_level"], answer["alert"]) == ("node_error", 40, False)
    assert answer["_id"]
    assert datetime.fromisoformat(answer["event_timestamp"]).tzinfo is None  # as MADSci's clients write times
    assert answer == client.get(f"/madsci/event/{answer['_id']}").json()
    assert client.post("/madsci/event", json={**event, "_id": answer["_id"]}).json() == answer  # a known id


def test_times_labtel_stamped_read_back_as_madsci_writes_them(storage: Storage) -> None:
    """MADSci's clients stamp naive local times: events from elsewhere, events posted without a
    time and `archived_at` read back naive too, in compat.madsci.timezone, so that the documents'
    times compare with each other (a naive and an aware datetime do not)."""
    zone = "America/Chicago"
    config = QueryApiConfig(compat=CompatConfig(madsci=MadsciCompatConfig(timezone=zone)))
    client = TestClient(create_app(storage, config))
    at_ns = 1_780_000_000_123_456_789  # 2026-05-28T20:26:40.123456789Z
    service = f"elsewhere-{uuid.uuid4().hex[:6]}"
    request = logs_request([log_record("from the OTLP side", time_ns=at_ns)], resource={"service.name": service})
    storage.insert_otlp("logs", request.SerializeToString(), uuid.uuid4().hex)
    sent = {"event_timestamp": "2026-05-28T15:00:00", "event_data": {"message": "naive, as sent"}}
    posted = client.post("/madsci/event", json=sent).json()
    unstamped = client.post("/madsci/event", json={"event_data": {"message": "no time"}}).json()
    assert client.post("/madsci/events/archive", json={"event_ids": [unstamped["_id"]]}).status_code == 200
    documents = client.get("/madsci/events", params={"number": 1000, "include_archived": True}).json().values()
    by_message = {d["event_data"].get("message"): d for d in documents if isinstance(d["event_data"], dict)}
    assert by_message["from the OTLP side"]["event_timestamp"] == "2026-05-28T15:26:40.123456"  # CDT, UTC-5
    assert by_message["naive, as sent"]["event_timestamp"] == "2026-05-28T15:00:00"  # as sent
    archived = by_message["no time"]
    stamps = [datetime.fromisoformat(d["event_timestamp"]) for d in by_message.values()]
    assert all(stamp.tzinfo is None for stamp in stamps)
    assert sorted(stamps)  # they compare
    archived_at = datetime.fromisoformat(archived["archived_at"])
    assert archived_at.tzinfo is None
    assert abs(archived_at.replace(tzinfo=ZoneInfo(zone)).timestamp() - time.time()) < 120
    assert posted["event_timestamp"] == "2026-05-28T15:00:00"


def test_a_large_master_log_batch_is_stored_whole_or_not_at_all(
    storage: Storage, faulty: tuple[TestClient, Path]
) -> None:
    # 12,000 events: three chunks, above the old limit of 10,000. While storage is away the
    # batch is a 503 and nothing of it is stored (no chunk went ahead); sent again, all of it is
    # stored once. Events that cannot be stored are left out by their index in the batch, in
    # whichever chunk they are.
    client, fault = faulty
    logs: list[object] = [{"body": f"e{i}", "metadata": {"i": i}} for i in range(12_000)]
    logs[7_000] = "not an event"
    logs[11_000] = {"body": "bad \ud800 text"}  # a JSON "\ud800" escape
    logs[11_001] = {"tags": ["\ud800"]}
    posted = json.dumps({"logs": logs})  # ASCII: the lone surrogates as \u escapes
    headers = {"content-type": "application/json"}
    fault.touch()
    away = client.post("/api/v1/logs/batch", content=posted, headers=headers)
    assert away.status_code == 503, away.text
    assert storage.command(f"SELECT count() FROM {storage.names.logs}") == 0
    fault.unlink()
    answer = client.post("/api/v1/logs/batch", content=posted, headers=headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["accepted"] == len(body["events"]) == 11_997
    assert [e["index"] for e in body["errors"]] == [7_000, 11_000, 11_001]
    assert "not valid Unicode" in body["errors"][1]["error"]
    assert len({e["id"] for e in body["events"]}) == 11_997
    (row,) = storage.rows(
        f"SELECT count() AS n, uniqExact(LogAttributes['i']) AS distinct_i, min(toUInt32(LogAttributes['i'])) AS first,"
        f" max(toUInt32(LogAttributes['i'])) AS last FROM {storage.names.logs}"
    )
    assert (row["n"], row["distinct_i"], row["first"], row["last"]) == (11_997, 11_997, 0, 11_999)


def test_the_master_log_batch_count_limit_is_configurable(storage: Storage) -> None:
    from labtel.collector.config import CompatConfig, MasterLogCompatConfig, QueryApiConfig

    assert QueryApiConfig().compat.master_log.max_batch_events == 50_000
    limited = QueryApiConfig(compat=CompatConfig(master_log=MasterLogCompatConfig(max_batch_events=3)))
    client = TestClient(create_app(storage, limited))
    refused = client.post("/api/v1/logs/batch", json={"logs": [{}] * 4})
    assert refused.status_code == 413
    assert refused.json()["detail"] == (
        "a batch holds at most 3 events (extensions.query_api.compat.master_log.max_batch_events) and this one has"
        " 4: send them in batches of at most 3 (master-log-client: batch_size= or MASTER_LOG_BATCH_SIZE)"
    )
    assert client.post("/api/v1/logs/batch", json={"logs": [{}] * 3}).json()["accepted"] == 3
    unlimited = QueryApiConfig(compat=CompatConfig(master_log=MasterLogCompatConfig(max_batch_events=0)))
    many = TestClient(create_app(storage, unlimited)).post("/api/v1/logs/batch", json={"logs": [{}] * 60_000})
    assert many.status_code == 200, many.text
    assert many.json()["accepted"] == 60_000
    assert storage.command(f"SELECT count() FROM {storage.names.logs}") == 60_003


def test_event_times_storage_cannot_hold_are_stored_at_arrival_not_refused(storage: Storage) -> None:
    # Storage holds 1970 to 2106-02-07T06:28:15Z. A later time was a 400 naming an OTLP path
    # (resource_logs[0]...time_unix_nano), so MADSci's client dropped the event and a Master Log
    # batch was refused whole for one event; NaN or 1e300 seconds was a 500 (OverflowError).
    client = TestClient(create_app(storage))
    before = time.time_ns()
    late = {"event_timestamp": "2206-01-15T10:00:00", "event_data": "late"}
    early = {"event_timestamp": "1960-01-15T10:00:00", "event_data": "early"}
    for event in (late, early):
        answer = client.post("/madsci/event", json=event)
        assert answer.status_code == 200, answer.text
        assert answer.json()["event_timestamp"] == event["event_timestamp"]  # read back as sent
        assert client.get(f"/madsci/event/{answer.json()['_id']}").json() == answer.json()
    for number in (b"NaN", b"1e300"):
        refused = client.post("/madsci/event", content=b'{"event_timestamp": %s}' % number, headers=JSON)
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"].startswith("event_timestamp: ")
    envelope = client.post("/panoptes/event", json={"type": "weather", "data": {}, "ts": "2206-01-15T10:00:00.000Z"})
    assert envelope.status_code == 200, envelope.text
    assert envelope.json()["ts"] == "2206-01-15T10:00:00.000Z"
    logs = b'{"logs": [{"body": "on time"}, {"body": "late", "created_at": "2206-01-01T00:00:00Z"},'
    logs += b' {"body": "not a number", "created_at": NaN}, {"body": "ms", "created_at": 1767225600000}]}'
    batch = client.post("/api/v1/logs/batch", content=logs, headers=JSON)
    assert batch.status_code == 200, batch.text
    assert batch.json()["accepted"] == 4
    errors = [event.get("errors", []) for event in batch.json()["events"]]
    assert errors[0] == []
    assert "outside 1970-01-01T00:00:00Z to 2106-02-07T06:28:15Z" in errors[1][0]
    assert "created_at: nan is not a time" in errors[2][0]
    assert "milliseconds" in errors[3][0]
    after = time.time_ns()
    rows = storage.rows(
        f"SELECT ServiceName AS service, Body AS body, toUnixTimestamp64Nano(Timestamp) AS ts FROM {storage.names.logs}"
    )
    assert sorted((r["service"], r["body"]) for r in rows) == [
        ("madsci", "early"),
        ("madsci", "late"),
        ("master-log", "late"),
        ("master-log", "ms"),
        ("master-log", "not a number"),
        ("master-log", "on time"),
        ("panoptes-telemetry", "{}"),
    ]
    assert all(before <= r["ts"] <= after for r in rows)  # each at its arrival


def test_madsci_event_pages_go_on_past_ten_thousand_events(storage: Storage) -> None:
    # MADSci pages with number & offset (Mongo's skip/limit). offset + number was cut at 10,000
    # (offset 9,950 answered 50 of 100 events, silently) and an offset above 10,000 was a 422,
    # so events past the 10,000 newest could not be paged to.
    client = TestClient(create_app(storage))
    logs = [{"body": f"e{i}", "created_at": 1_767_225_600 + i} for i in range(10_060)]  # one a second
    assert client.post("/api/v1/logs/batch", json={"logs": logs}).json()["accepted"] == 10_060

    def page(offset: int, number: int = 100) -> list[str]:
        answer = client.get("/madsci/events", params={"number": number, "offset": offset})
        assert answer.status_code == 200, answer.text
        return [event["event_data"]["message"] for event in answer.json().values()]

    assert page(0, 3) == ["e10059", "e10058", "e10057"]  # newest first
    assert page(9_950) == [f"e{i}" for i in range(109, 9, -1)]
    assert page(10_050) == [f"e{i}" for i in range(9, -1, -1)]
    assert page(10_060) == []
    assert page(10, 10_000) == [f"e{i}" for i in range(10_049, 49, -1)]


def test_integers_beyond_64_bits_are_stored_and_read_back_digit_for_digit(storage: Storage) -> None:
    """Python's json writes any integer, and the clients labtel stands in for are Python: such an
    integer was a 500 (MADSci, PANOPTES), a 400 blaming a lone surrogate (Master Log), or read
    back rounded to a float."""
    big = 123456789012345678901234567890
    client = TestClient(create_app(storage))
    posted = client.post("/madsci/event", json={"_id": "01JJ4S0WNGEF5FQAZG5KDGJRBW", "event_data": {"count": big}})
    assert posted.status_code == 200, posted.text
    assert posted.json()["event_data"] == {"count": big}
    assert client.get("/madsci/event/01JJ4S0WNGEF5FQAZG5KDGJRBW").json()["event_data"] == {"count": big}
    found = client.post("/madsci/events/query", json={"selector": {"event_data.count": {"$exists": True}}})
    assert [e["event_data"]["count"] for e in found.json().values()] == [big]

    text = f'{{"type": "counter", "data": {{"photons": {big}, "bad": NaN}}, "meta": {{"serial": {-big}}}}}'
    envelope = client.post("/panoptes/event", content=text, headers=JSON)
    assert envelope.status_code == 200, envelope.text
    assert (envelope.json()["data"], envelope.json()["meta"]) == ({"photons": big, "bad": None}, {"serial": -big})
    current = client.get("/panoptes/current/counter").json()
    assert (current["data"], current["meta"]) == ({"photons": big, "bad": None}, {"serial": -big})

    logged = client.post("/api/v1/logs", json={"body": "counted", "metadata": {"photons": big}})
    assert logged.status_code == 200, logged.text
    [stored] = storage.rows(
        f"SELECT LogAttributes['master_log.metadata'] AS m FROM {storage.names.logs} WHERE Body = 'counted'"
    )
    assert json.loads(stored["m"]) == {"photons": big}


@pytest.mark.parametrize(
    ("route", "text"),
    [
        ("/madsci/event", '{"event_data": {"a": "\\ud800"}}'),
        ("/madsci/event", '{"event_data": {"\\ud800": 1}}'),
        ("/panoptes/event", '{"type": "weather", "data": {"a": "\\ud800"}}'),
        ("/panoptes/event", '{"type": "weather", "meta": {"a": "\\udfff"}}'),
        ("/panoptes/run/start", '{"meta": {"a": "\\ud800"}}'),
        ("/api/v1/logs", '{"body": "b", "metadata": {"k": "\\ud800"}}'),
        ("/madsci/events/archive", '{"event_ids": ["\\ud800"]}'),  # a query parameter: it was a 503
    ],
)
def test_text_that_is_not_valid_unicode_is_a_400_naming_it(storage: Storage, route: str, text: str) -> None:
    """A JSON escape of a lone surrogate makes text that cannot be stored: the client's mistake (it was a 500)."""
    response = TestClient(create_app(storage)).post(route, content=text, headers=JSON)
    assert response.status_code == 400, response.text
    assert "not valid Unicode (a lone surrogate such as \\ud800)" in response.json()["detail"]


def test_a_request_that_does_not_validate_is_a_422_also_when_it_holds_a_lone_surrogate(storage: Storage) -> None:
    """FastAPI's 422 repeats the input; with a lone surrogate in it, writing it failed (a 500)."""
    client = TestClient(create_app(storage))
    for route, text in (("/panoptes/event", '{"type": "\\ud800"}'), ("/events/query", '{"limit": "\\ud800\\u00e9"}')):
        response = client.post(route, content=text, headers=JSON)
        assert response.status_code == 422, response.text
        [error] = response.json()["detail"]
        assert error["input"] in ("\ud800", "\ud800é")
    plain = client.post("/events/query", content='{"limit": "é"}', headers=JSON)  # written as FastAPI writes it
    assert plain.status_code == 422
    assert '"input":"é"' in plain.text.replace(" ", "")


def test_madsci_trace_and_span_ids_that_are_not_otel_ids_read_back_as_sent(storage: Storage) -> None:
    """MADSci's ids are text: one that is not an OpenTelemetry id read back as null."""
    client = TestClient(create_app(storage))
    otel_trace, otel_span = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    cases = {
        "01JJ4S0WNGEF5FQAZG5KDGJRC1": ("workflow-run-7", "step-3"),
        "01JJ4S0WNGEF5FQAZG5KDGJRC2": (otel_trace, otel_span),
        "01JJ4S0WNGEF5FQAZG5KDGJRC3": ("not-hex", otel_span),  # a span of no trace is not a context
        "01JJ4S0WNGEF5FQAZG5KDGJRC4": (None, None),
    }
    for event_id, (trace, span) in cases.items():
        posted = client.post("/madsci/event", json={"_id": event_id, "trace_id": trace, "span_id": span})
        assert (posted.json()["trace_id"], posted.json()["span_id"]) == (trace, span), posted.text
        read = client.get(f"/madsci/event/{event_id}").json()
        assert (read["trace_id"], read["span_id"]) == (trace, span)
    [row] = storage.rows(
        f"SELECT TraceId, SpanId FROM {storage.names.logs} WHERE LogAttributes['lab.event.id'] = '01JJ4S0WNGEF5FQAZG5KDGJRC2'"
    )
    assert (row["TraceId"], row["SpanId"]) == (otel_trace, otel_span)  # an OTel context stays the record's
