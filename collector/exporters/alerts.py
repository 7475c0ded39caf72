"""The `alerts` exporter: rules over the events a `clickhouse` exporter stored, and notifications.

It sits in a logs pipeline beside the `clickhouse` exporter, which stores first; then this
exporter's `consume_batch` only wakes the engine and returns, so alerting can never slow or fail
ingest. The engine (labtel.collector.alerts.engine) evaluates on its own task, in a thread,
every `interval` or when woken; the dispatcher (labtel.collector.alerts.delivery) sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from labtel.collector.alerts.config import AlertsExporterConfig
from labtel.collector.alerts.delivery import Dispatcher
from labtel.collector.alerts.engine import AlertEngine, Clock
from labtel.collector.alerts.history import Delivery
from labtel.collector.alerts.model import Alert
from labtel.collector.alerts.notifiers import build_notifier
from labtel.collector.component import Payload, Verdict
from labtel.collector.storage.client import Storage

log = logging.getLogger(__name__)


class AlertsExporter:
    """A BatchConsumer that never stores anything: it wakes the alert engine."""

    def __init__(self, name: str, config: AlertsExporterConfig, storage: Storage, clock: Clock = time.time) -> None:
        self.name = name
        self.config = config
        self.storage = storage
        self.engine = AlertEngine(name, config, storage, clock)
        notifiers = {n: build_notifier(n, c) for n, c in config.notifiers.items()}
        self.dispatcher = Dispatcher(
            name, notifiers, self.engine.history, storage, self.base_url, clock, undelivered=self.engine.undelivered
        )
        self._api_url: Callable[[], str] = lambda: ""
        self._wake = asyncio.Event()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-engine")
        self._task: asyncio.Task[None] | None = None

    def set_api_url(self, api_url: Callable[[], str]) -> None:
        """Where the query API answers, for links in notifications when `public_url` is unset."""
        self._api_url = api_url

    def base_url(self) -> str:
        """The start of every link in a notification."""
        return self.config.public_url.rstrip("/") or self._api_url()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.dispatcher.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def shutdown(self) -> None:
        """Stop evaluating and sending; what was not sent is pending in the history."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.dispatcher.shutdown()
        self._thread.shutdown(wait=True, cancel_futures=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.interval.total_seconds()
        loaded = False
        while True:
            try:
                if not loaded:
                    for alert, settled in await loop.run_in_executor(self._thread, self.engine.load):
                        self.dispatcher.submit(alert, settled)  # pending when the collector last stopped
                    loaded = True
                result = await loop.run_in_executor(self._thread, self.engine.evaluate)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("%s: evaluating alert rules failed, will retry: %s", self.name, error)
            else:
                for alert in result.deliver:
                    self.dispatcher.submit(alert)
                if result.more:
                    continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            self._wake.clear()

    # --- the pipeline ----------------------------------------------------------------------

    async def consume_batch(self, batch: Sequence[Payload]) -> list[Verdict]:
        """The batch is stored (the pipeline's clickhouse exporter ran first): look at it soon."""
        self._wake.set()
        return [None] * len(batch)

    # --- for the query API -----------------------------------------------------------------

    async def test(self, notifiers: Sequence[str]) -> tuple[Alert, list[Delivery]]:
        """Send a test notification through the named notifiers now."""
        return await self.dispatcher.test(notifiers)
