"""Delivering alerts off the ingest path: a queue, retries with back-off, rate limits per
notifier, the outcome in the history, and a failed delivery stored as an event of its own.

Alerts reach the dispatcher already recorded as `pending` in the history, so a collector that
stops mid-delivery sends them after its restart. Each notifier of an alert is tried up to
`retry.max_attempts` times, `initial_interval` doubling up to `max_interval` apart. A notifier
over its `rate_limit` holds the message back (recorded as `rate_limited`) and its next message
says how many it held back. When the last attempt fails, an `alert_delivery_failed` event is
stored, so the failure is visible (and alertable) like any other event, and the engine is told
(`undelivered`): a threshold or silence alert, firing or resolved, is then made again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from labtel.collector.alerts.engine import Clock
from labtel.collector.alerts.history import UNDELIVERED, Delivery, History, new_alert_id, overall_status
from labtel.collector.alerts.model import Alert
from labtel.collector.alerts.notifiers import DeliveryError, Notifier
from labtel.collector.alerts.rules import DELIVERY_FAILED, FAILURE_SERVICE
from labtel.collector.otlp.records import Record, logs_request
from labtel.collector.storage.client import Storage
from labtel.sdk import __version__, semconv

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """At most `count` messages in any `per` seconds (0 = no limit), on the dispatcher's clock."""

    def __init__(self, count: int, per_s: float, clock: Clock) -> None:
        self.count = count
        self.per_s = per_s
        self.clock = clock
        self._sent: deque[float] = deque()

    def allow(self) -> bool:
        """Whether one more message may go now (and count it if so)."""
        if self.count <= 0:
            return True
        now = self.clock()
        while self._sent and now - self._sent[0] >= self.per_s:
            self._sent.popleft()
        if len(self._sent) >= self.count:
            return False
        self._sent.append(now)
        return True


def failure_request(exporter: str, alert: Alert, delivery: Delivery) -> bytes:
    """The OTLP request carrying the `alert_delivery_failed` event of one failed delivery."""
    record = Record(
        body=(
            f"alert {alert.alert_id} of rule {alert.rule!r} could not be delivered to {delivery.notifier} "
            f"after {delivery.attempts} attempts: {delivery.error}"
        ),
        time_ns=time.time_ns(),
        severity_number=17,
        severity_text="ERROR",
        event_name=DELIVERY_FAILED,
        attributes={
            semconv.LAB_EVENT_TYPE: DELIVERY_FAILED,
            "lab.alert.id": alert.alert_id,
            "lab.alert.rule": alert.rule,
            "lab.alert.key": alert.group_key,
            "lab.alert.exporter": exporter,
            "lab.alert.notifier": delivery.notifier,
            "lab.alert.attempts": str(delivery.attempts),
            semconv.EXCEPTION_MESSAGE: delivery.error,
        },
        resource={semconv.SERVICE_NAME: FAILURE_SERVICE, "service.version": __version__},
    )
    return logs_request([record], "labtel.collector.alerts")


