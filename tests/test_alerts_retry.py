"""Threshold and silence alerts that no notifier delivered are made again at a later evaluation,
well before `repeat_interval`, with a bounded back-off, also after a restart; and so are resolved
notices. Against real servers: aiosmtpd for email, an HTTP server for webhooks (a port nothing
listens on is a server that is down), real embedded storage, and the engine's clock moved by the test."""

from __future__ import annotations

import asyncio
import email
import time
import uuid
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest

from labtel.collector.alerts.delivery import Dispatcher
from labtel.collector.alerts.engine import AlertEngine
from labtel.collector.alerts.history import iso_time, list_alerts
from labtel.collector.alerts.notifiers import build_notifier
from labtel.collector.exporters.alerts import AlertsExporter
from labtel.collector.storage.client import Storage
from tests.alerting import FakeClock, alerts_config, free_port, smtp_receiver, store_events, webhook_receiver
from tests.conftest import migrated_storage

MINUTE = 60.0
NS = 1_000_000_000


@pytest.fixture(scope="module")
def storage(chdb_path: Path) -> Iterator[Storage]:
    """One migrated database for the module; tests keep apart by exporter name and service."""
    with migrated_storage(chdb_path) as store:
        yield store


@pytest.fixture
def svc() -> str:
    """This test's own service name (and exporter name): its rules match only its own events."""
    return f"svc-{uuid.uuid4().hex[:8]}"


class Sleeps:
    """The dispatcher's back-off between attempts, recorded instead of waited."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def webhook(url: str, max_attempts: int = 1, max_interval: str = "8s") -> dict[str, Any]:
    retry = {"max_attempts": max_attempts, "initial_interval": "2s", "max_interval": max_interval}
    return {"webhook/ops": {"url": url, "retry": retry}}


def email_to(port: int) -> dict[str, Any]:
    return {
        "email/oncall": {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "from": "labtel@lab.example",
            "to": ["oncall@lab.example"],
            "timeout": "5s",
            "retry": {"max_attempts": 2, "initial_interval": "1s", "max_interval": "4s"},
        }
    }


def burst_rule(svc: str) -> dict[str, Any]:
    """More than 2 errors of the test's service within 2 hours (the errors stay in the window)."""
    return {"name": "burst", "match": {"service": svc}, "threshold": {"count": 2, "within": "2h"}}


def engine_for(storage: Storage, clock: FakeClock, name: str, **config: Any) -> AlertEngine:
    values: dict[str, Any] = {"alert_level": "off", "aggregate_interval": "1s", "repeat_interval": "1h"}
    values.update(config)
    engine = AlertEngine(name, alerts_config(**values), storage, clock)
    engine.load()
    return engine


def sender_for(engine: AlertEngine, clock: FakeClock, sleeps: Sleeps | None = None) -> Dispatcher:
    """The dispatcher the alerts exporter wires to the engine: it tells it what it could not deliver."""
    notifiers = {name: build_notifier(name, c) for name, c in engine.config.notifiers.items()}
    return Dispatcher(
        engine.name,
        notifiers,
        engine.history,
        engine.storage,
        lambda: "",
        clock,
        sleep=sleeps or Sleeps(),
        undelivered=engine.undelivered,
    )


def store_errors(storage: Storage, svc: str, clock: FakeClock, count: int = 3) -> None:
    now_ns = int(clock() * NS)
    store_events(storage, [{"severity": 17, "time_ns": now_ns - (i + 1) * NS} for i in range(count)], service=svc)


def retry_at(engine: AlertEngine, rule: str) -> str | None:
    [state] = [s for s in engine.rule_states() if s["name"] == rule]
    [firing] = state["firing"]
    return firing["retry_at"]  # type: ignore[no-any-return]


def statuses(storage: Storage, svc: str) -> list[tuple[str, str]]:
    """(kind, status) of the exporter's alerts, oldest first."""
    return [(a["kind"], a["status"]) for a in reversed(list_alerts(storage, exporter=svc))]


async def test_a_threshold_alert_a_webhook_refused_is_delivered_at_the_next_due_evaluation(
    storage: Storage, svc: str
) -> None:
    clock = FakeClock()
    with webhook_receiver(responses=[500]) as hook:
        engine = engine_for(storage, clock, svc, rules=[burst_rule(svc)], notifiers=webhook(hook.url))
        sender = sender_for(engine, clock)
        store_errors(storage, svc, clock)
        [fired] = engine.evaluate().deliver
        [refused] = await sender.deliver(fired)
        assert (refused.status, refused.attempts) == ("failed", 1)
        assert retry_at(engine, "burst") == iso_time(clock() + 2)  # the notifier's initial_interval

        clock.advance(1)
        assert engine.evaluate().deliver == []  # the back-off has not passed
        clock.advance(1)
        [again] = engine.evaluate().deliver  # 2s later, not 1h
        assert again.alert_id != fired.alert_id
        assert again.summary == fired.summary  # nobody heard of it yet: no "still:"
        assert again.value == 3.0
        [delivered] = await sender.deliver(again)
        assert delivered.status == "delivered"
        assert [r.body["alert_id"] for r in hook.received] == [fired.alert_id, again.alert_id]
        assert retry_at(engine, "burst") is None

        clock.advance(30 * MINUTE)
        assert engine.evaluate().deliver == []  # delivered: not repeated within repeat_interval
        clock.advance(31 * MINUTE)
        [repeat] = engine.evaluate().deliver
        assert repeat.summary == f"still: {fired.summary}"
    history = list_alerts(storage, exporter=svc)
    assert [(a["status"], [d["status"] for d in a["deliveries"]]) for a in reversed(history)] == [
        ("failed", ["failed"]),
        ("delivered", ["delivered"]),
        ("pending", []),
    ]


