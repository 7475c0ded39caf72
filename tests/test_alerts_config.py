"""The `alerts` exporter in otel-config.yaml: defaults, references, and errors that name the key."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from labtel.collector.alerts.config import AlertsExporterConfig, EmailNotifierConfig, WebhookNotifierConfig
from labtel.collector.alerts.rules import compile_rules
from labtel.collector.config import ConfigError, parse_config


def with_alerts(alerts: dict[str, Any], pipeline: list[str] | None = None, signal: str = "logs") -> dict[str, Any]:
    return {
        "receivers": {"otlp": {"protocols": {"grpc": None}}},
        "exporters": {"clickhouse": {"endpoint": "chdb://./data"}, "alerts": alerts},
        "service": {"pipelines": {signal: {"receivers": ["otlp"], "exporters": pipeline or ["clickhouse", "alerts"]}}},
    }


def test_an_alerts_exporter_with_rules_and_notifiers_loads() -> None:
    config = parse_config(
        with_alerts(
            {
                "alert_level": "warn",
                "rules": [
                    {"name": "hot", "match": {"attributes.temperature": {"$gt": 40}}, "notify": ["webhook/slack"]},
                    {"name": "quiet", "match": {"event_type": "heartbeat"}, "silence": {"for": "10m"}},
                ],
                "notifiers": {
                    "email": {"host": "smtp.lab", "from": "labtel@lab", "to": ["a@lab"], "password": "s3cret"},
                    "webhook/slack": {"url": "https://hooks.example/x", "format": "slack"},
                },
            }
        )
    )
    alerts = config.alerts_exporters()["alerts"]
    assert alerts.alert_level == 13
    assert alerts.interval == timedelta(seconds=2)
    assert isinstance(alerts.notifiers["email"], EmailNotifierConfig)
    assert alerts.notifiers["email"].port == 587
    assert alerts.notifiers["email"].security == "starttls"
    assert "s3cret" not in repr(alerts.notifiers["email"])
    assert isinstance(alerts.notifiers["webhook/slack"], WebhookNotifierConfig)
    assert config.storage_exporter().endpoint == "chdb://./data"
    rules = {r.name: r for r in compile_rules(alerts)}
    assert list(rules) == ["default", "hot", "quiet"]
    assert rules["hot"].notifiers == ("webhook/slack",)
    assert rules["default"].notifiers == ("email", "webhook/slack")
    assert rules["quiet"].kind == "silence"
    assert rules["quiet"].group_by == ("node_id",)


@pytest.mark.parametrize(
    ("alerts", "pipeline", "signal", "message"),
    [
        ({"storage": "nope"}, None, "logs", "exporters.alerts.storage: 'nope' is not a clickhouse exporter"),
        (
            {},
            None,
            "traces",
            "service.pipelines.traces.exporters: 'alerts' alerts on events: list it in a logs pipeline",
        ),
        ({}, ["alerts"], "logs", "'alerts' needs a clickhouse exporter in the same pipeline"),
        ({"rules": [{"name": "x", "match": {"$where": "1"}}]}, None, "logs", "unsupported operator $where"),
        (
            {"rules": [{"name": "x", "notify": ["pager"]}]},
            None,
            "logs",
            "rules.x.notify: 'pager' is not one of the notifiers",
        ),
        ({"notifiers": {"pager": {}}}, None, "logs", "unknown notifier type 'pager'"),
        (
            {"notifiers": {"email": {"host": "h", "from": "x@y", "to": ["z@y"], "subject": "{nope}"}}},
            None,
            "logs",
            "exporters.alerts.notifiers.email.subject: template '{nope}': unknown template field {nope}",
        ),
        (
            {"notifiers": {"webhook/slack": {"url": "ftp://hooks"}}},
            None,
            "logs",
            "exporters.alerts.notifiers.webhook/slack.url: url 'ftp://hooks' must start with",
        ),
        (
            {"notifiers": {"webhook": {"url": "http://hooks", "rate_limit": {"per": "0s"}}}},
            None,
            "logs",
            "notifiers.webhook.rate_limit: per must be longer than 0s",
        ),
        ({"alert_level": "loud"}, None, "logs", "exporters.alerts.alert_level: 'loud' is not a severity"),
        (
            {"repeat_interval": "0s"},
            None,
            "logs",
            "exporters.alerts.repeat_interval: repeat_interval must be longer than 0s",
        ),
        (
            {"rules": [{"name": "r", "repeat_interval": "0s"}]},
            None,
            "logs",
            "exporters.alerts.rules.0.repeat_interval: repeat_interval must be longer than 0s",
        ),
        ({"rules": [{"name": "default"}]}, None, "logs", "'default' is the built-in rule"),
        (
            {"rules": [{"name": "t", "threshold": {"count": 1}, "silence": {"for": "1m"}}]},
            None,
            "logs",
            "either a threshold or a silence rule",
        ),
    ],
)
def test_bad_alerts_configs_name_the_key(
    alerts: dict[str, Any], pipeline: list[str] | None, signal: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(with_alerts(alerts, pipeline, signal))
    assert message in str(raised.value)


def test_silence_expect_needs_one_group_field() -> None:
    with pytest.raises(ValueError, match=r"silence\.expect lists values of one group_by field"):
        AlertsExporterConfig.model_validate(
            {"rules": [{"name": "q", "group_by": ["node_id", "service"], "silence": {"for": "1m", "expect": ["a"]}}]}
        )
