"""Alerts as a JSON POST: labtel's own payload, or one a Slack or Microsoft Teams incoming webhook
takes (Slack: `text` and Block Kit `blocks`; Teams: a message with an Adaptive Card)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests

from labtel.collector.alerts.config import WebhookNotifierConfig
from labtel.collector.alerts.model import Alert
from labtel.collector.alerts.notifiers import DeliveryError
from labtel.collector.alerts.templates import alert_fields, event_link, render
from labtel.sdk import __version__
from labtel.sdk.textform import digits

_RETRYABLE = {408, 425, 429}


def json_payload(alert: Alert, base_url: str, subject: str) -> dict[str, Any]:
    """labtel's payload: the alert, its events and links, for programs that read it."""
    fields = alert_fields(alert, base_url)
    return {
        "alert_id": alert.alert_id,
        "kind": alert.kind,
        "status": fields["status"],
        "subject": subject,
        "summary": alert.summary,
        "rule": alert.rule,
        "rule_type": alert.rule_type,
        "level": alert.level,
        "key": alert.group_key,
        "fired_at": fields["fired_at"],
        "event_count": alert.event_count,
        "value": alert.value,
        "held_back": alert.held_back,
        "link": fields["link"],
        "alerts_link": fields["alerts_link"],
        "events": [{**e.as_dict(), "link": event_link(base_url, e.event_id)} for e in alert.events],
    }


def _event_lines(alert: Alert, base_url: str, link: str) -> list[str]:
    lines = []
    for event in alert.events:
        where = " ".join(part for part in (event.event_type, event.node_id) if part)
        url = event_link(base_url, event.event_id)
        text = f"{event.severity_text or '-'} {where}: {event.body}"
        lines.append(link.format(url=url, text=text) if url else text)
    if alert.event_count > len(alert.events):
        lines.append(f"… and {alert.event_count - len(alert.events)} more")
    return lines


def slack_payload(alert: Alert, base_url: str, subject: str) -> dict[str, Any]:
    """A Slack incoming webhook message: the subject as `text`, the details as blocks."""
    fields = alert_fields(alert, base_url)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": subject[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": alert.summary}},
    ]
    lines = _event_lines(alert, base_url, "<{url}|{text}>")
    if lines:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(f"• {x}" for x in lines)[:2900]}}
        )
    context = f"rule `{alert.rule}` · {fields['key']} · {fields['fired_at']}"
    if fields["alerts_link"]:
        context += f" · <{fields['alerts_link']}|alert history>"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": subject, "blocks": blocks}


def teams_payload(alert: Alert, base_url: str, subject: str) -> dict[str, Any]:
    """A Microsoft Teams (Workflows) incoming webhook message holding an Adaptive Card."""
    fields = alert_fields(alert, base_url)
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": subject, "weight": "Bolder", "size": "Medium", "wrap": True},
        {"type": "TextBlock", "text": alert.summary, "wrap": True},
        {
            "type": "FactSet",
            "facts": [
                {"title": "Rule", "value": alert.rule},
                {"title": "Group", "value": fields["key"]},
                {"title": "Level", "value": alert.level},
                {"title": "Fired", "value": fields["fired_at"]},
            ],
        },
    ]
    body += [
        {"type": "TextBlock", "text": line, "wrap": True} for line in _event_lines(alert, base_url, "[{text}]({url})")
    ]
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    if fields["link"]:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open in labtel", "url": fields["link"]}]
    return {
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}],
    }


PAYLOADS = {"json": json_payload, "slack": slack_payload, "teams": teams_payload}


def redacted(url: str) -> str:
    """A webhook URL as errors show it: scheme and host only (Slack's and Teams' paths are secrets,
    and errors reach `read` users in GET /alerts, in events and in the log)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def scrubbed(text: str, url: str) -> str:
    """`text` (an exception's, an answer's) without the URL's secret parts: its path, query and user."""
    parts = urlsplit(url)
    query = f"?{parts.query}" if parts.query else ""
    text = text.replace(url, redacted(url))
    secrets = [parts.path + query, parts.path, parts.query, parts.netloc.rpartition("@")[0]]
    for secret in sorted({s for s in secrets if len(s) > 1}, key=len, reverse=True):
        text = text.replace(secret, "/…" if secret.startswith("/") else "…")
    return text


class WebhookNotifier:
    """POSTs each alert as JSON to `url`."""

    def __init__(self, name: str, config: WebhookNotifierConfig) -> None:
        self.name = name
        self.config = config

    def payload(self, alert: Alert, base_url: str) -> dict[str, Any]:
        """The JSON document an alert becomes, in the configured `format`."""
        subject = " ".join(render(self.config.subject, alert_fields(alert, base_url)).split())
        return PAYLOADS[self.config.format](alert, base_url, subject)

    def send(self, alert: Alert, base_url: str) -> None:
        headers = {"User-Agent": f"labtel/{__version__}", **self.config.headers}
        try:
            response = requests.post(
                self.config.url,
                json=self.payload(alert, base_url),
                headers=headers,
                timeout=self.config.timeout.total_seconds(),
            )
        except requests.RequestException as error:
            raise DeliveryError(f"POST {redacted(self.config.url)}: {scrubbed(str(error), self.config.url)}") from None
        if response.status_code < 300:
            return
        retry_after = response.headers.get("Retry-After", "")
        answer = scrubbed(response.text[:200], self.config.url)
        raise DeliveryError(
            f"POST {redacted(self.config.url)}: HTTP {response.status_code} {answer}".strip(),
            retryable=response.status_code >= 500 or response.status_code in _RETRYABLE,
            retry_after_s=float(retry_after) if digits(retry_after) else None,
        )
