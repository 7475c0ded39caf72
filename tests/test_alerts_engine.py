"""The alert engine against a real embedded store, driven by a clock the test moves: rules in SQL,
grouping, de-duplication, thresholds, silence detection, resolve, and restarts."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labtel.collector.alerts.delivery import Dispatcher
from labtel.collector.alerts.engine import AlertEngine
from labtel.collector.alerts.history import list_alerts
from labtel.collector.alerts.notifiers import build_notifier
from labtel.collector.storage.client import Storage
from tests.alerting import FakeClock, alerts_config, free_port, store_events
from tests.conftest import migrated_storage

MINUTE = 60.0
HOUR = 60 * MINUTE
NS = 1_000_000_000


@pytest.fixture(scope="module")
def shared_store(chdb_path: Path) -> Iterator[Storage]:
    """One migrated database for the module (migrating takes seconds); tests keep apart by
    exporter name, service and first-start watermark."""
    with migrated_storage(chdb_path) as store:
        yield store


@pytest.fixture
def storage(shared_store: Storage) -> Storage:
    return shared_store


@pytest.fixture
def fresh_storage(chdb_path: Path) -> Iterator[Storage]:
    """A database of its own: a restarted engine looks back past its checkpoint, where another
    test's flagged events (which always fire) could be."""
    with migrated_storage(chdb_path) as store:
        yield store


@pytest.fixture
def svc() -> str:
    """This test's own service name: its rules match only its own events."""
    return f"svc-{uuid.uuid4().hex[:8]}"


def engine_for(storage: Storage, clock: FakeClock, name: str = "alerts", **config: object) -> AlertEngine:
    values: dict[str, object] = {"notifiers": {"webhook/ops": {"url": "http://127.0.0.1:9/hook"}}, "group_wait": "30s"}
    values.update(config)
    engine = AlertEngine(name, alerts_config(**values), storage, clock)
    engine.load()
    return engine


def test_default_rule_groups_errors_and_flagged_events_into_one_alert(storage: Storage, svc: str) -> None:
    clock = FakeClock()
    engine = engine_for(storage, clock, svc)
    store_events(
        storage,
        [
            {
                "body": "tip rack empty",
                "severity": 17,
                "attributes": {"lab.node.id": "ot2_1", "lab.event.type": "node_error"},
            },
            {
                "body": "lid stuck",
                "severity": 17,
                "attributes": {"lab.node.id": "ot2_1", "lab.event.type": "node_error"},
            },
            {"body": "operator says look", "severity": 9, "attributes": {"lab.alert": True}},
            {"body": "MADSci alert", "severity": 9, "attributes": {"alert": "True"}},
            {"body": "routine", "severity": 13, "attributes": {"lab.node.id": "ot2_1"}},
        ],
        service=svc,
    )
    assert engine.evaluate().deliver == []  # grouped: nothing before group_wait
    states = {s["name"]: s for s in engine.rule_states()}
    assert states["default"]["state"] == "grouping"
    assert states["default"]["grouping"][0]["events"] == 4
    clock.advance(31)
    [alert] = engine.evaluate().deliver
    assert alert.rule == "default"
    assert alert.event_count == 4
    assert sorted(e.body for e in alert.events) == ["MADSci alert", "lid stuck", "operator says look", "tip rack empty"]
    assert alert.level == "ERROR"
    assert alert.notifiers == ["webhook/ops"]
    # Handled once: nothing more, however often it runs.
    clock.advance(31)
    assert engine.evaluate().deliver == []
    [row] = list_alerts(storage, exporter=svc)
    assert row["status"] == "pending"
    assert row["event_count"] == 4
    assert len(row["event_ids"]) == 4


