"""Subject and body templates of notifications, and the fields they may name.

Templates are Python format strings over plain names only (`{level}`, `{node_id}`, `{link}`):
no attribute or index access, and an unknown name is a configuration error at load time.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from labtel.collector.alerts.model import Alert, EventBrief

DEFAULT_SUBJECT = "{status} ({level}): {title}"
"""MADSci's subject, `ALERT ({level}): {type}`, with resolved notices and groups of events."""

DEFAULT_BODY = """{summary}

rule:  {rule} ({rule_type})
group: {key}
fired: {fired_at}
{held_back}
Events ({count}):
{events}

Alert history: {alerts_link}
{event_json}"""

TEMPLATE_FIELDS: dict[str, str] = {
    "status": "ALERT, RESOLVED or TEST",
    "kind": "firing, resolved or test",
    "level": "the alert's severity (the highest of its events, or the rule's level)",
    "title": "a short line: the event type and count, or the rule and group",
    "summary": "one sentence saying what happened",
    "rule": "the rule's name",
    "rule_type": "event, threshold or silence",
    "key": "the group the alert is about, e.g. node_id=ot2_1",
    "count": "how many events the alert covers",
    "value": "an aggregate's measured value: the count, or the seconds of silence",
    "fired_at": "when the alert fired (RFC 3339 UTC)",
    "alert_id": "the alert's id in GET /alerts",
    "event_id": "the first event's id",
    "event_type": "the first event's type",
    "node_id": "the first event's node",
    "service": "the first event's service",
    "body": "the first event's message",
    "timestamp": "the first event's time",
    "severity": "the first event's severity text",
    "link": "the first event in the query API (GET /events/{id}), else the alert history",
    "alerts_link": "this rule's alert history in the query API",
    "events": "the listed events, one per line with their links",
    "event_json": "the first event as JSON (MADSci's body)",
    "held_back": "a note on messages the rate limit held back, or nothing",
}


class _PlainNames(string.Formatter):
    """A formatter that only looks names up: `{a.b}` or `{a[0]}` never reach into objects."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if field_name not in TEMPLATE_FIELDS:
            raise KeyError(field_name)
        return kwargs[field_name], field_name


_FORMATTER = _PlainNames()


def check_template(text: str) -> None:
    """Raise ValueError naming the problem when a template cannot be rendered."""
    try:
        for _, name, _, _ in string.Formatter().parse(text):
            if name is not None and name not in TEMPLATE_FIELDS:
                raise ValueError(f"unknown template field {{{name}}}; known: {', '.join(TEMPLATE_FIELDS)}")
        _FORMATTER.vformat(text, (), dict.fromkeys(TEMPLATE_FIELDS, ""))
    except (ValueError, IndexError) as error:
        raise ValueError(f"template {text[:40]!r}: {error}") from None


def render(template: str, fields: Mapping[str, Any]) -> str:
    """A template filled with an alert's fields (see `alert_fields`)."""
    return _FORMATTER.vformat(template, (), fields)


def event_link(base_url: str, event_id: str) -> str:
    """The event in the query API."""
    return f"{base_url.rstrip('/')}/events/{quote(event_id)}" if base_url else ""


def alerts_link(base_url: str, alert: Alert) -> str:
    """The rule's alert history in the query API."""
    if not base_url:
        return ""
    return f"{base_url.rstrip('/')}/alerts?{urlencode({'rule': alert.rule})}"


def _event_line(event: EventBrief, base_url: str) -> str:
    where = " ".join(part for part in (event.event_type, event.node_id) if part)
    line = f"- {event.timestamp} {event.severity_text or '-'} {where} [{event.service_name}]: {event.body}"
    link = event_link(base_url, event.event_id)
    return f"{line}\n  {link}" if link else line


def event_json(event: EventBrief) -> str:
    """An event as indented JSON, as MADSci puts it in its alert emails."""
    return orjson.dumps(event.as_dict(), option=orjson.OPT_INDENT_2).decode()


def alert_fields(alert: Alert, base_url: str) -> dict[str, Any]:
    """Every template field of an alert; links start at `base_url` (the query API's public address)."""
    first = alert.events[0] if alert.events else None
    listed = "\n".join(_event_line(e, base_url) for e in alert.events)
    if alert.event_count > len(alert.events):
        listed += f"\n… and {alert.event_count - len(alert.events)} more"
    history = alerts_link(base_url, alert)
    status = {"firing": "ALERT", "resolved": "RESOLVED", "test": "TEST"}[alert.kind]
    return {
        "status": status,
        "kind": alert.kind,
        "level": alert.level,
        "title": alert.title,
        "summary": alert.summary,
        "rule": alert.rule,
        "rule_type": alert.rule_type,
        "key": alert.group_key or "(all)",
        "count": alert.event_count,
        "value": "" if alert.value is None else f"{alert.value:g}",
        "fired_at": datetime.fromtimestamp(alert.fired_at, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "alert_id": alert.alert_id,
        "event_id": first.event_id if first else "",
        "event_type": first.event_type if first else "",
        "node_id": first.node_id if first else "",
        "service": first.service_name if first else "",
        "body": first.body if first else "",
        "timestamp": first.timestamp if first else "",
        "severity": first.severity_text if first else "",
        "link": (event_link(base_url, first.event_id) if first else "") or history,
        "alerts_link": history,
        "events": listed or "(none listed)",
        "event_json": event_json(first) if first and alert.rule_type == "event" else "",
        "held_back": (
            f"({alert.held_back} earlier notifications were held back by the rate limit; see the alert history)\n"
            if alert.held_back
            else ""
        ),
    }
