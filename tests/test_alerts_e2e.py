"""Alerts through a real `labtel serve`: an OTLP log record flagged alert=true from the stock
OpenTelemetry SDK exporter becomes an email at a real SMTP server and an entry of `GET /alerts`;
and an SMTP server that is down (or never answers) does not slow ingest."""

from __future__ import annotations

import email
import socket
import statistics
import time
from collections.abc import Callable
from email import policy
from pathlib import Path

import httpx
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from tests.alerting import free_port, smtp_receiver, webhook_receiver
from tests.helpers import LabtelServer, log_record, logs_request, wait_for, write_config

ALERTS = """  alerts:
    storage: clickhouse
    interval: 200ms
    group_wait: 0s
{extra}    notifiers:
{notifiers}
"""

EMAIL = """      {name}:
        host: 127.0.0.1
        port: {port}
        security: none
        from: labtel@lab.example
        to: [oncall@lab.example]
        timeout: {timeout}
        retry: {{max_attempts: 2, initial_interval: 100ms}}
"""


def alerting_config(tmp_path: Path, notifiers: str, extra: str = "") -> Path:
    """A `labtel serve` config with an alerts exporter: `notifiers` and `extra` (more of its keys) as YAML."""
    path = write_config(
        tmp_path / "otel-config.yaml",
        tmp_path / "data",
        exporter_extra=ALERTS.format(notifiers=notifiers, extra=extra),
    )
    text = path.read_text()
    logs_pipeline = "logs: {receivers: [otlp], processors: [batch], exporters: [clickhouse]}"
    assert logs_pipeline in text
    path.write_text(text.replace(logs_pipeline, logs_pipeline.replace("[clickhouse]", "[clickhouse, alerts]")))
    return path


