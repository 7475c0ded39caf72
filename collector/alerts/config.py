"""The `alerts` exporter's configuration: rules, notifiers, grouping, de-duplication, rate limits.

    exporters:
      alerts:
        storage: clickhouse          # the clickhouse exporter whose stored events the rules read
        alert_level: ERROR           # rule "default": events at or above it, and events flagged alert=true
        rules:
          - name: pipette_errors
            match: {"event_type": "node_error", "source.node_id": "ot2_1"}
          - name: error_burst
            match: {"log_level": {"$gte": 40}}
            threshold: {count: 10, within: 5m}
            group_by: [node_id]
          - name: heartbeat_lost
            match: {"event_type": "node_status_update"}
            silence: {for: 10m, expect: [ot2_1]}
        notifiers:
          email/oncall: {host: smtp.example.org, from: labtel@example.org, to: [oncall@example.org]}
          webhook/slack: {url: "${env:SLACK_WEBHOOK_URL}", format: slack}

Notifiers are named `type[/name]` like components (`email`, `webhook`). Selectors are the
language of `POST /events/query` and are checked (translated to SQL) when the file is loaded.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from labtel.collector.alerts import templates
from labtel.collector.durations import Duration

DEFAULT_RULE = "default"
"""The built-in rule: events at or above `alert_level`, and events flagged alert=true (MADSci's)."""


class _Section(BaseModel):
    """A config section: unknown keys are errors, values are immutable after loading; `for` and
    `from` are written as such (Python names them `for_`, `from_`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def parse_level(value: Any) -> int:
    """A severity number (0-24) or name (WARN, error, ...); shared by `alert_level` and `min_severity`."""
    from labtel.query_api.params import ParamError, parse_severity

    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a severity")
    try:
        return parse_severity(str(value), "severity")
    except ParamError as error:
        raise ValueError(str(error).removeprefix("severity: ")) from None


_GROUP_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class ThresholdConfig(_Section):
    """An aggregate rule: more than `count` matching events (per group) within `within`."""

    count: int = Field(ge=0)
    within: Duration = timedelta(minutes=5)

    @field_validator("within")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("within must be longer than 0s")
        return value


class SilenceConfig(_Section):
    """Silence detection: no matching event from a group (a node, by default) for `for_`.

    The groups watched are those listed in `expect` and every group seen within `seen_within`."""

    for_: Duration = Field(alias="for")
    expect: list[str] = []
    seen_within: Duration = timedelta(days=1)

    @model_validator(mode="after")
    def _windows(self) -> SilenceConfig:
        if self.for_ <= timedelta(0):
            raise ValueError("for must be longer than 0s")
        if self.seen_within <= self.for_:
            raise ValueError("seen_within must be longer than for")
        return self


def repeat_window(value: timedelta) -> timedelta:
    """A `repeat_interval`, which must be longer than 0s: it is the de-duplication window, and 0s
    would notify each event and each evaluation of a firing group again (as Alertmanager, which
    refuses a zero repeat_interval)."""
    if value <= timedelta(0):
        raise ValueError(
            "repeat_interval must be longer than 0s: it is how long a notified key stays quiet; "
            "to hear more often, use a shorter one (1s) or name more fields in dedup_by"
        )
    return value


class RuleConfig(_Section):
    """One alert rule: a selector, optionally an aggregate condition over it, and who hears of it."""

    name: str
    match: dict[str, Any] = {}
    min_severity: int | None = None
    threshold: ThresholdConfig | None = None
    silence: SilenceConfig | None = None
    group_by: list[str] | None = None
    dedup_by: list[str] | None = None
    notify: list[str] | None = None
    level: str = ""
    group_wait: Duration | None = None
    repeat_interval: Duration | None = None
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$", value):
            raise ValueError(f"rule name {value!r}: use letters, digits, '_', '-', '.'")
        if value == DEFAULT_RULE:
            raise ValueError(f"{DEFAULT_RULE!r} is the built-in rule; configure it with alert_level")
        return value

    @field_validator("repeat_interval")
    @classmethod
    def _check_repeat(cls, value: timedelta | None) -> timedelta | None:
        return None if value is None else repeat_window(value)

    @field_validator("min_severity", mode="before")
    @classmethod
    def _check_severity(cls, value: Any) -> int | None:
        return None if value is None else parse_level(value)

    @field_validator("match")
    @classmethod
    def _check_match(cls, value: dict[str, Any]) -> dict[str, Any]:
        from labtel.query_api.selector import SelectorError, translate

        try:
            translate(value)
        except SelectorError as error:
            raise ValueError(str(error)) from None
        return value

    @field_validator("group_by", "dedup_by")
    @classmethod
    def _check_fields(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if not _GROUP_FIELD.match(name):
                raise ValueError(f"{name!r} is not a field name (node_id, event_type, attributes.<key>, ...)")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> RuleConfig:
        if self.threshold is not None and self.silence is not None:
            raise ValueError("a rule is either a threshold or a silence rule, not both")
        if self.silence is not None and self.silence.expect and self.group_by is not None and len(self.group_by) != 1:
            raise ValueError("silence.expect lists values of one group_by field (node_id by default)")
        return self

    @property
    def kind(self) -> str:
        """`event` (each matching event), `threshold` or `silence` (aggregates on a schedule)."""
        if self.threshold is not None:
            return "threshold"
        if self.silence is not None:
            return "silence"
        return "event"


class RateLimitConfig(_Section):
    """At most `count` messages per `per` through one notifier; the rest are held back and counted."""

    count: int = Field(20, ge=0)
    per: Duration = timedelta(minutes=10)

    @model_validator(mode="after")
    def _a_window(self) -> RateLimitConfig:
        if self.count > 0 and self.per <= timedelta(0):
            raise ValueError("per must be longer than 0s (count: 0 turns the limit off)")
        return self


class DeliveryRetryConfig(_Section):
    """Attempts and back-off of one delivery; after the last attempt the failure is an event."""

    max_attempts: int = Field(5, ge=1, le=100)
    initial_interval: Duration = timedelta(seconds=2)
    max_interval: Duration = timedelta(minutes=2)

    def interval(self, failed: int) -> float:
        """Seconds to wait after the `failed`-th failed attempt in a row: `initial_interval`
        doubling each time, at most `max_interval`. A delivery waits so between its attempts;
        the engine, after a whole delivery failed, waits as if it had gone on trying."""
        doubled = self.initial_interval.total_seconds() * 2.0 ** min(max(failed - 1, 0), 60)
        return min(doubled, self.max_interval.total_seconds())


class _NotifierConfig(_Section):
    subject: str = templates.DEFAULT_SUBJECT
    body: str = templates.DEFAULT_BODY
    timeout: Duration = timedelta(seconds=10)
    rate_limit: RateLimitConfig = RateLimitConfig()
    retry: DeliveryRetryConfig = DeliveryRetryConfig()

    @field_validator("subject", "body")
    @classmethod
    def _check_template(cls, value: str) -> str:
        templates.check_template(value)
        return value


class EmailNotifierConfig(_NotifierConfig):
    """Email over SMTP. `security`: `starttls` (port 587), `tls` (implicit TLS, port 465) or `none`.
    Credentials belong in the environment: `password: ${env:LABTEL_SMTP_PASSWORD}`."""

    host: str
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str = ""
    password: SecretStr = SecretStr("")
    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    cc: list[str] = []
    verify_certificate: bool = True

    @field_validator("from_")
    @classmethod
    def _check_from(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError(f"{value!r} is not an email address")
        return value

    @field_validator("to", "cc")
    @classmethod
    def _check_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if "@" not in address:
                raise ValueError(f"{address!r} is not an email address")
        return value


class WebhookNotifierConfig(_NotifierConfig):
    """A JSON POST: labtel's own shape (`json`), or a Slack or Microsoft Teams incoming webhook's."""

    url: str
    format: Literal["json", "slack", "teams"] = "json"
    headers: dict[str, str] = {}

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"url {value!r} must start with http:// or https://")
        return value


NotifierConfig = EmailNotifierConfig | WebhookNotifierConfig
NOTIFIER_TYPES: dict[str, type[_NotifierConfig]] = {"email": EmailNotifierConfig, "webhook": WebhookNotifierConfig}


class AlertsExporterConfig(_Section):
    """The `alerts` exporter: evaluates rules over what a `clickhouse` exporter stored.

    It never holds up ingest: receiving a batch only wakes the engine, which reads the stored
    events every `interval` (or when woken) in SQL, and notifications go out from their own tasks."""

    storage: str = "clickhouse"
    interval: Duration = timedelta(seconds=2)
    aggregate_interval: Duration = timedelta(seconds=10)
    lookback: Duration = timedelta(seconds=15)
    max_events_per_scan: int = Field(10_000, ge=1)
    alert_level: int | None = 17
    group_wait: Duration = timedelta(seconds=10)
    repeat_interval: Duration = timedelta(hours=1)
    group_by: list[str] = []
    dedup_by: list[str] = ["node_id", "event_type"]
    max_events_listed: int = Field(20, ge=1, le=1000)
    public_url: str = ""
    notify: list[str] | None = None
    rules: list[RuleConfig] = []
    notifiers: dict[str, NotifierConfig] = {}

    @field_validator("alert_level", mode="before")
    @classmethod
    def _check_level(cls, value: Any) -> int | None:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "none", "")):
            return None
        return parse_level(value)

    @field_validator("interval", "aggregate_interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("the interval must be longer than 0s")
        return value

    @field_validator("repeat_interval")
    @classmethod
    def _check_repeat(cls, value: timedelta) -> timedelta:
        return repeat_window(value)

    @field_validator("notifiers", mode="before")
    @classmethod
    def _typed_notifiers(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        parsed: dict[str, Any] = {}
        for notifier_id, body in value.items():
            kind = str(notifier_id).split("/", 1)[0]
            if kind not in NOTIFIER_TYPES:
                raise ValueError(
                    f"{notifier_id}: unknown notifier type {kind!r}; labtel knows: {', '.join(NOTIFIER_TYPES)}"
                )
            try:
                parsed[str(notifier_id)] = (
                    body if isinstance(body, _NotifierConfig) else NOTIFIER_TYPES[kind].model_validate(body or {})
                )
            except ValidationError as error:  # its errors keep the notifier's name in their location
                raise ValidationError.from_exception_data(
                    error.title,
                    [
                        InitErrorDetails(
                            type=item["type"],
                            loc=(str(notifier_id), *item["loc"]),
                            input=item["input"],
                            ctx=item.get("ctx", {}),
                        )
                        for item in error.errors()
                    ],
                ) from None
        return parsed

    @model_validator(mode="after")
    def _references(self) -> AlertsExporterConfig:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rules: the name {duplicates[0]!r} is used twice")
        for where, listed in [("notify", self.notify), *((f"rules.{r.name}.notify", r.notify) for r in self.rules)]:
            for name in listed or []:
                if name not in self.notifiers:
                    raise ValueError(f"{where}: {name!r} is not one of the notifiers ({', '.join(self.notifiers)})")
        return self

    def rule_notifiers(self, rule: RuleConfig | None) -> list[str]:
        """The notifiers a rule's alerts go to: its own `notify`, else the exporter's, else all."""
        if rule is not None and rule.notify is not None:
            return list(rule.notify)
        return list(self.notify) if self.notify is not None else list(self.notifiers)