class Dispatcher:
    """Sends one alerts exporter's alerts through its notifiers, in tasks of its own."""

    def __init__(
        self,
        exporter: str,
        notifiers: dict[str, Notifier],
        history: History,
        storage: Storage,
        base_url: Callable[[], str],
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        workers: int = 2,
        undelivered: Callable[[Alert], None] | None = None,
    ) -> None:
        self.exporter = exporter
        self.notifiers = notifiers
        self.history = history
        self.storage = storage
        self.base_url = base_url
        self.clock = clock
        self.sleep = sleep
        self.undelivered = undelivered
        """Told (in a thread) of each alert no notifier delivered: its keys do not suppress later
        alerts, and a threshold or silence alert is made again (AlertEngine.undelivered)."""
        self._limits = {
            name: RateLimiter(n.config.rate_limit.count, n.config.rate_limit.per.total_seconds(), clock)
            for name, n in notifiers.items()
        }
        self._held: dict[str, int] = {}
        self._queue: asyncio.Queue[tuple[Alert, Sequence[Delivery]]] = asyncio.Queue()
        self._threads = ThreadPoolExecutor(max(2, len(notifiers) + 1), thread_name_prefix=f"{exporter}-send")
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self.delivered: list[tuple[Alert, list[Delivery]]] = []
        """Settled alerts of this process, newest last (kept short; the history has them all)."""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work()) for _ in range(self._workers)]

    async def shutdown(self) -> None:
        """Stop sending; alerts not settled stay pending in the history and go out after a restart."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._threads.shutdown(wait=False, cancel_futures=True)

    def submit(self, alert: Alert, settled: Sequence[Delivery] = ()) -> None:
        """Queue an alert for delivery (but not to the notifiers `settled` already); returns at once."""
        self._queue.put_nowait((alert, settled))

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def _work(self) -> None:
        while True:
            alert, settled = await self._queue.get()
            try:
                await self.deliver(alert, settled)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: delivering alert %s failed", self.exporter, alert.alert_id)
            finally:
                self._queue.task_done()

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    async def deliver(self, alert: Alert, settled: Sequence[Delivery] = ()) -> list[Delivery]:
        """Send an alert through each of its notifiers but those `settled` before a restart,
        record how it went, report failures.

        Each notifier's outcome is in the history as soon as it is known (the alert stays
        `pending` while others are sending), so a restart sends only to the notifiers left."""
        order = [n for n in alert.notifiers if n in self.notifiers]
        deliveries = [d for d in settled if d.notifier in order]
        names = [n for n in order if n not in {d.notifier for d in deliveries}]
        recording = asyncio.Lock()  # one write at a time: each later version holds more outcomes

        async def settle(name: str) -> None:
            delivery = await self._deliver_and_report(alert, name)
            async with recording:
                deliveries.append(delivery)
                if len(deliveries) < len(order):
                    await self._blocking(self.history.record, [(alert, "pending")], list(deliveries))

        await asyncio.gather(*(settle(name) for name in names))
        deliveries.sort(key=lambda d: order.index(d.notifier))
        status = overall_status(deliveries)
        await self._blocking(self.history.record, [(alert, status)], deliveries)
        if status in UNDELIVERED and self.undelivered is not None:
            await self._blocking(self.undelivered, alert)
        self.delivered = [*self.delivered[-99:], (alert, deliveries)]
        return deliveries

    async def _deliver_and_report(self, alert: Alert, name: str) -> Delivery:
        """Deliver through one notifier; a final failure is stored as an event at once (not
        when the alert's slowest notifier is done)."""
        delivery = await self._deliver_one(alert, name)
        if delivery.status == "failed":
            log.warning("%s: alert %s not delivered to %s: %s", self.exporter, alert.alert_id, name, delivery.error)
            try:
                data = failure_request(self.exporter, alert, delivery)
                await self._blocking(self.storage.insert_otlp, "logs", data, uuid.uuid4().hex)
            except Exception:
                log.exception("%s: storing the delivery failure of alert %s failed", self.exporter, alert.alert_id)
        return delivery

    async def _deliver_one(self, alert: Alert, name: str, attempts: int | None = None) -> Delivery:
        notifier = self.notifiers[name]
        retry = notifier.config.retry
        if alert.kind != "test" and not self._limits[name].allow():
            self._held[name] = self._held.get(name, 0) + 1
            return Delivery(name, "rate_limited", 0, "over the rate limit", self.clock())
        held = self._held.pop(name, 0)
        message = replace(alert, held_back=held) if held else alert
        limit = retry.max_attempts if attempts is None else attempts
        for attempt in range(1, limit + 1):
            try:
                await self._blocking(notifier.send, message, self.base_url())
                return Delivery(name, "delivered", attempt, "", self.clock())
            except DeliveryError as error:
                if not error.retryable or attempt == limit:
                    if held:
                        self._held[name] = self._held.get(name, 0) + held
                    return Delivery(name, "failed", attempt, error.message, self.clock())
                wait = min(max(retry.interval(attempt), error.retry_after_s or 0.0), retry.max_interval.total_seconds())
                log.info("%s: %s failed (attempt %d), retrying in %.1fs: %s", self.exporter, name, attempt, wait, error)
                await self.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns")

    async def test(self, names: Sequence[str]) -> tuple[Alert, list[Delivery]]:
        """Send a test notification through the named notifiers once each (no retries, no rate
        limit) and record it in the history."""
        alert = Alert(
            alert_id=new_alert_id(),
            exporter=self.exporter,
            kind="test",
            rule="test",
            rule_type="test",
            level="INFO",
            group_key="",
            fired_at=self.clock(),
            summary="a test notification from labtel: if you read this, alerts reach you",
            notifiers=list(names),
        )
        deliveries = list(await asyncio.gather(*(self._deliver_one(alert, n, attempts=1) for n in names)))
        await self._blocking(self.history.record, [(alert, overall_status(deliveries))], deliveries)
        return alert, deliveries
