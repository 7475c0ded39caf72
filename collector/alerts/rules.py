"""Alert rules compiled to SQL: each rule's condition is a boolean over an `otel_logs` row.

A rule's `match` is a selector of `POST /events/query`, translated by the query API's own
translator (labtel.query_api.selector), so a rule and a query select exactly the same events.
The built-in rule `default` is MADSci's: events at or above `alert_level`, and events flagged
`lab.alert` / `alert` = true, whatever their level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from labtel.collector.alerts.config import DEFAULT_RULE, AlertsExporterConfig, RuleConfig
from labtel.collector.alerts.model import EventBrief
from labtel.query_api.params import SEVERITY_NAMES
from labtel.query_api.selector import COLUMNS, translate
from labtel.sdk import semconv

LAB_ALERT = "lab.alert"
"""The attribute that flags an event as an alert whatever its level (MADSci's `Event.alert`)."""
FLAG_ATTRIBUTES = (LAB_ALERT, "alert")
DELIVERY_FAILED = "alert_delivery_failed"
"""The event type of the event stored when a notification could not be delivered."""
FAILURE_SERVICE = "labtel-alerts"
"""The service name of the events labtel stores about its own failed deliveries."""

FLAGGED_SQL = " OR ".join(f"lower(LogAttributes['{key}']) IN ('true', '1', 'yes')" for key in FLAG_ATTRIBUTES)


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to evaluate: its SQL condition and how its alerts are grouped and sent."""

    name: str
    kind: str
    condition: str
    parameters: dict[str, Any]
    group_by: tuple[str, ...]
    dedup_by: tuple[str, ...]
    notifiers: tuple[str, ...]
    level: str
    group_wait: timedelta
    repeat_interval: timedelta
    config: RuleConfig | None = None
    description: dict[str, Any] = field(default_factory=dict)

    def group_key(self, event: EventBrief) -> str:
        """The group an event's alert belongs to (`node_id=ot2_1`), empty for one group per rule."""
        return format_key(self.group_by, [field_value(event, name) for name in self.group_by])

    def dedup_key(self, event: EventBrief) -> str:
        """What makes two alerts of this rule the same alert (rule, node and event type by default)."""
        values = [field_value(event, name) for name in self.dedup_by]
        return f"{self.name}|{format_key(self.dedup_by, values)}"


def format_key(names: tuple[str, ...], values: list[str]) -> str:
    return ",".join(f"{name}={value}" for name, value in zip(names, values, strict=True))


def level_name(number: int) -> str:
    """The severity name of a number (17 → ERROR), as alerts show their level."""
    best = "TRACE"
    for name, value in SEVERITY_NAMES.items():
        if value <= number and name not in ("WARNING", "CRITICAL", "NOTICE"):
            best = name
    return best


_BRIEF_FIELDS = {
    "EventType": "event_type",
    "NodeId": "node_id",
    "ServiceName": "service_name",
    "RunId": "run_id",
    "WorkflowId": "workflow_id",
    "ExperimentId": "experiment_id",
    "TraceId": "trace_id",
    "SeverityText": "severity_text",
    "Body": "body",
}


def field_value(event: EventBrief, name: str) -> str:
    """A field of an event by its selector name (`node_id`, `attributes.x`, `resource.y`, `x`)."""
    column = COLUMNS.get(name)
    if column is not None and column.sql in _BRIEF_FIELDS:
        return str(getattr(event, _BRIEF_FIELDS[column.sql]))
    if column is not None and column.sql == "SeverityNumber":
        return str(event.severity_number)
    for prefix, values in (
        ("attributes.", event.attributes),
        ("attr.", event.attributes),
        ("resource.", event.resource),
    ):
        if name.startswith(prefix):
            return values.get(name[len(prefix) :], "")
    if name.startswith("source."):
        short = name[len("source.") :]
        return event.attributes.get(semconv.FIELD_ALIASES.get(short, f"lab.{short.removesuffix('_id')}.id"), "")
    return event.attributes.get(semconv.FIELD_ALIASES.get(name, name), "")


def field_sql(name: str, parameters: dict[str, Any], prefix: str) -> str:
    """SQL of a field by its selector name, as text (for GROUP BY); keys travel as parameters."""
    column = COLUMNS.get(name)
    if column is not None:
        return column.sql if column.kind in ("string", "event_type") else f"toString({column.sql})"
    source, key = "LogAttributes", semconv.FIELD_ALIASES.get(name, name)
    for start, where in (
        ("attributes.", "LogAttributes"),
        ("attr.", "LogAttributes"),
        ("resource.", "ResourceAttributes"),
    ):
        if name.startswith(start):
            source, key = where, name[len(start) :]
            break
    else:
        if name.startswith("source."):
            short = name[len("source.") :]
            key = semconv.FIELD_ALIASES.get(short, f"lab.{short.removesuffix('_id')}.id")
    param = f"{prefix}{len(parameters)}"
    parameters[param] = key
    return f"{source}[{{{param}:String}}]"


def compile_rules(config: AlertsExporterConfig) -> list[CompiledRule]:
    """The exporter's rules, the built-in `default` rule first (unless `alert_level` is off and
    nothing can be flagged: flagged events always fire, so `default` is always there)."""
    rules = [_default_rule(config)]
    for index, rule in enumerate(config.rules):
        if rule.enabled:
            rules.append(_user_rule(config, rule, index))
    return rules


def _default_rule(config: AlertsExporterConfig) -> CompiledRule:
    parameters: dict[str, Any] = {"d_failed": DELIVERY_FAILED}
    wanted = f"({FLAGGED_SQL})"
    if config.alert_level is not None:
        parameters["d_level"] = config.alert_level
        wanted = f"(SeverityNumber >= {{d_level:UInt8}} OR {FLAGGED_SQL})"
    return CompiledRule(
        name=DEFAULT_RULE,
        kind="event",
        condition=f"({wanted} AND EventType != {{d_failed:String}})",
        parameters=parameters,
        group_by=tuple(config.group_by),
        dedup_by=tuple(config.dedup_by),
        notifiers=tuple(config.rule_notifiers(None)),
        level="",
        group_wait=config.group_wait,
        repeat_interval=config.repeat_interval,
        description={
            "alert_level": level_name(config.alert_level) if config.alert_level is not None else None,
            "flagged": [f"{key} = true" for key in FLAG_ATTRIBUTES],
        },
    )


def _user_rule(config: AlertsExporterConfig, rule: RuleConfig, index: int) -> CompiledRule:
    prefix = f"r{index}"
    sql, parameters = translate(rule.match, prefix=prefix)
    parts = [sql]
    if rule.min_severity is not None:
        parameters[f"{prefix}_severity"] = rule.min_severity
        parts.append(f"SeverityNumber >= {{{prefix}_severity:UInt8}}")
    if not _names_own_failures(rule.match):  # a broken notifier must not feed itself
        parameters.update({f"{prefix}_failed": DELIVERY_FAILED, f"{prefix}_own": FAILURE_SERVICE})
        parts.append(f"NOT (EventType = {{{prefix}_failed:String}} AND ServiceName = {{{prefix}_own:String}})")
    kind = rule.kind
    default_group: list[str] = ["node_id"] if kind == "silence" else list(config.group_by)
    group_by = tuple(rule.group_by if rule.group_by is not None else default_group)
    description: dict[str, Any] = {"match": rule.match}
    if rule.min_severity is not None:
        description["min_severity"] = level_name(rule.min_severity)
    if rule.threshold is not None:
        description["threshold"] = rule.threshold.model_dump(mode="json")
    if rule.silence is not None:
        description["silence"] = rule.silence.model_dump(mode="json", by_alias=True)
    return CompiledRule(
        name=rule.name,
        kind=kind,
        condition="(" + " AND ".join(parts) + ")",
        parameters=parameters,
        group_by=group_by,
        dedup_by=tuple(rule.dedup_by if rule.dedup_by is not None else config.dedup_by),
        notifiers=tuple(config.rule_notifiers(rule)),
        level=rule.level.upper() if rule.level else ("" if kind == "event" else "WARN"),
        group_wait=rule.group_wait if rule.group_wait is not None else config.group_wait,
        repeat_interval=rule.repeat_interval if rule.repeat_interval is not None else config.repeat_interval,
        config=rule,
        description=description,
    )


def _names_own_failures(match: Any) -> bool:
    """Whether a selector names labtel's own delivery failures (their event type or service)
    anywhere: only such a rule sees them."""
    if isinstance(match, Mapping):
        return any(_names_own_failures(value) for value in match.values())
    if isinstance(match, list | tuple):
        return any(_names_own_failures(value) for value in match)
    return match in (DELIVERY_FAILED, FAILURE_SERVICE)


def merged_parameters(rules: list[CompiledRule]) -> dict[str, Any]:
    """The parameters of several rules' conditions, for one query testing them all."""
    merged: dict[str, Any] = {}
    for rule in rules:
        merged.update(rule.parameters)
    return merged


def brief_from_row(row: Mapping[str, Any]) -> EventBrief:
    """An event as alerts show it, from a row selected with labtel.query_api.events.EVENT_COLUMNS."""
    from labtel.query_api.params import format_time_ns

    return EventBrief(
        event_id=str(row["event_id"]),
        timestamp=format_time_ns(int(row["ts"])),
        time_unix_nano=int(row["ts"]),
        inserted_ms=int(row.get("inserted_ms") or 0),
        severity_text=str(row["SeverityText"]),
        severity_number=int(row["SeverityNumber"]),
        service_name=str(row["ServiceName"]),
        event_type=str(row["EventType"]),
        node_id=str(row["NodeId"]),
        body=str(row["Body"]),
        attributes=dict(row["LogAttributes"]),
        resource=dict(row["ResourceAttributes"]),
        trace_id=str(row["TraceId"]),
        run_id=str(row["RunId"]),
        workflow_id=str(row["WorkflowId"]),
        experiment_id=str(row["ExperimentId"]),
    )
