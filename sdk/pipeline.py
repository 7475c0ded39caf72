"""Delivery: records from the caller to the collector, without ever hurting the caller.

`emit` only appends to an in-memory queue (no I/O, no locks held across work, never raises).
A daemon thread batches, encodes and sends. When the collector is away, requests go to the
on-disk spool and are sent when it is back; a record is dropped only when the spool is full
(or the in-memory queue overflows faster than the thread can spool it), and drops are counted
and reported as a warning event once the collector answers again.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import multiprocessing.util
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labtel.sdk import encoding
from labtel.sdk.encoding import LogRecordData
from labtel.sdk.spool import Spool
from labtel.sdk.transport import Accepted, SendError, Transport

log = logging.getLogger("labtel.sdk")

_SCOPE_VERSION = ""
_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 30.0
BATCH_MAX_BYTES = 3 << 20
"""Encoded bytes of one request, at most: below the collector's 4 MiB OTLP/gRPC message limit
(and its 20 MiB OTLP/HTTP body limit)."""
_SPOOL_STRIKES = 3


@dataclass(frozen=True)
class FlushResult:
    """What `flush()` achieved: records delivered (since configure), still pending (in memory or
    spooled on disk), dropped (since configure), and whether everything pending was delivered."""

    delivered: int
    pending: int
    dropped: int
    rejected: int = 0

    @property
    def ok(self) -> bool:
        return self.pending == 0


class Pipeline:
    """Batches records in a background thread; sends them, or spools them while the collector is away."""

    def __init__(
        self,
        resource: Mapping[str, Any],
        transport_factory: Callable[[], Transport],
        spool_dir: Path,
        spool_max_bytes: int,
        batch_max_records: int = 512,
        batch_interval_s: float = 1.0,
        queue_max_records: int = 100_000,
        batch_max_bytes: int = BATCH_MAX_BYTES,
    ) -> None:
        self._resource = encoding.resource(resource)
        self._transport_factory = transport_factory
        self._spool = Spool(spool_dir, spool_max_bytes)
        self._batch_max = batch_max_records
        self._batch_max_bytes = batch_max_bytes
        self._interval_s = batch_interval_s
        self._queue_max = queue_max_records
        self._attributes = encoding.AttributeEncoder()
        self._scopes: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self.delivered = 0
        self.dropped = 0
        self.rejected = 0
        self._dropped_reported = 0
        self._down_until = 0.0
        self._backoff_s = _BACKOFF_START_S
        self._busy = False
        self._flush_requests = 0
        self._closed = False
        self._auth_warned = False
        self._not_otlp_warned = False
        self._partial_warned = False
        self._strikes: dict[str, int] = {}
        self._start()
        _PIPELINES.add(self)
        _flush_on_sigterm_in_worker()  # a spawned child configuring labtel in a task

    # --- lifecycle -------------------------------------------------------------------------

    def _start(self) -> None:
        self._queue: collections.deque[LogRecordData] = collections.deque()
        self._pid = os.getpid()
        self._transport: Transport | None = None
        self._thread = threading.Thread(target=self._run, name="labtel-sdk-export", daemon=True)
        self._thread.start()

    def after_fork(self) -> None:
        """In a forked child: a fresh queue, thread and connection (the parent's are not ours;
        the parent delivers what it had queued)."""
        if self._pid == os.getpid():
            return
        self.delivered = self.dropped = self.rejected = self._dropped_reported = 0
        self._flushed = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._busy = False
        self._flush_requests = 0
        self._strikes = {}
        # The parent's export thread may have held the spool's lock at the fork: a fresh one.
        self._spool = Spool(self._spool.directory, self._spool.max_bytes)
        self._start()

    def shutdown(self, timeout_s: float = 5.0) -> FlushResult:
        """Deliver what can be delivered within `timeout_s`, then stop the thread."""
        result = self.flush(timeout_s)
        self._closed = True
        self._wake.set()
        self._thread.join(max(0.1, timeout_s))
        if self._transport is not None:
            self._transport.close()
        return result

    # --- the caller's side -----------------------------------------------------------------

    def emit(self, record: LogRecordData) -> None:
        """Queue a record for delivery. Never blocks, never raises."""
        if self._pid != os.getpid():
            self.after_fork()
        queue = self._queue
        if len(queue) >= self._queue_max:
            self.dropped += 1
            return
        queue.append(record)
        if len(queue) == self._batch_max:
            self._wake.set()

    def flush(self, timeout_s: float = 5.0) -> FlushResult:
        """Send everything queued and spooled now; wait up to `timeout_s` for it."""
        if self._pid != os.getpid():
            self.after_fork()
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._flush_requests += 1
            target = self._flush_requests
            self._down_until = 0.0  # try the collector now, whatever the back-off said
        self._wake.set()
        with self._idle:
            while time.monotonic() < deadline and not self._closed:
                if self._flushed >= target and not self._queue and (not self._busy):
                    break
                self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.result()

    @property
    def backlog(self) -> int:
        """Records queued in memory, not yet batched (a producer that must not outrun delivery
        can wait for it to fall)."""
        return len(self._queue)

    def result(self) -> FlushResult:
        pending = len(self._queue) + self._in_flight + self._spool.pending_records
        return FlushResult(self.delivered, pending, self.dropped, self.rejected)

    # --- the export thread -----------------------------------------------------------------

    _flushed = 0
    _in_flight = 0

    def _run(self) -> None:
        _EXPORT_THREAD.active = True
        while True:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            with self._lock:
                self._busy = True
                requested = self._flush_requests
            try:
                self._drain_queue()
                self._drain_spool()
            except Exception:  # never let the thread die: it is the only way records leave
                log.exception("labtel.sdk export thread failed; continuing")
            with self._idle:
                self._busy = False
                self._flushed = max(self._flushed, requested)
                self._idle.notify_all()
            if self._closed:
                return

    def _drain_queue(self) -> None:
        queue = self._queue
        while queue:
            batch = self._next_batch()
            try:
                if batch:
                    self._deliver(self._request(batch), len(batch))
            finally:
                self._in_flight = 0

    def _next_batch(self) -> list[tuple[str, bytes]]:
        """Records off the queue, each encoded on its own (one that cannot be is rejected alone),
        up to `batch_max_records` and `batch_max_bytes`: [(scope, encoded record), ...]."""
        queue = self._queue
        encode = encoding.log_record
        attributes = self._attributes
        batch: list[tuple[str, bytes]] = []
        size = 0
        while queue and len(batch) < self._batch_max:
            record = queue[0]
            try:
                encoded = encode(record, attributes)
                self._scope(record.scope)
            except Exception as error:
                queue.popleft()
                self._reject_unencodable(record, error)
                continue
            if batch and size + len(encoded) > self._batch_max_bytes:
                break  # the next request starts with it
            queue.popleft()
            batch.append((record.scope, encoded))
            size += len(encoded) + 8
            self._in_flight = len(batch)
        return batch

    def _reject_unencodable(self, record: LogRecordData, error: Exception) -> None:
        self.rejected += 1
        log.warning("labtel.sdk: a record could not be encoded and is not sent (%r): %s", record.body, error)

    def _request(self, batch: list[tuple[str, bytes]]) -> bytes:
        by_scope: dict[str, list[bytes]] = {}
        for name, encoded in batch:
            by_scope.setdefault(name, []).append(encoded)
        scopes = [(self._scope(name), records) for name, records in by_scope.items()]
        return encoding.logs_request(self._resource, scopes)

    def _scope(self, name: str) -> bytes:
        """The encoded instrumentation scope `name` (cached)."""
        scope = self._scopes.get(name)
        if scope is None:
            scope = self._scopes[name] = encoding.scope(name, _SCOPE_VERSION)
        return scope

    def _collector_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _deliver(self, data: bytes, records: int) -> None:
        if self._collector_down() or self._spool.pending_files:
            self._spool_or_drop(data, records)  # keep order: older spooled requests go first
            return
        if not self._send(data, records):
            self._spool_or_drop(data, records)

    def _send(self, data: bytes, records: int) -> bool:
        """Send one request; True when it is settled: the collector took it, refused it for good,
        or took the parts of a request too large for it."""
        try:
            if self._transport is None:
                self._transport = self._transport_factory()
            answer = self._transport.send(data)
        except SendError as error:
            if error.too_large:
                return self._send_split(data, records, error)
            if not error.retryable:
                self.rejected += records
                log.warning("labtel.sdk: the collector refused %d records: %s", records, error)
                return True
            if error.auth and not self._auth_warned:
                self._auth_warned = True
                log.warning(
                    "labtel.sdk: the collector refused the API key (%s); events are kept in the spool "
                    "and sent once it accepts the key (check LABTEL_API_KEY / headers)",
                    error,
                )
            if error.not_otlp and not self._not_otlp_warned:
                self._not_otlp_warned = True
                log.warning(
                    "labtel.sdk: no OTLP logs receiver answers at the endpoint (%s); events are kept in the "
                    "spool and sent once one does (check LABTEL_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT and "
                    "the protocol, grpc or http)",
                    error,
                )
            self._drop_transport()  # a fresh connection for the next try
            self._back_off()
            return False
        except Exception as error:  # a transport that cannot even be built: treat as away
            log.debug("labtel.sdk: send failed: %s", error)
            self._back_off()
            return False
        self._took(records, answer)
        return True

    def _back_off(self) -> None:
        self._down_until = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)

    def _took(self, records: int, answer: Accepted) -> None:
        """The collector took a request: its records are delivered, but for those its partial
        success rejected."""
        rejected = min(max(answer.rejected, 0), records)
        self.delivered += records - rejected
        if rejected:
            self.rejected += rejected
            if not self._partial_warned:
                self._partial_warned = True
                log.warning(
                    "labtel.sdk: the collector rejected %d of %d records: %s", rejected, records, answer.message
                )
        self._auth_warned = self._not_otlp_warned = False
        self._backoff_s = _BACKOFF_START_S
        self._down_until = 0.0
        if self.dropped > self._dropped_reported:
            self._report_drops()

    def _send_split(self, data: bytes, records: int, error: SendError) -> bool:
        """A request over the collector's size limit: send it in halves; a single record too
        large on its own is rejected (counted, not spooled)."""
        parts = encoding.split_request(data)
        if not parts:
            self.rejected += records
            log.warning("labtel.sdk: a record of %d bytes is too large for the collector: %s", len(data), error)
            return True
        for part, count in parts:
            if not self._send(part, count):
                self._spool_or_drop(part, count)
        return True

    def _drop_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()

    def _spool_or_drop(self, data: bytes, records: int) -> None:
        if not self._spool.put(data, records):
            self.dropped += records

    def _drain_spool(self) -> None:
        """Send spooled requests, oldest first, until the collector fails one. A request it keeps
        failing while the ones behind it pass (a poisoned request) is set aside after
        `_SPOOL_STRIKES` such failures, so it never blocks the others."""
        skip: set[str] = set()
        while not self._collector_down():
            claimed = self._spool.claim_oldest(skip)
            if claimed is None:
                return
            claim, data, records = claimed
            if self._send(data, records):
                self._spool.done(claim)
                continue
            self._spool.release(claim)
            name = self._spool.name_of(claim)
            skip.add(name)
            behind = self._spool.claim_oldest(skip)
            if behind is None:
                return
            if not self._send(behind[1], behind[2]):
                self._spool.release(behind[0])
                return  # the collector is away: it is not this request's fault
            self._spool.done(behind[0])
            strikes = self._strikes[name] = self._strikes.get(name, 0) + 1
            if strikes >= _SPOOL_STRIKES:
                self._strikes.pop(name, None)
                if self._spool.set_aside(name):
                    self.rejected += records
                    log.warning(
                        "labtel.sdk: the collector keeps failing a spooled request of %d records while "
                        "accepting others; it is set aside as %s.failed",
                        records,
                        name,
                    )

    def _report_drops(self) -> None:
        lost = self.dropped - self._dropped_reported
        self._dropped_reported = self.dropped
        record = LogRecordData(
            time_ns=time.time_ns(),
            severity_number=13,
            severity_text="WARN",
            body=f"labtel.sdk dropped {lost} records while the collector was unreachable and the spool was full",
            attributes={
                "lab.event.type": "sdk_records_dropped",
                "labtel.sdk.dropped_records": lost,
                "labtel.sdk.dropped_records_total": self.dropped,
            },
            scope="labtel.sdk",
            event_name="sdk_records_dropped",
        )
        self._queue.appendleft(record)


class _ExportThreadFlag(threading.local):
    active = False


_EXPORT_THREAD = _ExportThreadFlag()
"""True on the export thread: logging from there (e.g. a transport warning) is not re-captured."""

_PIPELINES: weakref.WeakSet[Pipeline] = weakref.WeakSet()


def on_export_thread() -> bool:
    return _EXPORT_THREAD.active


def _after_fork_in_child() -> None:
    for pipeline in list(_PIPELINES):
        pipeline.after_fork()


def exit_timeout_s() -> float:
    """Seconds the flush at exit may take: $LABTEL_EXIT_FLUSH_TIMEOUT_S, 5 by default (and when
    the variable is not a number, rather than losing the last records)."""
    try:
        return float(os.environ.get("LABTEL_EXIT_FLUSH_TIMEOUT_S", "5"))
    except ValueError:
        return 5.0


def _at_exit() -> None:
    timeout_s = exit_timeout_s()
    for pipeline in list(_PIPELINES):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            pipeline.shutdown(timeout_s=timeout_s)


def _flush_at_worker_exit() -> None:
    """A multiprocessing worker (fork, forkserver) ends with os._exit(): atexit handlers do not
    run, multiprocessing's finalizers do. Deliver what it logged."""
    timeout_s = exit_timeout_s()
    for pipeline in list(_PIPELINES):
        with contextlib.suppress(Exception):
            pipeline.flush(timeout_s=timeout_s)