def test_selector_rules_with_attributes_regex_and_min_severity(storage: Storage, svc: str) -> None:
    clock = FakeClock()
    engine = engine_for(
        storage,
        clock,
        svc,
        alert_level="off",
        group_wait="0s",
        rules=[
            {"name": "hot", "match": {"source.node_id": "incubator_1", "attributes.temperature": {"$gt": 40}}},
            {
                "name": "seal",
                "match": {"body": {"$regex": "seal(ing)? failed", "$options": "i"}},
                "min_severity": "WARN",
            },
        ],
    )
    store_events(
        storage,
        [
            {"body": "t", "attributes": {"lab.node.id": "incubator_1", "temperature": 41.5}},
            {"body": "t", "attributes": {"lab.node.id": "incubator_1", "temperature": 39}},
            {"body": "t", "attributes": {"lab.node.id": "incubator_2", "temperature": 45}},
            {"body": "Sealing FAILED on plate 3", "severity": 13},
            {"body": "sealing failed (info only)", "severity": 9},
        ],
        service=svc,
    )
    alerts = {a.rule: a for a in engine.evaluate().deliver}
    assert set(alerts) == {"hot", "seal"}
    assert [e.attributes["temperature"] for e in alerts["hot"].events] == ["41.5"]
    assert [e.body for e in alerts["seal"].events] == ["Sealing FAILED on plate 3"]


def test_de_duplication_within_the_repeat_interval(storage: Storage, svc: str) -> None:
    clock = FakeClock()
    engine = engine_for(storage, clock, svc, group_wait="0s", repeat_interval="1h", dedup_by=["node_id", "event_type"])
    error = {"severity": 17, "attributes": {"lab.node.id": "ot2_1", "lab.event.type": "node_error"}}
    store_events(storage, [{**error, "body": "first"}], service=svc)
    [first] = engine.evaluate().deliver
    assert first.dedup_keys == ["default|node_id=ot2_1,event_type=node_error"]

    clock.advance(10 * MINUTE)
    other_node = {"severity": 17, "attributes": {"lab.node.id": "ot2_2", "lab.event.type": "node_error"}}
    store_events(storage, [{**error, "body": "again"}, {**other_node, "body": "elsewhere"}], service=svc)
    [second] = engine.evaluate().deliver
    assert [e.body for e in second.events] == ["elsewhere"]  # the repeat of ot2_1 is suppressed
    suppressed = list_alerts(storage, exporter=svc, status="suppressed")
    assert [s["event_count"] for s in suppressed] == [1]
    assert suppressed[0]["events"][0]["body"] == "again"

    clock.advance(51 * MINUTE)  # the repeat interval has passed
    store_events(storage, [{**error, "body": "an hour later"}], service=svc)
    [third] = engine.evaluate().deliver
    assert [e.body for e in third.events] == ["an hour later"]


def test_group_by_node_makes_one_alert_per_node_per_window(storage: Storage, svc: str) -> None:
    clock = FakeClock()
    engine = engine_for(storage, clock, svc, group_by=["node_id"], dedup_by=["node_id"])
    store_events(
        storage,
        [{"body": f"e{i}", "severity": 17, "attributes": {"lab.node.id": f"n{i % 2}"}} for i in range(6)],
        service=svc,
    )
    engine.evaluate()
    clock.advance(31)
    alerts = engine.evaluate().deliver
    assert sorted((a.group_key, a.event_count) for a in alerts) == [("node_id=n0", 3), ("node_id=n1", 3)]


def aggregates_engine(storage: Storage, clock: FakeClock, svc: str, *rules: dict[str, Any]) -> AlertEngine:
    """An engine with only aggregate `rules` (the default rule off), evaluating them every second."""
    return engine_for(storage, clock, svc, alert_level="off", aggregate_interval="1s", rules=list(rules))


def error_burst(svc: str, count: int, within: str, name: str = "error_burst", **extra: Any) -> dict[str, Any]:
    """A threshold rule: more than `count` errors of `svc` within `within`."""
    return {
        "name": name,
        "match": {"service": svc, "log_level": {"$gte": 40}},
        "threshold": {"count": count, "within": within},
        **extra,
    }


def heartbeat_lost(svc: str, quiet_for: str, expect: str) -> dict[str, Any]:
    """A silence rule: no heartbeat of `svc` for `quiet_for` from a node, `expect` among them."""
    return {
        "name": "heartbeat_lost",
        "match": {"service": svc, "event_type": "heartbeat"},
        "silence": {"for": quiet_for, "expect": [expect]},
    }


