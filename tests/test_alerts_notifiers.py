"""Notifiers and delivery against real servers: email through aiosmtpd, webhooks through an HTTP
server (labtel, Slack and Teams payloads, retries after a 500), rate limits on a clock the test
moves, back-off without sleeping, and failed deliveries stored as events."""

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

from labtel.collector.alerts.config import AlertsExporterConfig
from labtel.collector.alerts.delivery import Dispatcher
from labtel.collector.alerts.history import History, list_alerts
from labtel.collector.alerts.model import Alert, EventBrief
from labtel.collector.alerts.notifiers import build_notifier
from labtel.collector.alerts.webhook import teams_payload
from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage
from tests.alerting import FakeClock, alerts_config, free_port, smtp_receiver, webhook_receiver
from tests.conftest import make_storage

BASE_URL = "http://labtel.example:8000"


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Storage]:
    storage = make_storage(chdb_path)
    migrations.migrate(storage)
    yield storage
    storage.command(f"DROP DATABASE IF EXISTS `{storage.names.database}`")
    storage.close()


def event(body: str = "Tip rack empty", node: str = "ot2_1", event_type: str = "node_error") -> EventBrief:
    return EventBrief(
        event_id=str(uuid.uuid4()),
        timestamp="2026-11-24T01:17:27.994821888Z",
        time_unix_nano=1795483047994821888,
        inserted_ms=1795483048000,
        severity_text="ERROR",
        severity_number=17,
        service_name="ot2-driver",
        event_type=event_type,
        node_id=node,
        body=body,
        attributes={"lab.node.id": node, "lab.event.type": event_type},
    )


def alert(notifiers: list[str], events: list[EventBrief] | None = None, exporter: str = "alerts") -> Alert:
    listed = events if events is not None else [event()]
    return Alert(
        alert_id=str(uuid.uuid4()),
        exporter=exporter,
        kind="firing",
        rule="pipette_errors",
        rule_type="event",
        level="ERROR",
        group_key="node_id=ot2_1",
        fired_at=1795483050.0,
        summary=f"{len(listed)} events matched rule 'pipette_errors' (node_id=ot2_1)",
        notifiers=notifiers,
        events=listed,
        event_ids=[e.event_id for e in listed],
        event_count=len(listed),
    )


