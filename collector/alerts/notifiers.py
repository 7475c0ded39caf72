"""What every notifier is: something that sends one alert somewhere, or says why it could not.

Notifiers are blocking (smtplib, requests) and run on the dispatcher's threads, never on the
event loop or the ingest path (labtel.collector.alerts.delivery).
"""

from __future__ import annotations

from typing import Protocol

from labtel.collector.alerts.config import EmailNotifierConfig, NotifierConfig, WebhookNotifierConfig
from labtel.collector.alerts.model import Alert


class DeliveryError(Exception):
    """Sending failed; `retryable` says whether trying again may help (a 5xx or a refused
    connection may; a 4xx or a rejected address will not)."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class Notifier(Protocol):
    """Sends one alert; links in it start at `base_url` (the query API's public address)."""

    name: str

    @property
    def config(self) -> NotifierConfig: ...

    def send(self, alert: Alert, base_url: str) -> None: ...


def build_notifier(name: str, config: NotifierConfig) -> Notifier:
    """The notifier a config section describes."""
    if isinstance(config, EmailNotifierConfig):
        from labtel.collector.alerts.smtp import EmailNotifier

        return EmailNotifier(name, config)
    assert isinstance(config, WebhookNotifierConfig)
    from labtel.collector.alerts.webhook import WebhookNotifier

    return WebhookNotifier(name, config)
