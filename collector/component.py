"""What flows through a pipeline, and the contracts between receivers, processors and exporters.

A receiver turns one Export call into a `Payload` and awaits `Consumer.consume`: it returns once
the payload's records are durably stored, or raises `ExportRejected` (bad data: the caller must
not retry) or `ExportUnavailable` (try again later). Batching components hand exporters many
payloads at once; exporters answer with one verdict per payload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from labtel.collector.otlp.signals import Signal


@dataclass(frozen=True, slots=True)
class Payload:
    """One Export call's data: a serialized Export*ServiceRequest and its record count."""

    signal: Signal
    data: bytes
    records: int


class ExportRejected(Exception):
    """The data is invalid; the caller gets INVALID_ARGUMENT / HTTP 400 and must not retry."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ExportUnavailable(Exception):
    """Nothing was stored; the caller gets UNAVAILABLE / HTTP 503 and retries after a delay."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class PartialSuccess:
    """Some records of a payload were rejected (over a limit); the others are stored.

    Receivers answer with OTLP's `partial_success` (`rejected_log_records`, `error_message`)."""

    rejected: int
    message: str


Verdict = str | PartialSuccess | None
"""Per payload: None when stored, PartialSuccess when stored but for some records, else the
reason the whole payload was rejected."""


class Consumer(Protocol):
    """Takes one payload and returns when it is stored (receivers call this); returns what was
    rejected of it, if anything was."""

    async def consume(self, payload: Payload) -> PartialSuccess | None: ...


class BatchConsumer(Protocol):
    """Stores many payloads of one signal at once; one verdict per payload, in order.

    Raises ExportUnavailable when nothing could be stored."""

    async def consume_batch(self, batch: Sequence[Payload]) -> list[Verdict]: ...


class Lifecycle(Protocol):
    """Components that hold resources start before data flows and shut down after it stops."""

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...