def test_threshold_rule_fires_per_node_and_resolves(storage: Storage, svc: str) -> None:
    clock = FakeClock()
    engine = aggregates_engine(storage, clock, svc, error_burst(svc, 3, "5m", group_by=["node_id"]))
    now_ns = int(clock() * NS)
    store_events(
        storage,
        [
            *(
                {"severity": 17, "time_ns": now_ns - (i + 1) * NS, "attributes": {"lab.node.id": "ot2_1"}}
                for i in range(4)
            ),
            *(
                {"severity": 17, "time_ns": now_ns - (i + 1) * NS, "attributes": {"lab.node.id": "ot2_2"}}
                for i in range(3)
            ),
        ],
        service=svc,
    )
    [fired] = engine.evaluate().deliver
    assert (fired.kind, fired.group_key, fired.value) == ("firing", "node_id=ot2_1", 4.0)
    assert len(fired.events) == 4
    clock.advance(2)
    assert engine.evaluate().deliver == []  # still over: no repeat within the repeat interval
    [state] = [s for s in engine.rule_states() if s["name"] == "error_burst"]
    assert state["state"] == "firing"
    assert state["firing"][0]["key"] == "node_id=ot2_1"

    clock.advance(5 * MINUTE)  # the errors leave the window
    [resolved] = engine.evaluate().deliver
    assert (resolved.kind, resolved.group_key) == ("resolved", "node_id=ot2_1")
    assert "at most 3 events" in resolved.summary


def test_silence_detection_fires_for_quiet_and_expected_nodes_and_resolves(storage: Storage, svc: str) -> None:
    clock = FakeClock(time.time() - HOUR)  # behind insert times: the events it stamps are not ahead
    engine = engine_for(
        storage,
        clock,
        svc,
        alert_level="off",
        aggregate_interval="1s",
        rules=[
            {
                "name": "heartbeat_lost",
                "match": {"service": svc, "event_type": "heartbeat"},
                "silence": {"for": "10m", "expect": ["never_seen"]},
            }
        ],
    )
    now_ns = int(clock() * NS)
    beat = {"lab.event.type": "heartbeat"}
    store_events(
        storage,
        [
            {"time_ns": now_ns - 60 * NS, "attributes": {**beat, "lab.node.id": "ot2_1"}},
            {"time_ns": now_ns - 30 * 60 * NS, "attributes": {**beat, "lab.node.id": "robot_arm"}},
        ],
        service=svc,
    )
    assert engine.evaluate().deliver == []  # watched for less than 10m: no silence heard yet
    clock.advance(9 * MINUTE)
    assert engine.evaluate().deliver == []
    store_events(storage, [{"time_ns": int(clock() * NS), "attributes": {**beat, "lab.node.id": "ot2_1"}}], service=svc)
    clock.advance(MINUTE)
    fired = {a.group_key: a for a in engine.evaluate().deliver}
    assert set(fired) == {"node_id=robot_arm", "node_id=never_seen"}
    assert "last seen 10m ago" in fired["node_id=robot_arm"].summary  # heard when it arrived, not 40m ago
    assert fired["node_id=robot_arm"].events[0].node_id == "robot_arm"
    assert "nothing seen" in fired["node_id=never_seen"].summary

    clock.advance(10 * MINUTE)  # ot2_1 is now quiet too: the engine heard its beat at the last evaluation
    [quiet] = engine.evaluate().deliver
    assert quiet.group_key == "node_id=ot2_1"

    store_events(
        storage, [{"time_ns": int(clock() * NS), "attributes": {**beat, "lab.node.id": "robot_arm"}}], service=svc
    )
    clock.advance(1)
    [back] = engine.evaluate().deliver
    assert (back.kind, back.group_key) == ("resolved", "node_id=robot_arm")
    assert back.notifiers == ["webhook/ops"]


