"""The `clickhouse` exporter: stores batches of Export requests in ClickHouse.

The fast path inserts the concatenated requests of a batch in one statement and lets
ClickHouse parse and flatten them (see labtel.collector.storage.schema). If ClickHouse refuses
the batch, each request is triaged in Python: invalid requests are rejected with a precise
message, the rest are normalized (the exact path) and inserted again. Only when the data is
fine and storage still fails is the whole batch answered "unavailable, retry".
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

from labtel.collector.component import ExportUnavailable, Payload, Verdict
from labtel.collector.config import ClickHouseExporterConfig
from labtel.collector.otlp.exact import triage
from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage

log = logging.getLogger(__name__)


class ClickHouseExporter:
    """A BatchConsumer writing one signal's payloads into ClickHouse."""

    def __init__(self, name: str, config: ClickHouseExporterConfig, storage: Storage) -> None:
        self.name = name
        self.config = config
        self.storage = storage

    async def start(self) -> None:
        """Create or upgrade the schema (when `create_schema`) and apply the configured TTLs."""
        if self.config.create_schema:
            await asyncio.to_thread(migrations.migrate, self.storage)
            ttls = {signal: self.config.signal_ttl(signal) for signal in ("logs", "traces")}
            await asyncio.to_thread(migrations.reconcile_ttl, self.storage, ttls)

    async def shutdown(self) -> None:
        return None

    async def consume_batch(self, batch: Sequence[Payload]) -> list[Verdict]:
        return await asyncio.to_thread(self.store, batch)

    def store(self, batch: Sequence[Payload]) -> list[Verdict]:
        """Insert a batch (blocking); one verdict per payload. Raises ExportUnavailable."""
        if not batch:
            return []
        signal = batch[0].signal.name
        token = uuid.uuid4().hex
        try:
            self.storage.insert_otlp(signal, b"".join(p.data for p in batch), token)
        except Exception as error:
            return self._store_with_triage(batch, error, token)
        return [None] * len(batch)

    def _store_with_triage(self, batch: Sequence[Payload], first_error: Exception, token: str) -> list[Verdict]:
        signal = batch[0].signal
        verdicts: list[Verdict] = [None] * len(batch)
        good: list[tuple[int, bytes]] = []
        for index, payload in enumerate(batch):
            result = triage(signal, payload.data)
            if result.error is not None:
                verdicts[index] = result.error
            elif result.data:
                good.append((index, result.data))
        if not good:
            return verdicts
        # Unchanged data keeps its dedup token: if the first insert did land (a timeout after
        # the server stored it), the retry is recognized and not stored twice.
        unchanged = len(good) == len(batch) and all(data == batch[i].data for i, data in good)
        try:
            self.storage.insert_otlp(
                signal.name, b"".join(data for _, data in good), token if unchanged else uuid.uuid4().hex
            )
            return verdicts
        except Exception as error:
            if not self.storage.ping():
                raise ExportUnavailable(f"storage is unavailable: {_short(error)}", retry_after_s=2.0) from error
            retry_error = error
        log.warning(
            "%s: a batch failed twice (%s; %s); storing its requests one by one",
            self.name,
            _short(first_error),
            _short(retry_error),
        )
        refused: dict[int, str] = {}
        for index, data in good:
            try:
                self.storage.insert_otlp(signal.name, data, uuid.uuid4().hex)
            except Exception as error:
                refused[index] = _short(error)
        if len(refused) == len(good):
            # Nothing valid could be stored: that is storage's fault (a missing table, a full
            # disk), not the data's, so the callers retry instead of losing their records.
            raise ExportUnavailable(f"storage refuses inserts: {next(iter(refused.values()))}", retry_after_s=5.0)
        for index, reason in refused.items():
            log.error("%s: storage refused a valid-looking request: %s", self.name, reason)
            verdicts[index] = f"storage refused the data: {reason}"
        return verdicts


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:500]
