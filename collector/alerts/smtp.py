"""Alerts by email over SMTP: STARTTLS, implicit TLS or plain, with optional login.

The message follows MADSci's: subject `ALERT ({level}): {type}` by default, the event in the
body, and the event id in `X-MADSci-Event-ID` (plus labtel's own `X-Labtel-Alert-ID`).
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from labtel.collector.alerts.config import EmailNotifierConfig
from labtel.collector.alerts.model import Alert
from labtel.collector.alerts.notifiers import DeliveryError
from labtel.collector.alerts.templates import alert_fields, render


class EmailNotifier:
    """Sends each alert as one message to every `to` and `cc` address."""

    def __init__(self, name: str, config: EmailNotifierConfig) -> None:
        self.name = name
        self.config = config

    def message(self, alert: Alert, base_url: str) -> EmailMessage:
        """The email an alert becomes."""
        config = self.config
        fields = alert_fields(alert, base_url)
        message = EmailMessage()
        message["Subject"] = " ".join(render(config.subject, fields).split())
        message["From"] = config.from_
        message["To"] = ", ".join(config.to)
        if config.cc:
            message["Cc"] = ", ".join(config.cc)
        message["Date"] = formatdate(alert.fired_at, usegmt=True)
        message["Message-ID"] = make_msgid(idstring=alert.alert_id[:8], domain="labtel")
        message["X-Labtel-Alert-ID"] = alert.alert_id
        message["X-Labtel-Rule"] = alert.rule
        if alert.events:
            message["X-MADSci-Event-ID"] = alert.events[0].event_id
        message.set_content(render(config.body, fields))
        return message

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.config.verify_certificate:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def send(self, alert: Alert, base_url: str) -> None:
        config = self.config
        message = self.message(alert, base_url)
        timeout = config.timeout.total_seconds()
        try:
            if config.security == "tls":
                client: smtplib.SMTP = smtplib.SMTP_SSL(
                    config.host, config.port, timeout=timeout, context=self._context()
                )
            else:
                client = smtplib.SMTP(config.host, config.port, timeout=timeout)
            with client:
                if config.security == "starttls":
                    client.starttls(context=self._context())
                if config.username:
                    client.login(config.username, config.password.get_secret_value())
                client.send_message(message, config.from_, [*config.to, *config.cc])
        except smtplib.SMTPRecipientsRefused as error:
            raise DeliveryError(f"recipients refused: {sorted(error.recipients)}", retryable=False) from None
        except smtplib.SMTPResponseException as error:
            text = error.smtp_error.decode(errors="replace") if isinstance(error.smtp_error, bytes) else str(error)
            # 4xx is transient by SMTP's own rules; 5xx (bad login, refused sender) is not.
            retryable = 400 <= error.smtp_code < 500
            raise DeliveryError(f"SMTP {error.smtp_code}: {text}", retryable=retryable) from None
        except (OSError, smtplib.SMTPException) as error:
            raise DeliveryError(f"SMTP {config.host}:{config.port}: {error or type(error).__name__}") from None