def test_a_node_whose_clock_runs_ahead_is_heard_when_its_events_arrive(storage: Storage, svc: str) -> None:
    """Events stamped in the future count from their arrival: a heartbeat of a node whose clock
    is ten minutes fast is heard (it was ignored, so the node was 'silent'), and a burst of its
    errors is counted at once (it was counted only once its timestamps came, and for too long)."""
    clock = FakeClock(time.time() - 4 * MINUTE)  # the engine watches from four minutes ago
    engine = aggregates_engine(
        storage,
        clock,
        svc,
        heartbeat_lost(svc, "5m", "fast_clock"),
        error_burst(svc, 2, "1m", group_by=["node_id"]),
    )
    ahead_ns = time.time_ns() + int(10 * MINUTE * NS)
    node = {"lab.node.id": "fast_clock"}
    store_events(
        storage,
        [
            {"time_ns": ahead_ns, "attributes": {**node, "lab.event.type": "heartbeat"}},
            *({"severity": 17, "time_ns": ahead_ns + i, "attributes": node} for i in range(3)),
        ],
        service=svc,
    )
    clock.advance(4 * MINUTE + 5)  # just after they arrived
    [burst] = engine.evaluate().deliver
    assert (burst.rule, burst.kind, burst.value) == ("error_burst", "firing", 3.0)
    clock.advance(2 * MINUTE)  # watched for over 5m; the heartbeat arrived 2m ago
    [resolved] = engine.evaluate().deliver
    assert (resolved.rule, resolved.kind) == ("error_burst", "resolved")
    clock.advance(3 * MINUTE)  # five minutes after the heartbeat arrived
    [quiet] = engine.evaluate().deliver
    assert (quiet.rule, quiet.group_key) == ("heartbeat_lost", "node_id=fast_clock")
    assert "last seen" in quiet.summary
    assert quiet.value is not None
    assert 5 * MINUTE <= quiet.value < 6 * MINUTE


def test_a_node_whose_clock_runs_slow_is_heard_when_its_events_arrive(storage: Storage, svc: str) -> None:
    """Silence counts arrivals: heartbeats stamped half an hour behind keep a node heard while they
    come (it read as silent, its last event 30m old), and it is silent `for` after the last came."""
    clock = FakeClock()
    engine = aggregates_engine(
        storage,
        clock,
        svc,
        heartbeat_lost(svc, "5m", "slow_clock"),
    )
    beat = {"lab.event.type": "heartbeat", "lab.node.id": "slow_clock"}
    for _ in range(3):
        store_events(storage, [{"time_ns": int((clock() - 30 * MINUTE) * NS), "attributes": beat}], service=svc)
        assert engine.evaluate().deliver == []
        clock.advance(4 * MINUTE)
    clock.advance(MINUTE)  # watched for 13m; the last heartbeat arrived 5m ago
    [quiet] = engine.evaluate().deliver
    assert (quiet.group_key, quiet.kind) == ("node_id=slow_clock", "firing")
    assert "last seen 5m ago" in quiet.summary
    assert quiet.value is not None
    assert 5 * MINUTE <= quiet.value < 5 * MINUTE + 5