class Sleeps:
    """Back-off without waiting: records each delay the dispatcher asks for."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def dispatcher(
    config: AlertsExporterConfig, store: Storage, clock: FakeClock, sleeps: Sleeps, exporter: str
) -> Dispatcher:
    notifiers = {name: build_notifier(name, cfg) for name, cfg in config.notifiers.items()}
    return Dispatcher(exporter, notifiers, History(store, exporter), store, lambda: BASE_URL, clock=clock, sleep=sleeps)


async def test_email_reaches_an_smtp_server_with_recipients_subject_body_and_links(store: Storage) -> None:
    exporter = f"mail-{uuid.uuid4().hex[:6]}"
    with smtp_receiver() as smtp:
        config = alerts_config(
            notifiers={
                "email/oncall": {
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "security": "none",
                    "from": "labtel@lab.example",
                    "to": ["oncall@lab.example", "pi@lab.example"],
                    "cc": ["archive@lab.example"],
                }
            }
        )
        sent = alert(["email/oncall"], [event(), event("Lid stuck", event_type="node_error")], exporter=exporter)
        [delivery] = await dispatcher(config, store, FakeClock(), Sleeps(), exporter).deliver(sent)
        assert (delivery.status, delivery.attempts) == ("delivered", 1)
        [envelope] = smtp.wait(1)
    assert envelope.mail_from == "labtel@lab.example"
    assert envelope.rcpt_tos == ["oncall@lab.example", "pi@lab.example", "archive@lab.example"]
    message = email.message_from_bytes(envelope.content, policy=policy.default)
    assert message["Subject"] == "ALERT (ERROR): node_error (2 events)"
    assert message["To"] == "oncall@lab.example, pi@lab.example"
    assert message["X-MADSci-Event-ID"] == sent.events[0].event_id
    assert message["X-Labtel-Alert-ID"] == sent.alert_id
    body = message.get_content()
    assert "2 events matched rule 'pipette_errors' (node_id=ot2_1)" in body
    assert "Tip rack empty" in body
    assert "Lid stuck" in body
    assert f"{BASE_URL}/events/{sent.events[0].event_id}" in body
    assert f"{BASE_URL}/alerts?rule=pipette_errors" in body
    assert f'"event_id": "{sent.events[0].event_id}"' in body  # MADSci: the event as JSON
    [row] = list_alerts(store, exporter=exporter)
    assert row["status"] == "delivered"
    assert row["deliveries"][0]["notifier"] == "email/oncall"


async def test_email_templates_use_event_fields(store: Storage) -> None:
    exporter = f"tmpl-{uuid.uuid4().hex[:6]}"
    with smtp_receiver() as smtp:
        config = alerts_config(
            notifiers={
                "email": {
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "security": "none",
                    "from": "labtel@lab.example",
                    "to": ["oncall@lab.example"],
                    "subject": "[{node_id}] {event_type}: {body}",
                    "body": "See {link}\n{events}",
                }
            }
        )
        sent = alert(["email"], exporter=exporter)
        await dispatcher(config, store, FakeClock(), Sleeps(), exporter).deliver(sent)
        [envelope] = smtp.wait(1)
    message = email.message_from_bytes(envelope.content, policy=policy.default)
    assert message["Subject"] == "[ot2_1] node_error: Tip rack empty"
    assert (
        message.get_content()
        .replace("\r\n", "\n")
        .startswith(f"See {BASE_URL}/events/{sent.events[0].event_id}\n- 2026-11-24T01:17:27")
    )


def test_unknown_template_fields_are_configuration_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown template field \{secret\}"):
        alerts_config(notifiers={"webhook": {"url": "http://x/", "subject": "{secret}"}})
    with pytest.raises(ValueError, match="unknown template field"):
        alerts_config(notifiers={"webhook": {"url": "http://x/", "body": "{body.__class__}"}})


async def test_slack_webhook_is_retried_after_a_500_with_back_off(store: Storage) -> None:
    exporter = f"slack-{uuid.uuid4().hex[:6]}"
    sleeps = Sleeps()
    with webhook_receiver(responses=[500, 503]) as hook:
        config = alerts_config(
            notifiers={
                "webhook/slack": {
                    "url": hook.url,
                    "format": "slack",
                    "headers": {"Authorization": "Bearer t0ken"},
                    "retry": {"max_attempts": 5, "initial_interval": "2s", "max_interval": "3s"},
                }
            }
        )
        sent = alert(["webhook/slack"], exporter=exporter)
        [delivery] = await dispatcher(config, store, FakeClock(), sleeps, exporter).deliver(sent)
        received = hook.wait(3)
    assert (delivery.status, delivery.attempts) == ("delivered", 3)
    assert sleeps.delays == [2.0, 3.0]  # doubling, capped at max_interval
    payload = received[-1].body
    assert received[-1].headers["Authorization"] == "Bearer t0ken"
    assert payload["text"] == "ALERT (ERROR): node_error"
    assert [b["type"] for b in payload["blocks"]] == ["header", "section", "section", "context"]
    assert (
        f"<{BASE_URL}/events/{sent.events[0].event_id}|ERROR node_error ot2_1: Tip rack empty>"
        in (payload["blocks"][2]["text"]["text"])
    )
    [row] = list_alerts(store, exporter=exporter)
    assert row["status"] == "delivered"
    assert row["deliveries"][0]["attempts"] == 3


async def test_a_webhook_s_retry_after_is_waited_for_and_one_not_in_seconds_is_ignored(store: Storage) -> None:
    """Retry-After in seconds lengthens the back-off (up to `max_interval`); "\u00b2" (which
    str.isdigit takes and float() refuses) was an error in the delivery instead of a retry."""
    exporter = f"retry-after-{uuid.uuid4().hex[:6]}"
    sleeps = Sleeps()
    with webhook_receiver(responses=[(503, "\u00b2"), (503, "3"), (503, "60")]) as hook:
        config = alerts_config(
            notifiers={
                "webhook/ops": {
                    "url": hook.url,
                    "retry": {"max_attempts": 4, "initial_interval": "1s", "max_interval": "5s"},
                }
            }
        )
        [delivery] = await dispatcher(config, store, FakeClock(), sleeps, exporter).deliver(alert(["webhook/ops"]))
        hook.wait(4)
    assert (delivery.status, delivery.attempts) == ("delivered", 4)
    assert sleeps.delays == [1.0, 3.0, 5.0]  # the back-off, Retry-After 3 s, 60 s capped at max_interval


async def test_json_webhook_payload(store: Storage) -> None:
    exporter = f"json-{uuid.uuid4().hex[:6]}"
    with webhook_receiver() as hook:
        config = alerts_config(notifiers={"webhook": {"url": hook.url}})
        sent = alert(["webhook"], exporter=exporter)
        await dispatcher(config, store, FakeClock(), Sleeps(), exporter).deliver(sent)
        [request] = hook.wait(1)
    body = request.body
    assert request.path == "/hook"
    assert (body["alert_id"], body["kind"], body["rule"], body["key"]) == (
        sent.alert_id,
        "firing",
        "pipette_errors",
        "node_id=ot2_1",
    )
    assert body["events"][0]["body"] == "Tip rack empty"
    assert body["events"][0]["link"] == f"{BASE_URL}/events/{sent.events[0].event_id}"


def test_teams_payload_is_an_adaptive_card() -> None:
    sent = alert(["webhook/teams"])
    payload = teams_payload(sent, BASE_URL, "ALERT (ERROR): node_error")
    [attachment] = payload["attachments"]
    assert payload["type"] == "message"
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["body"][0]["text"] == "ALERT (ERROR): node_error"
    assert card["actions"][0]["url"] == f"{BASE_URL}/events/{sent.events[0].event_id}"


async def test_rate_limit_holds_messages_back_and_says_so_later(store: Storage) -> None:
    exporter = f"rate-{uuid.uuid4().hex[:6]}"
    clock = FakeClock()
    with webhook_receiver() as hook:
        config = alerts_config(notifiers={"webhook": {"url": hook.url, "rate_limit": {"count": 2, "per": "1h"}}})
        sender = dispatcher(config, store, clock, Sleeps(), exporter)
        outcomes = [(await sender.deliver(alert(["webhook"], exporter=exporter)))[0].status for _ in range(4)]
        assert outcomes == ["delivered", "delivered", "rate_limited", "rate_limited"]
        clock.advance(3601)
        [after] = await sender.deliver(alert(["webhook"], exporter=exporter))
        received = hook.wait(3)
    assert after.status == "delivered"
    assert [r.body["held_back"] for r in received] == [0, 0, 2]
    statuses = sorted(row["status"] for row in list_alerts(store, exporter=exporter))
    assert statuses == ["delivered", "delivered", "delivered", "rate_limited", "rate_limited"]


async def test_a_delivery_that_keeps_failing_becomes_an_event(store: Storage) -> None:
    exporter = f"fail-{uuid.uuid4().hex[:6]}"
    sleeps = Sleeps()
    config = alerts_config(
        notifiers={
            "email": {
                "host": "127.0.0.1",
                "port": free_port(),  # nothing listens: connection refused
                "security": "none",
                "from": "labtel@lab.example",
                "to": ["oncall@lab.example"],
                "retry": {"max_attempts": 3, "initial_interval": "1s"},
            }
        }
    )
    sent = alert(["email"], exporter=exporter)
    [delivery] = await dispatcher(config, store, FakeClock(), sleeps, exporter).deliver(sent)
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert sleeps.delays == [1.0, 2.0]
    assert "Connection refused" in delivery.error or "refused" in delivery.error.lower()
    rows = store.rows(
        f"SELECT Body, EventType, SeverityText, ServiceName, LogAttributes FROM {store.names.logs} "
        "WHERE LogAttributes['lab.alert.id'] = {id:String}",
        parameters={"id": sent.alert_id},
    )
    [failure] = rows
    assert failure["EventType"] == "alert_delivery_failed"
    assert failure["SeverityText"] == "ERROR"
    assert failure["ServiceName"] == "labtel-alerts"
    assert failure["LogAttributes"]["lab.alert.notifier"] == "email"
    assert "could not be delivered to email after 3 attempts" in failure["Body"]
    [row] = list_alerts(store, exporter=exporter)
    assert row["status"] == "failed"


async def test_a_4xx_answer_is_not_retried(store: Storage) -> None:
    exporter = f"4xx-{uuid.uuid4().hex[:6]}"
    sleeps = Sleeps()
    with webhook_receiver(responses=[400]) as hook:
        config = alerts_config(notifiers={"webhook": {"url": hook.url}})
        [delivery] = await dispatcher(config, store, FakeClock(), sleeps, exporter).deliver(
            alert(["webhook"], exporter=exporter)
        )
        hook.wait(1)
    assert (delivery.status, delivery.attempts, sleeps.delays) == ("failed", 1, [])
    assert "HTTP 400" in delivery.error


async def test_test_notifications_go_to_the_named_notifiers(store: Storage) -> None:
    exporter = f"test-{uuid.uuid4().hex[:6]}"
    with webhook_receiver() as hook:
        config = alerts_config(notifiers={"webhook/a": {"url": hook.url}, "webhook/b": {"url": hook.url}})
        sent, deliveries = await dispatcher(config, store, FakeClock(), Sleeps(), exporter).test(["webhook/b"])
        [request] = hook.wait(1)
    assert [(d.notifier, d.status) for d in deliveries] == [("webhook/b", "delivered")]
    assert request.body["kind"] == "test"
    assert request.body["subject"].startswith("TEST (INFO): test")
    rows: list[dict[str, Any]] = list_alerts(store, exporter=exporter, kind="test")
    assert [r["alert_id"] for r in rows] == [sent.alert_id]


class Stalls(Sleeps):
    """Back-off that never ends: the collector stops while a notifier waits to retry."""

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.Event().wait()


async def test_a_restart_mid_delivery_sends_only_to_the_notifiers_left(store: Storage) -> None:
    exporter = f"resume-{uuid.uuid4().hex[:6]}"
    history = History(store, exporter)
    with webhook_receiver() as fast, webhook_receiver(responses=[500]) as slow:
        config = alerts_config(notifiers={"webhook/fast": {"url": fast.url}, "webhook/slow": {"url": slow.url}})
        sent = alert(["webhook/fast", "webhook/slow"], exporter=exporter)
        history.record([(sent, "pending")])
        stalls = Stalls()
        delivering = asyncio.create_task(dispatcher(config, store, FakeClock(), stalls, exporter).deliver(sent))
        deadline = time.monotonic() + 10
        while not (stalls.delays and history.pending()[0][1]) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # until the slow one waits to retry and the fast one's outcome is stored
        [(_, settled)] = history.pending()
        assert [(d.notifier, d.status) for d in settled] == [("webhook/fast", "delivered")]
        delivering.cancel()  # the collector stops

        [(resumed, settled)] = history.pending()
        deliveries = await dispatcher(config, store, FakeClock(), Sleeps(), exporter).deliver(resumed, settled)
        slow.wait(2)
    assert len(fast.received) == 1  # not sent again
    assert [(d.notifier, d.status) for d in deliveries] == [
        ("webhook/fast", "delivered"),
        ("webhook/slow", "delivered"),
    ]
    [row] = list_alerts(store, exporter=exporter)
    assert row["status"] == "delivered"


async def test_webhook_errors_never_show_the_url_s_secret_path(store: Storage) -> None:
    exporter = f"secret-{uuid.uuid4().hex[:6]}"
    once = {"max_attempts": 1}
    with webhook_receiver(responses=[500]) as hook:
        config = alerts_config(
            notifiers={
                "webhook/answers": {"url": f"{hook.url}/T0/B1/SECRET?token=SECRET2", "retry": once},
                "webhook/refused": {"url": f"http://127.0.0.1:{free_port()}/hook/SECRET", "retry": once},
            }
        )
        sent = alert(["webhook/answers", "webhook/refused"], exporter=exporter)
        deliveries = await dispatcher(config, store, FakeClock(), Sleeps(), exporter).deliver(sent)
        hook.wait(1)
    assert [d.status for d in deliveries] == ["failed", "failed"]
    assert deliveries[0].error.startswith(f"POST {hook.url.removesuffix('/hook')}: HTTP 500")
    assert deliveries[1].error.startswith("POST http://127.0.0.1:")
    [row] = list_alerts(store, exporter=exporter)
    events = store.rows(
        f"SELECT Body, LogAttributes['exception.message'] AS message FROM {store.names.logs} "
        "WHERE LogAttributes['lab.alert.id'] = {id:String}",
        parameters={"id": sent.alert_id},
    )
    assert len(events) == 2
    shown = [d.error for d in deliveries] + [d["error"] for d in row["deliveries"]]
    shown += [e["Body"] for e in events] + [e["message"] for e in events]
    assert all("SECRET" not in text and "/hook" not in text for text in shown), shown
