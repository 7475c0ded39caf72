"""The `batch` processor: group commit.

Concurrent Export calls wait in one queue; a flush hands everything pending (up to the size
limits) to the next component as one batch, and each call is answered from the verdict of the
batch that carried it. A flush happens when `send_batch_size` records or `send_batch_max_bytes`
are pending, or when the oldest call has waited `timeout`, and at most `max_in_flight` batches
are being stored at once. When more than `queue_size` records wait, new calls are pushed back
with ExportUnavailable instead of growing memory without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from labtel.collector import telemetry
from labtel.collector.component import (
    BatchConsumer,
    ExportRejected,
    ExportUnavailable,
    PartialSuccess,
    Payload,
    Verdict,
)
from labtel.collector.config import BatchProcessorConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Waiting:
    payload: Payload
    future: asyncio.Future[Verdict]
    since: float


class GroupCommit:
    """A Consumer that gathers payloads into batches for a BatchConsumer."""

    def __init__(
        self,
        config: BatchProcessorConfig,
        next_consumer: BatchConsumer,
        max_in_flight: int = 2,
        queue_size: int = 200_000,
        name: str = "logs",
    ) -> None:
        self._gauge = telemetry.QUEUE_RECORDS.labels(name)
        self._timeout_s = config.timeout.total_seconds()
        self._min_records = config.send_batch_size
        self._max_records = config.send_batch_max_size or config.send_batch_size * 2
        self._max_bytes = config.send_batch_max_bytes
        self._next = next_consumer
        self._max_in_flight = max_in_flight
        self._queue_size = queue_size
        self._waiting: deque[_Waiting] = deque()
        self._waiting_records = 0
        self._waiting_bytes = 0
        self._in_flight = 0
        self._in_flight_records = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def queued_records(self) -> int:
        """Records waiting for, or inside, an insert."""
        return self._waiting_records + self._in_flight_records

    async def consume(self, payload: Payload) -> PartialSuccess | None:
        if self._closing:
            raise ExportUnavailable("the collector is shutting down", retry_after_s=1.0)
        if self.queued_records and self.queued_records + payload.records > self._queue_size:
            raise ExportUnavailable(
                f"ingest queue is full ({self.queued_records} records waiting, queue_size {self._queue_size})",
                retry_after_s=1.0,
            )
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(payload, future, time.monotonic()))
        self._waiting_records += payload.records
        self._waiting_bytes += len(payload.data)
        self._gauge.set(self.queued_records)
        self._schedule()
        return answer(await future)

    def _due(self) -> bool:
        if not self._waiting:
            return False
        if self._closing or self._waiting_records >= self._min_records or self._waiting_bytes >= self._max_bytes:
            return True
        return time.monotonic() - self._waiting[0].since >= self._timeout_s

    def _schedule(self) -> None:
        while self._in_flight < self._max_in_flight and self._due():
            self._start_flush(self._take())
        if self._waiting and self._timer is None and not self._due():
            delay = max(0.0, self._waiting[0].since + self._timeout_s - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule()

    def _take(self) -> list[_Waiting]:
        batch: list[_Waiting] = []
        records = size = 0
        while self._waiting:
            item = self._waiting[0]
            if batch and (
                records + item.payload.records > self._max_records or size + len(item.payload.data) > self._max_bytes
            ):
                break
            self._waiting.popleft()
            batch.append(item)
            records += item.payload.records
            size += len(item.payload.data)
        self._waiting_records -= records
        self._waiting_bytes -= size
        return batch

    def _start_flush(self, batch: list[_Waiting]) -> None:
        self._in_flight += 1
        records = sum(item.payload.records for item in batch)
        self._in_flight_records += records
        task = asyncio.get_running_loop().create_task(self._flush(batch, records))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[_Waiting], records: int) -> None:
        try:
            verdicts = await self._next.consume_batch([item.payload for item in batch])
        except ExportUnavailable as error:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        except Exception as error:  # a bug must not leave callers waiting forever
            log.exception("storing a batch failed unexpectedly")
            failure = ExportUnavailable(f"storage failed: {error}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(failure)
        else:
            for item, verdict in zip(batch, verdicts, strict=True):
                if not item.future.done():
                    item.future.set_result(verdict)
        finally:
            self._in_flight -= 1
            self._in_flight_records -= records
            self._gauge.set(self.queued_records)
            self._schedule()

    async def start(self) -> None:
        return None

    async def shutdown(self) -> None:
        """Store everything still waiting, then return."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._schedule()
        while self._tasks or self._waiting:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            self._schedule()


class Passthrough:
    """A Consumer that stores each payload on its own (a pipeline without `batch`)."""

    def __init__(self, next_consumer: BatchConsumer) -> None:
        self._next = next_consumer

    async def consume(self, payload: Payload) -> PartialSuccess | None:
        (verdict,) = await self._next.consume_batch([payload])
        return answer(verdict)

    async def start(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None


def answer(verdict: Verdict) -> PartialSuccess | None:
    """A consumer's answer from a payload's verdict: raises ExportRejected for a rejected payload."""
    if isinstance(verdict, str):
        raise ExportRejected(verdict)
    return verdict


def merge_verdicts(per_exporter: Sequence[Sequence[Verdict]]) -> list[Verdict]:
    """A payload is stored when every exporter stored it; the first rejection wins (a whole
    rejection over a partial one)."""
    merged: list[Verdict] = [None] * len(per_exporter[0])
    for verdicts in per_exporter:
        for index, verdict in enumerate(verdicts):
            current = merged[index]
            if (isinstance(verdict, str) and not isinstance(current, str)) or (
                isinstance(verdict, PartialSuccess) and current is None
            ):
                merged[index] = verdict
    return merged