def test_a_late_burst_is_counted_where_its_times_fall_once(storage: Storage, svc: str) -> None:
    """Errors that arrive long after their time (a node's spool sent after an outage) fire a
    threshold rule when more than `count` of them fall within `within`, also with earlier events
    they join, once; late errors spread wider than `within` do not fire."""
    clock = FakeClock()
    engine = aggregates_engine(storage, clock, svc, error_burst(svc, 3, "1m", group_by=["node_id"]))
    on_time_ns = int(clock() * NS)
    joined = {"lab.node.id": "joined"}
    store_events(
        storage, [{"severity": 17, "time_ns": on_time_ns - i * NS, "attributes": joined} for i in range(3)], svc
    )
    assert engine.evaluate().deliver == []  # three within the minute: not more than three
    clock.advance(20 * MINUTE)
    stamped_ns = int((clock() - 15 * MINUTE) * NS)
    store_events(
        storage,
        [
            *(
                {"severity": 17, "time_ns": stamped_ns + i * NS, "attributes": {"lab.node.id": "spooled"}}
                for i in range(5)
            ),
            *(
                {
                    "severity": 17,
                    "time_ns": stamped_ns - i * 5 * int(MINUTE * NS),
                    "attributes": {"lab.node.id": "spread"},
                }
                for i in range(5)
            ),
            {"severity": 17, "time_ns": on_time_ns - 30 * NS, "attributes": joined},
        ],
        svc,
    )
    clock.advance(1)
    fired = {a.group_key: a for a in engine.evaluate().deliver}
    assert set(fired) == {"node_id=spooled", "node_id=joined"}
    spooled, late_one = fired["node_id=spooled"], fired["node_id=joined"]
    assert (spooled.kind, spooled.value, len(spooled.events)) == ("firing", 5.0, 5)
    assert "arrived late" in spooled.summary
    assert {e.node_id for e in spooled.events} == {"spooled"}
    assert (late_one.value, len(late_one.events)) == (4.0, 4)
    clock.advance(1)
    resolved = engine.evaluate().deliver  # nothing within the last minute
    assert sorted((a.kind, a.group_key) for a in resolved) == [
        ("resolved", "node_id=joined"),
        ("resolved", "node_id=spooled"),
    ]
    for _ in range(3):  # looked at again within `lookback`: not new, no second alert
        clock.advance(1)
        assert engine.evaluate().deliver == []


def test_threshold_counts_more_than_count_inside_the_window(storage: Storage, svc: str) -> None:
    """Exactly `count` events do not fire, one more does; an event just outside `within` is not counted."""
    clock = FakeClock()
    engine = aggregates_engine(storage, clock, svc, error_burst(svc, 3, "1m", name="burst"))
    now_ns = int(clock() * NS)
    errors = [{"severity": 17, "time_ns": now_ns - i * NS} for i in range(3)]
    store_events(storage, [*errors, {"severity": 17, "time_ns": now_ns - 61 * NS}], service=svc)
    assert engine.evaluate().deliver == []  # three within the minute, the fourth outside it
    store_events(storage, [{"severity": 17, "time_ns": now_ns - 30 * NS}], service=svc)  # late, inside
    clock.advance(1)
    [fired] = engine.evaluate().deliver
    assert (fired.kind, fired.value) == ("firing", 4.0)


def test_a_restart_neither_loses_nor_repeats_alerts(fresh_storage: Storage, svc: str) -> None:
    storage = fresh_storage
    clock = FakeClock()
    own_errors = {
        "alert_level": "off",
        "rules": [{"name": "errors", "match": {"service": svc}, "min_severity": "ERROR", "dedup_by": ["body"]}],
    }
    first = engine_for(storage, clock, svc, group_wait="30s", lookback="10s", **own_errors)
    store_events(storage, [{"body": "before", "severity": 17}], service=svc)
    first.evaluate()
    clock.advance(31)
    [sent] = first.evaluate().deliver
    assert [e.body for e in sent.events] == ["before"]
    store_events(storage, [{"body": "waiting in a group", "severity": 17}], service=svc)
    assert first.evaluate().deliver == []  # in an open group when the collector stops

    restarted = engine_for(storage, clock, svc, group_wait="30s", lookback="10s", **own_errors)
    assert restarted.evaluate().deliver == []
    clock.advance(31)
    [again] = restarted.evaluate().deliver
    assert [e.body for e in again.events] == ["waiting in a group"]  # not lost; "before" not repeated
    pending = restarted.history.pending()
    assert {a.alert_id for a, _ in pending} == {sent.alert_id, again.alert_id}  # deliveries resume after a restart