def test_a_flagged_otlp_record_becomes_an_email_and_an_alert_in_the_api(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    with smtp_receiver() as smtp:
        config = alerting_config(tmp_path, EMAIL.format(name="email/oncall", port=smtp.port, timeout="5s"))
        server = server_factory(config=config, workdir=tmp_path).start()

        provider = LoggerProvider(resource=Resource.create({"service.name": "ot2-driver"}))
        provider.add_log_record_processor(
            SimpleLogRecordProcessor(OTLPLogExporter(endpoint=server.grpc, insecure=True))
        )
        provider.get_logger("ot2").emit(
            severity_number=SeverityNumber.INFO,
            body="Operator flagged the pipette for a look",
            attributes={"lab.alert": True, "lab.node.id": "ot2_1", "lab.event.type": "node_status_update"},
        )
        provider.shutdown()

        [envelope] = smtp.wait(1)
        message = email.message_from_bytes(envelope.content, policy=policy.default)
        assert envelope.rcpt_tos == ["oncall@lab.example"]
        assert message["Subject"] == "ALERT (INFO): node_status_update"
        event_id = message["X-MADSci-Event-ID"]
        body = message.get_content()
        assert "Operator flagged the pipette for a look" in body
        assert f"{server.api}/events/{event_id}" in body
        assert server.get(f"/events/{event_id}").json()["body"] == "Operator flagged the pipette for a look"

        def delivered() -> list[dict[str, object]]:
            return [a for a in server.get("/alerts").json()["alerts"] if a["status"] == "delivered"]

        [alert] = wait_for(delivered, what="the delivered alert in GET /alerts")
        assert (alert["rule"], alert["kind"], alert["key"]) == ("default", "firing", "")
        assert alert["event_ids"] == [event_id]
        assert alert["deliveries"][0]["notifier"] == "email/oncall"

        rules = server.get("/alerts/rules").json()
        assert [r["name"] for r in rules["rules"]] == ["default"]
        assert rules["rules"][0]["alert_level"] == "ERROR"
        assert rules["notifiers"][0]["name"] == "email/oncall"

        answer = httpx.post(f"{server.api}/alerts/test", json={"notifier": "email/oncall"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"][0]["status"] == "delivered"
        test_mail = email.message_from_bytes(smtp.wait(2)[1].content, policy=policy.default)
        assert test_mail["Subject"] == "TEST (INFO): test"
        assert httpx.post(f"{server.api}/alerts/test", json={"notifier": "nope"}, timeout=30).status_code == 404


def test_an_smtp_server_that_is_down_does_not_slow_ingest(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    black_hole = socket.socket()  # accepts connections (the kernel's backlog), never says a word
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(64)
    try:
        notifiers = EMAIL.format(name="email/closed", port=free_port(), timeout="10s") + EMAIL.format(
            name="email/silent", port=black_hole.getsockname()[1], timeout="5s"
        )
        config = alerting_config(tmp_path, notifiers)
        server = server_factory(config=config, workdir=tmp_path).start()
        latencies = []
        for batch in range(15):
            records = [
                log_record(f"pump {batch}.{i} failed", {"lab.node.id": f"pump_{i % 3}"}, severity=17) for i in range(40)
            ]
            data = logs_request(records, resource={"service.name": "extraction-line"}).SerializeToString()
            started = time.perf_counter()
            response = httpx.post(
                f"{server.http}/v1/logs", content=data, headers={"Content-Type": "application/x-protobuf"}, timeout=30
            )
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
            time.sleep(0.1)  # let the engine wake between batches: alerts go out while ingest goes on
        # An insert takes ~0.1-0.3 s here; one SMTP attempt to the silent server alone takes 5 s.
        assert max(latencies) < 3.0, latencies
        assert statistics.median(latencies) < 1.0, latencies

        def failed() -> list[dict[str, object]]:
            found = server.get("/events", event_type="alert_delivery_failed").json()["events"]
            return [e for e in found if e["attributes"]["lab.alert.notifier"] == "email/closed"]

        [failure] = wait_for(failed, timeout=30, what="the delivery failure event")[:1]
        assert failure["service_name"] == "labtel-alerts"
        assert "after 2 attempts" in failure["body"]
        assert len(server.all_events(service="extraction-line")) == 15 * 40
    finally:
        black_hole.close()


HEARTBEAT_RULE = """    aggregate_interval: 200ms
    rules:
      - name: heartbeat_lost
        match: {"event_type": "node_status_update"}
        silence: {for: 3s, expect: [ot2_1, never_seen]}
"""


def test_a_silence_rule_pages_only_for_a_silence_it_heard(
    tmp_path: Path, server_factory: Callable[..., LabtelServer]
) -> None:
    """Through a real `labtel serve` and webhook: a node whose clock is a minute fast and that
    sends heartbeats is not silent (its heartbeats were ignored, being in the future), and a
    node never seen pages `for` after the start, not at once."""
    with webhook_receiver() as hook:
        notifiers = f"      webhook/ops: {{url: {hook.url}}}\n"
        config = alerting_config(tmp_path, notifiers, extra=HEARTBEAT_RULE)
        server = server_factory(config=config, workdir=tmp_path).start()
        started = time.monotonic()
        provider = LoggerProvider(resource=Resource.create({"service.name": "ot2-driver"}))
        provider.add_log_record_processor(
            SimpleLogRecordProcessor(OTLPLogExporter(endpoint=server.grpc, insecure=True))
        )
        logger = provider.get_logger("ot2")
        early: list[object] | None = None
        last_sent = time.time()
        while time.monotonic() - started < 6.0:  # a heartbeat every 300 ms for 6 s, stamped 60 s ahead
            last_sent = time.time()  # it arrives after this
            logger.emit(
                timestamp=time.time_ns() + 60 * 1_000_000_000,
                severity_number=SeverityNumber.INFO,
                body="heartbeat",
                attributes={"lab.node.id": "ot2_1", "lab.event.type": "node_status_update"},
            )
            time.sleep(0.3)
            if early is None and time.monotonic() - started > 1.5:
                early = list(hook.received)
        provider.shutdown()
        assert early == []  # the engine had watched for less than 3 s
        [never_seen] = hook.wait(1)  # and ot2_1 was heard
        assert never_seen.body["key"] == "node_id=never_seen"
        assert never_seen.body["summary"].endswith("for 3s (nothing seen)")

        quiet = hook.wait(2, timeout=15)[1]  # ot2_1 stopped: silent 3 s after its last heartbeat arrived
        assert (quiet.body["kind"], quiet.body["key"]) == ("firing", "node_id=ot2_1")
        assert "last seen 3s ago" in quiet.body["summary"]
        assert quiet.body["events"][0]["node_id"] == "ot2_1"
        assert time.time() - last_sent >= 2.9  # silent counted from the last heartbeat's arrival, not its stamp
