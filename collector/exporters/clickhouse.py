"""The `clickhouse` exporter: stores batches of Export requests in ClickHouse, losing none.

Storing a batch: its requests are concatenated and inserted in one statement; ClickHouse parses
and flattens them (labtel.collector.storage.schema). If ClickHouse refuses the batch, each
request is triaged in Python: invalid ones are rejected with a precise message, the rest are
normalized (the exact path) and inserted again.

Acknowledging a batch: when it is stored, or, with a write-ahead log configured, when it is
validated and fsynced to the log because the insert failed or is taking longer than
`wal_ack_after`. Logged batches are stored later by the replayer, with back-off, exactly once:
every row keeps its batch id, so a batch that already landed (wholly or partly) is recognized.
A logged batch that storage refuses (up, but not taking it) is stored request by request and
only the requests it refuses are set aside in the log's quarantine/. When storage fails and the
log is full, callers are pushed back (retry later).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from labtel.collector import telemetry
from labtel.collector.component import ExportUnavailable, PartialSuccess, Payload, Verdict
from labtel.collector.config import SIGNALS as PIPELINE_SIGNALS
from labtel.collector.config import ClickHouseExporterConfig
from labtel.collector.otlp.exact import triage
from labtel.collector.otlp.limits import DEFAULT_LIMITS, RecordLimits
from labtel.collector.otlp.signals import SIGNALS, Signal
from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage, StorageError
from labtel.collector.storage.errors import transient
from labtel.collector.storage.interrupt import Interrupt
from labtel.collector.wal import WALEntry, WALFull, WriteAheadLog

log = logging.getLogger(__name__)
T = TypeVar("T")

_QUARANTINE_AFTER = 8
"""Replays of one batch that may fail while storage is otherwise healthy, refusing every request
of it, before it is set aside whole (a batch of which storage refuses only some requests has
those set aside at once, the others stored)."""


@dataclass(frozen=True)
class Triaged:
    """A batch checked in Python: per-request verdicts and the valid requests, normalized."""

    verdicts: list[Verdict]
    requests: list[bytes]
    records: int
    owners: list[int]
    """Per request: the index of the payload it comes from."""
    counts: list[int]
    """Per request: its records."""


def triage_batch(signal: Signal, batch: Sequence[Payload], limits: RecordLimits = DEFAULT_LIMITS) -> Triaged:
    """Check each payload of a batch in Python: its verdict, and what of it is to be stored."""
    verdicts: list[Verdict] = []
    requests: list[bytes] = []
    owners: list[int] = []
    counts: list[int] = []
    for index, payload in enumerate(batch):
        result = triage(signal, payload.data, limits)
        if result.error is None and result.rejected:
            assert result.rejection is not None
            verdicts.append(PartialSuccess(result.rejected, result.rejection))
        else:
            verdicts.append(result.error)
        if result.error is None and result.data:
            requests.append(result.data)
            owners.append(index)
            counts.append(result.records)
    return Triaged(verdicts, requests, sum(counts), owners, counts)


class ClickHouseExporter:
    """A BatchConsumer writing payloads into ClickHouse."""

    def __init__(
        self, name: str, config: ClickHouseExporterConfig, storage: Storage, wal: WriteAheadLog | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.storage = storage
        self.wal = wal
        consumers = config.sending_queue.num_consumers
        self._inserts = ThreadPoolExecutor(consumers, thread_name_prefix=f"{name}-insert")
        self._chores = ThreadPoolExecutor(2, thread_name_prefix=f"{name}-wal")
        self._slots = asyncio.Semaphore(consumers)
        self._ack_after_s = config.sending_queue.wal_ack_after.total_seconds()
        self._in_flight: set[str] = set()
        self._pending: set[asyncio.Task[list[Verdict]]] = set()
        self._replay_failures: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._replayer: asyncio.Task[None] | None = None
        self._closing = False
        self._start_interrupt = Interrupt()
        telemetry.STORAGE_UP.labels(name).set(1)
        if wal is not None and wal.quarantined_on_load:
            telemetry.WAL_QUARANTINED.labels(name).inc(wal.quarantined_on_load)
        self._publish_wal()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create or upgrade the schema (when `create_schema`), apply TTLs, replay the log.
        Raises StartInterrupted when `interrupt_start` is called meanwhile."""
        interrupt = self._start_interrupt
        interrupt.check("before the migrations")
        if self.config.create_schema:
            await self._chore(functools.partial(migrations.migrate, self.storage, interrupt=interrupt))
            ttls = {signal: self.config.signal_ttl(signal) for signal in PIPELINE_SIGNALS}
            await self._chore(migrations.reconcile_ttl, self.storage, ttls, interrupt)
        else:
            # The operator owns the schema: it must already be what this version writes to.
            missing = await self._chore(migrations.ingest_ready, self.storage)
            if missing:
                raise StorageError(
                    f"exporters.{self.name}: create_schema is false and {', '.join(missing)} "
                    "is missing; run `labtel migrate` with this labtel version"
                )
        if self.wal is not None:
            self._replayer = asyncio.get_running_loop().create_task(self._replay_forever())

    async def interrupt_start(self) -> None:
        """Stop a `start` under way promptly: its migration statement under way is cancelled."""
        await asyncio.to_thread(self._start_interrupt.stop)

    async def shutdown(self) -> None:
        """Finish inserts under way, give logged batches one last chance, release threads."""
        self._closing = True
        if self._pending:
            await asyncio.wait(self._pending, timeout=max(30.0, self.config.timeout.total_seconds()))
        if self._replayer is not None:
            self._wake.set()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._replayer, timeout=15.0)
        self._inserts.shutdown(wait=True, cancel_futures=True)
        self._chores.shutdown(wait=True, cancel_futures=True)

    # --- storing ---------------------------------------------------------------------------

    async def consume_batch(self, batch: Sequence[Payload]) -> list[Verdict]:
        if not batch:
            return []
        batch_id = uuid.uuid4().hex
        if self.wal is None:
            async with self._slots:
                return await self._insert(self.store, batch, batch_id)
        if self._slots.locked():
            # Every insert worker is busy: log the batch now, the replayer stores it.
            return await self._log(batch, batch_id, in_flight=None)
        await self._slots.acquire()
        self._in_flight.add(batch_id)
        task = asyncio.get_running_loop().create_task(self._insert_in_slot(batch, batch_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        done, _ = await asyncio.wait({task}, timeout=self._ack_after_s)
        if not done:
            return await self._log(batch, batch_id, in_flight=task)  # slow insert: log it and answer now
        self._in_flight.discard(batch_id)
        try:
            return task.result()
        except ExportUnavailable:
            return await self._log(batch, batch_id, in_flight=None)

    async def _insert_in_slot(self, batch: Sequence[Payload], batch_id: str) -> list[Verdict]:
        try:
            return await self._insert(self.store, batch, batch_id)
        finally:
            self._slots.release()

    async def _insert(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._inserts, fn, *args)

    async def _chore(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._chores, fn, *args)

    async def _log(
        self, batch: Sequence[Payload], batch_id: str, in_flight: asyncio.Task[list[Verdict]] | None
    ) -> list[Verdict]:
        """Acknowledge from the write-ahead log: validate, fsync, answer."""
        assert self.wal is not None
        signal = batch[0].signal
        checked = await self._chore(triage_batch, signal, batch, self.storage.names.limits)
        if not checked.requests:
            self._in_flight.discard(batch_id)
            return checked.verdicts
        try:
            await self._chore(self.wal.append, batch_id, signal.name, checked.requests, checked.records)
        except WALFull as full:
            if in_flight is not None:
                return await in_flight  # no room to log it: wait for the insert after all
            self._in_flight.discard(batch_id)
            raise ExportUnavailable(f"storage is unavailable and {full}", retry_after_s=5.0) from None
        telemetry.WAL_APPENDS.labels(self.name).inc()
        self._publish_wal()
        if in_flight is None:
            self._in_flight.discard(batch_id)
            self._wake.set()
        else:
            in_flight.add_done_callback(lambda task: self._settle(batch_id, task))
        return checked.verdicts

    def _settle(self, batch_id: str, task: asyncio.Task[list[Verdict]]) -> None:
        """An insert whose batch was also logged has finished."""
        self._in_flight.discard(batch_id)
        if not task.cancelled() and task.exception() is None and self.wal is not None:
            self.wal.remove(batch_id)
            self._publish_wal()
        else:
            self._wake.set()

    def store(self, batch: Sequence[Payload], batch_id: str) -> list[Verdict]:
        """Insert a batch (blocking); one verdict per payload. Raises ExportUnavailable."""
        signal = batch[0].signal
        data = b"".join(p.data for p in batch)
        try:
            self._timed_insert(signal, data, batch_id, failure=None)
        except Exception as error:
            return self._store_with_triage(batch, batch_id, error)
        telemetry.STORED_RECORDS.labels(self.name, signal.name, "fast").inc(sum(p.records for p in batch))
        return [None] * len(batch)

    def _timed_insert(
        self, signal: Signal, data: bytes, batch_id: str, *, deduplicate: bool = True, failure: str | None = "failed"
    ) -> None:
        """Insert and count it; a failure is counted under the outcome `failure` (None: the
        caller counts it once it knows whether storage is down or refused the data)."""
        started = time.perf_counter()
        try:
            self.storage.insert_otlp(signal.name, data, batch_id, deduplicate=deduplicate)
        except Exception:
            if failure is not None:
                telemetry.INSERTS.labels(self.name, signal.name, failure).inc()
            raise
        telemetry.INSERTS.labels(self.name, signal.name, "ok").inc()
        telemetry.INSERT_LATENCY.labels(self.name, signal.name).observe(time.perf_counter() - started)
        telemetry.STORAGE_UP.labels(self.name).set(1)

    def _storage_down(self, error: Exception) -> ExportUnavailable:
        telemetry.STORAGE_UP.labels(self.name).set(0)
        return ExportUnavailable(f"storage is unavailable: {_short(error)}", retry_after_s=2.0)

    def _store_with_triage(self, batch: Sequence[Payload], batch_id: str, first_error: Exception) -> list[Verdict]:
        signal = batch[0].signal
        if not self.storage.ping():
            telemetry.INSERTS.labels(self.name, signal.name, "failed").inc()
            raise self._storage_down(first_error)
        # Storage is up: it refused the data (for the fast path; the exact path takes it).
        telemetry.INSERTS.labels(self.name, signal.name, "refused").inc()
        deleted = self._discard_partial(signal, batch_id)
        checked = triage_batch(signal, batch, self.storage.names.limits)
        if not checked.requests:
            return checked.verdicts
        # Same batch id: a first insert that failed stored nothing under it, and a replay that
        # finds rows under it knows they are these.
        try:
            self._timed_insert(signal, b"".join(checked.requests), batch_id, deduplicate=not deleted)
        except Exception as error:
            if not self.storage.ping():
                raise self._storage_down(error) from error
            self._discard_partial(signal, batch_id)
            return self._store_one_by_one(signal, checked, batch_id, error)
        telemetry.STORED_RECORDS.labels(self.name, signal.name, "exact").inc(checked.records)
        return checked.verdicts

    def _store_one_by_one(self, signal: Signal, checked: Triaged, batch_id: str, error: Exception) -> list[Verdict]:
        """Storage is up but refuses a validated batch: insert its requests one at a time, so
        that one request it refuses (a case the exact path does not know) costs only its own
        caller, who is told why. When it refuses every one, storage is at fault, not the data:
        the batch is retried later (or logged)."""
        verdicts = list(checked.verdicts)
        refused: list[tuple[int, Exception]] = []
        for request, owner, count in zip(checked.requests, checked.owners, checked.counts, strict=True):
            try:
                self._timed_insert(signal, request, batch_id, deduplicate=False, failure="refused")
            except Exception as failure:
                if not self.storage.ping():
                    raise self._storage_down(failure) from failure
                refused.append((owner, failure))
                continue
            telemetry.STORED_RECORDS.labels(self.name, signal.name, "exact").inc(count)
        if len(refused) == len(checked.requests):
            self._discard_partial(signal, batch_id)
            log.error("%s: storage refuses a validated batch: %s", self.name, _short(error))
            raise ExportUnavailable(f"storage refuses inserts: {_short(error)}", retry_after_s=5.0) from error
        for owner, reason in refused:
            log.error("%s: storage refuses one validated request of a batch: %s", self.name, _short(reason))
            verdicts[owner] = f"storage refuses this request: {_short(reason)}"
        return verdicts

    def _discard_partial(self, signal: Signal, batch_id: str) -> bool:
        """Remove what a failed insert stored of a batch, before it is stored again or given up;
        whether there was any.

        Only metrics need this: an insert fills their five tables one after another, so it can
        fail after some were written (logs and traces fill one table, all or nothing)."""
        if len(self.storage.names.storage_tables(signal.name)) > 1 and self.storage.batch_rows(signal.name, batch_id):
            self.storage.delete_batch(signal.name, batch_id)
            return True
        return False

    # --- replaying the write-ahead log ----------------------------------------------------

    async def _replay_forever(self) -> None:
        assert self.wal is not None
        retry = self.config.retry_on_failure
        delay = retry.initial_interval.total_seconds()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()
            entries = [e for e in self.wal.entries() if e.batch_id not in self._in_flight]
            failed = False
            for entry in entries:
                async with self._slots:
                    try:
                        await self._insert(self.replay, entry)
                    except Exception as error:
                        telemetry.RETRIES.labels(self.name).inc()
                        log.warning(
                            "%s: storing logged batch %s failed, will retry: %s",
                            self.name,
                            entry.batch_id,
                            _short(error),
                        )
                        failed = True
                        break
                self._publish_wal()
            if self._closing and (failed or not self.wal.entries()):
                return
            if failed:
                delay = min(delay * 2, retry.max_interval.total_seconds())
            else:
                delay = retry.initial_interval.total_seconds()

    def replay(self, entry: WALEntry) -> None:
        """Store one logged batch exactly once (blocking); raises when it is kept to be tried
        again (storage is away, or refuses every request of it)."""
        assert self.wal is not None
        try:
            data = entry.read()
        except (OSError, ValueError) as error:
            self.wal.quarantine(entry, str(error))
            telemetry.WAL_QUARANTINED.labels(self.name).inc()
            return
        signal = SIGNALS[entry.signal]
        stored = self.storage.batch_rows(entry.signal, entry.batch_id)
        if stored != entry.records:
            if stored:
                log.warning(
                    "%s: batch %s was partly stored (%d of %d rows); storing it again",
                    self.name,
                    entry.batch_id,
                    stored,
                    entry.records,
                )
                self.storage.delete_batch(entry.signal, entry.batch_id)
            try:
                self._timed_insert(signal, data, entry.batch_id, deduplicate=not stored, failure=None)
            except Exception as error:
                self._replay_refused(entry, signal, data, error)
                return
            telemetry.STORED_RECORDS.labels(self.name, entry.signal, "replay").inc(entry.records)
        self._replay_failures.pop(entry.batch_id, None)
        self.wal.remove(entry.batch_id)

    def _replay_refused(self, entry: WALEntry, signal: Signal, data: bytes, error: Exception) -> None:
        """Storing a logged batch failed. Storage away: it is kept (raises). Storage refusing it:
        its requests are stored one by one, as on the live path, and only those refused are set
        aside (a smaller WAL file in quarantine/); when every one is refused, storage is more
        likely at fault than the data, so the batch is kept (raises) and set aside whole only
        after `_QUARANTINE_AFTER` tries."""
        assert self.wal is not None
        if self._replay_away(signal, error):
            raise error
        requests = entry.requests(data)
        try:
            refusals = self._replay_one_by_one(entry, signal, requests) if len(requests) > 1 else {0: error}
        except _PartlyRefused as partly:
            refusals, error = dict.fromkeys(range(len(requests)), partly), partly
        if len(refusals) == len(requests):
            self._discard_partial(signal, entry.batch_id)
            attempts = self._replay_failures.get(entry.batch_id, 0) + 1
            self._replay_failures[entry.batch_id] = attempts
            if attempts < _QUARANTINE_AFTER:
                raise error
            self.wal.quarantine(entry, f"storage refused it {attempts} times: {_short(error)}")
        else:
            stored = self.storage.batch_rows(entry.signal, entry.batch_id)
            telemetry.STORED_RECORDS.labels(self.name, entry.signal, "replay").inc(stored)
            if not refusals:
                self.wal.remove(entry.batch_id)  # refused whole, stored request by request
                self._replay_failures.pop(entry.batch_id, None)
                return
            reasons = [
                f"request {index + 1} of {len(requests)}: storage refused it: {_short(refusals[index])}"
                for index in sorted(refusals)
            ]
            self.wal.quarantine_requests(
                entry, [requests[index] for index in sorted(refusals)], max(entry.records - stored, 0), reasons
            )
        self._replay_failures.pop(entry.batch_id, None)
        telemetry.WAL_QUARANTINED.labels(self.name).inc()

    def _replay_one_by_one(self, entry: WALEntry, signal: Signal, requests: Sequence[bytes]) -> dict[int, Exception]:
        """Insert a logged batch's requests one at a time under its batch id, so that a replay
        after a crash still finds (and replaces) them; `deduplicate=False`, the id being used for
        each. Returns storage's refusals by request index; raises when storage is away (the
        batch is kept), or _PartlyRefused when a refused request left rows in some of a
        signal's tables (the batch is cleared: its rows cannot be told apart)."""
        self._discard_partial(signal, entry.batch_id)
        tables = len(self.storage.names.storage_tables(signal.name))
        rows = 0
        refusals: dict[int, Exception] = {}
        for index, request in enumerate(requests):
            try:
                self._timed_insert(signal, request, entry.batch_id, deduplicate=False, failure=None)
            except Exception as failure:
                if self._replay_away(signal, failure):
                    raise
                refusals[index] = failure
                if tables > 1 and self.storage.batch_rows(signal.name, entry.batch_id) != rows:
                    self.storage.delete_batch(signal.name, entry.batch_id)
                    raise _PartlyRefused(
                        f"storage refused request {index + 1} of {len(requests)} after storing part of it: "
                        f"{_short(failure)}"
                    ) from failure
                continue
            if tables > 1:
                rows = self.storage.batch_rows(signal.name, entry.batch_id)
        return refusals

    def _replay_away(self, signal: Signal, error: Exception) -> bool:
        """Whether a failed insert of a logged batch says storage is away or overloaded (the
        batch is kept for a later try, never set aside) rather than refusing the data; the
        failure is counted as such."""
        away = not self.storage.ping()
        if away:
            telemetry.STORAGE_UP.labels(self.name).set(0)
        away = away or transient(error)
        telemetry.INSERTS.labels(self.name, signal.name, "failed" if away else "refused").inc()
        return away

    def _publish_wal(self) -> None:
        if self.wal is not None:
            telemetry.WAL_BYTES.labels(self.name).set(self.wal.size_bytes)
            telemetry.WAL_BATCHES.labels(self.name).set(len(self.wal))


class _PartlyRefused(StorageError):
    """Storage refused a request of a batch after storing part of it (in some of a signal's tables)."""


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:500]