def test_an_aggregate_still_firing_after_a_restart_resolves_once(storage: Storage, svc: str) -> None:
    clock = FakeClock(time.time() - HOUR)  # behind insert times: the events it stamps are not ahead
    rules = [
        {
            "name": "quiet",
            "match": {"service": svc, "event_type": "heartbeat"},
            "silence": {"for": "5m", "expect": ["n1"]},
        }
    ]
    first = engine_for(storage, clock, svc, alert_level="off", rules=rules, repeat_interval="2m")
    clock.advance(5 * MINUTE)
    [fired] = first.evaluate().deliver
    assert fired.group_key == "node_id=n1"
    clock.advance(3 * MINUTE)
    [still] = first.evaluate().deliver
    assert still.summary.startswith("still: ")

    restarted = engine_for(
        storage, clock, svc, alert_level="off", rules=rules, aggregate_interval="1s", repeat_interval="2m"
    )
    clock.advance(2)
    assert restarted.evaluate().deliver == []  # already known to be firing
    store_events(
        storage,
        [{"time_ns": int(clock() * NS), "attributes": {"lab.event.type": "heartbeat", "lab.node.id": "n1"}}],
        service=svc,
    )
    clock.advance(2)
    [resolved] = restarted.evaluate().deliver
    assert (resolved.kind, resolved.group_key) == ("resolved", "node_id=n1")
    assert "(firing for 184s)" in resolved.summary  # since it fired, not since the restart


async def test_an_alert_no_notifier_delivered_suppresses_nothing(fresh_storage: Storage, svc: str) -> None:
    storage = fresh_storage
    clock = FakeClock()
    refused = {"webhook/ops": {"url": f"http://127.0.0.1:{free_port()}/hook", "retry": {"max_attempts": 1}}}
    settings: dict[str, object] = {"group_wait": "0s", "repeat_interval": "1h", "notifiers": refused}
    engine = engine_for(storage, clock, svc, **settings)
    notifiers = {name: build_notifier(name, c) for name, c in engine.config.notifiers.items()}
    sender = Dispatcher(svc, notifiers, engine.history, storage, lambda: "", clock, undelivered=engine.undelivered)
    error = {"severity": 17, "attributes": {"lab.node.id": "ot2_1", "lab.event.type": "node_error"}}

    store_events(storage, [{**error, "body": "first"}], service=svc)
    [first] = engine.evaluate().deliver
    [failed] = await sender.deliver(first)
    assert failed.status == "failed"
    clock.advance(MINUTE)
    store_events(storage, [{**error, "body": "second"}], service=svc)
    [second] = engine.evaluate().deliver  # the key was never notified: not suppressed
    assert [e.body for e in second.events] == ["second"]
    await sender.deliver(second)

    clock.advance(MINUTE)
    restarted = engine_for(storage, clock, svc, **settings)  # the history says the same after a restart
    store_events(storage, [{**error, "body": "third"}], service=svc)
    [third] = restarted.evaluate().deliver
    assert [e.body for e in third.events] == ["third"]
    assert list_alerts(storage, exporter=svc, status="suppressed") == []


def test_labtel_s_own_delivery_failures_reach_only_rules_that_name_them(storage: Storage, svc: str) -> None:
    clock = FakeClock()
    rules = [
        {"name": "errors", "min_severity": "ERROR"},
        {"name": "burst", "match": {"log_level": {"$gte": 40}}, "threshold": {"count": 0}, "group_by": ["service"]},
        {"name": "own_failures", "match": {"event_type": "alert_delivery_failed"}},
    ]
    engine = engine_for(storage, clock, svc, group_wait="0s", alert_level="off", rules=rules)
    now = time.time_ns() - NS  # before the engine's clock
    failure = {
        "body": "not delivered",
        "severity": 17,
        "time_ns": now,
        "attributes": {"lab.event.type": "alert_delivery_failed"},
    }
    store_events(storage, [failure], service="labtel-alerts")
    store_events(storage, [{"body": "pump stalled", "severity": 17, "time_ns": now}], service=svc)
    alerts = engine.evaluate().deliver
    by_rule = {alert.rule: alert for alert in alerts if alert.rule != "burst"}
    assert [e.body for e in by_rule["errors"].events] == ["pump stalled"]
    assert [e.body for e in by_rule["own_failures"].events] == ["not delivered"]
    bursts = [alert.group_key for alert in alerts if alert.rule == "burst"]
    assert f"service={svc}" in bursts
    assert "service=labtel-alerts" not in bursts