async def test_a_silence_alert_is_emailed_once_the_smtp_server_is_back(storage: Storage, svc: str) -> None:
    clock = FakeClock()
    port = free_port()  # the SMTP server is down
    rules = [
        {
            "name": "quiet",
            "match": {"service": svc, "event_type": "heartbeat"},
            "silence": {"for": "5m", "expect": ["n1"]},
        }
    ]
    engine = engine_for(storage, clock, svc, rules=rules, notifiers=email_to(port))
    sleeps = Sleeps()
    sender = sender_for(engine, clock, sleeps)
    clock.advance(5 * MINUTE)
    [fired] = engine.evaluate().deliver
    assert (fired.rule_type, fired.group_key) == ("silence", "node_id=n1")
    [refused] = await sender.deliver(fired)
    assert (refused.status, refused.attempts, sleeps.delays) == ("failed", 2, [1.0])
    assert retry_at(engine, "quiet") == iso_time(clock() + 2)  # the delivery's back-off, continued

    with smtp_receiver(port=port) as smtp:
        clock.advance(2)
        [again] = engine.evaluate().deliver
        assert again.summary == fired.summary
        [delivered] = await sender.deliver(again)
        assert delivered.status == "delivered"
        [envelope] = smtp.wait(1)
        message = email.message_from_bytes(envelope.content, policy=policy.default)
        assert message["X-Labtel-Alert-ID"] == again.alert_id
        assert message["Subject"].startswith("ALERT (WARN): quiet")

        clock.advance(59 * MINUTE)
        assert engine.evaluate().deliver == []  # not repeated within repeat_interval
        assert len(smtp.envelopes) == 1
    assert statuses(storage, svc) == [("firing", "failed"), ("firing", "delivered")]


@pytest.mark.parametrize(
    ("max_attempts", "repeat_interval", "delays"),
    [
        (1, "1h", [2.0, 4.0, 8.0, 8.0]),  # initial_interval doubling, at most max_interval
        (2, "1h", [4.0, 8.0, 8.0]),  # continued past the attempts each delivery made
        (1, "5s", [2.0, 4.0, 5.0]),  # never longer than repeat_interval
    ],
)
async def test_retries_back_off_and_are_bounded(
    storage: Storage, svc: str, max_attempts: int, repeat_interval: str, delays: list[float]
) -> None:
    clock = FakeClock()
    down = f"http://127.0.0.1:{free_port()}/hook"
    engine = engine_for(
        storage,
        clock,
        svc,
        rules=[burst_rule(svc)],
        notifiers=webhook(down, max_attempts),
        repeat_interval=repeat_interval,
    )
    sender = sender_for(engine, clock)
    store_errors(storage, svc, clock)
    waited: list[float] = []
    for _ in delays:
        [alert] = engine.evaluate().deliver
        [refused] = await sender.deliver(alert)
        assert (refused.status, refused.attempts) == ("failed", max_attempts)
        due = retry_at(engine, "burst")
        assert due is not None
        step = 0.0
        while iso_time(clock()) < due:  # evaluations in between make nothing
            assert engine.evaluate().deliver == []
            clock.advance(1)
            step += 1
        waited.append(step)
    assert waited == delays


async def test_a_firing_alert_not_delivered_before_a_restart_is_sent_after_it(storage: Storage, svc: str) -> None:
    clock = FakeClock()
    down = f"http://127.0.0.1:{free_port()}/hook"
    first = engine_for(storage, clock, svc, rules=[burst_rule(svc)], notifiers=webhook(down))
    store_errors(storage, svc, clock)
    [fired] = first.evaluate().deliver
    [refused] = await sender_for(first, clock).deliver(fired)
    assert refused.status == "failed"

    clock.advance(1)
    with webhook_receiver() as hook:  # the collector restarts, and the webhook is reachable
        restarted = engine_for(storage, clock, svc, rules=[burst_rule(svc)], notifiers=webhook(hook.url))
        assert retry_at(restarted, "burst") == iso_time(clock())  # read back from the history
        [again] = restarted.evaluate().deliver
        assert again.summary == fired.summary
        [delivered] = await sender_for(restarted, clock).deliver(again)
        assert delivered.status == "delivered"
        assert [r.body["alert_id"] for r in hook.received] == [again.alert_id]

        clock.advance(10 * MINUTE)
        again_restarted = engine_for(storage, clock, svc, rules=[burst_rule(svc)], notifiers=webhook(hook.url))
        assert again_restarted.evaluate().deliver == []  # delivered before this restart: repeat_interval holds
    assert statuses(storage, svc) == [("firing", "failed"), ("firing", "delivered")]