def _register_worker_finalizer(_: object = None) -> None:
    multiprocessing.util.Finalize(None, _flush_at_worker_exit, exitpriority=10)
    _flush_on_sigterm_in_worker()


def _flush_on_sigterm_in_worker() -> None:
    """In a multiprocessing child (any start method) that leaves SIGTERM to its default: flush,
    then die of the signal as before. `Pool.terminate()`, which the end of a `with Pool() as
    pool:` block calls, stops the workers with SIGTERM, and what they logged would be lost."""
    # A spawned child imports its main module (and so labtel) before it knows its parent: it is
    # `_inheriting` then, as multiprocessing's own import check reads it.
    child = multiprocessing.parent_process() is not None or getattr(
        multiprocessing.current_process(), "_inheriting", False
    )
    if not child or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _flush_and_terminate)


_TERMINATING = threading.Event()


def _flush_and_terminate(signum: int, _frame: object) -> None:
    """SIGTERM in a multiprocessing child: flush on a thread of its own, which then sends the
    signal again; this time the process dies of it, as it would have. The handler returns at
    once: it may have interrupted this thread inside a flush, holding the lock a flush needs."""
    if _TERMINATING.is_set():
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _TERMINATING.set()
    threading.Thread(target=_flush_then_signal, args=(signum,), name="labtel-sdk-sigterm-flush", daemon=True).start()


def _flush_then_signal(signum: int) -> None:
    try:
        _flush_at_worker_exit()
    finally:
        os.kill(os.getpid(), signum)


class _Registration:
    """What multiprocessing's after-fork registry holds on to (it keeps its entries weakly)."""


_REGISTRATION = _Registration()
os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
_register_worker_finalizer()
# A worker clears the finalizers it inherited, then runs the after-fork hooks: register again.
multiprocessing.util.register_after_fork(_REGISTRATION, _register_worker_finalizer)