async def test_a_resolved_notice_not_delivered_is_sent_again_also_after_a_restart(storage: Storage, svc: str) -> None:
    clock = FakeClock()
    rule = {**burst_rule(svc), "threshold": {"count": 2, "within": "5m"}}
    with webhook_receiver(responses=[200, 500, 500]) as hook:
        engine = engine_for(storage, clock, svc, rules=[rule], notifiers=webhook(hook.url))
        sender = sender_for(engine, clock)
        store_errors(storage, svc, clock)
        [fired] = engine.evaluate().deliver
        assert (await sender.deliver(fired))[0].status == "delivered"

        clock.advance(5 * MINUTE)  # the errors leave the window
        [resolved] = engine.evaluate().deliver
        assert resolved.kind == "resolved"
        assert (await sender.deliver(resolved))[0].status == "failed"
        clock.advance(1)
        assert engine.evaluate().deliver == []
        clock.advance(1)
        [again] = engine.evaluate().deliver
        assert (again.kind, again.summary) == ("resolved", resolved.summary)
        assert again.alert_id != resolved.alert_id
        assert (await sender.deliver(again))[0].status == "failed"

        clock.advance(1)
        restarted = engine_for(storage, clock, svc, rules=[rule], notifiers=webhook(hook.url))
        [third] = restarted.evaluate().deliver  # at once: the history says it never got through
        assert (third.kind, third.summary) == ("resolved", resolved.summary)
        assert (await sender_for(restarted, clock).deliver(third))[0].status == "delivered"
        for _ in range(3):
            clock.advance(MINUTE)
            assert restarted.evaluate().deliver == []  # delivered: once
        assert [r.body["kind"] for r in hook.received] == ["firing", "resolved", "resolved", "resolved"]
    assert statuses(storage, svc) == [
        ("firing", "delivered"),
        ("resolved", "failed"),
        ("resolved", "failed"),
        ("resolved", "delivered"),
    ]


async def test_a_group_firing_again_drops_its_undelivered_resolved_notice(storage: Storage, svc: str) -> None:
    clock = FakeClock(time.time() - 60 * MINUTE)  # behind insert times: the errors it stamps are not ahead
    rule = {**burst_rule(svc), "threshold": {"count": 2, "within": "5m"}}
    with webhook_receiver(responses=[200, 500]) as hook:
        engine = engine_for(storage, clock, svc, rules=[rule], notifiers=webhook(hook.url))
        sender = sender_for(engine, clock)
        store_errors(storage, svc, clock)
        await sender.deliver(engine.evaluate().deliver[0])
        clock.advance(5 * MINUTE)
        [resolved] = engine.evaluate().deliver
        assert (await sender.deliver(resolved))[0].status == "failed"
        store_errors(storage, svc, clock)  # over the threshold again before the retry
        clock.advance(2)
        [fired] = engine.evaluate().deliver
        assert (fired.kind, fired.summary.startswith("still")) == ("firing", False)
        clock.advance(MINUTE)
        assert engine.evaluate().deliver == []  # no stale resolved notice


async def test_the_alerts_exporter_delivers_a_refused_threshold_alert_within_a_second(
    storage: Storage, svc: str
) -> None:
    """The real exporter on real time: engine and dispatcher wired as `labtel serve` wires them."""
    store_errors(storage, svc, FakeClock())
    with webhook_receiver(responses=[500]) as hook:
        config = alerts_config(
            alert_level="off",
            interval="100ms",
            aggregate_interval="200ms",
            repeat_interval="1h",
            rules=[burst_rule(svc)],
            notifiers={"webhook/ops": {"url": hook.url, "retry": {"max_attempts": 1, "initial_interval": "100ms"}}},
        )
        exporter = AlertsExporter(svc, config, storage)
        await exporter.start()
        try:
            started = time.monotonic()
            while len(hook.received) < 2 and time.monotonic() - started < 10:
                await asyncio.sleep(0.05)
            took = time.monotonic() - started
            await asyncio.sleep(1.0)  # delivered: nothing more within repeat_interval
        finally:
            await exporter.shutdown()
    assert len(hook.received) == 2, hook.received
    assert took < 5
    first, second = (r.body for r in hook.received)
    assert first["alert_id"] != second["alert_id"]
    assert second["summary"] == first["summary"]
    assert statuses(storage, svc) == [("firing", "failed"), ("firing", "delivered")]
