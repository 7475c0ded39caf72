"""A small discrete-event simulation: the clock of the simulated labs.

Processes are generators that yield how long to wait (simulated seconds); while they run they
emit `Item`s (log events, span starts and ends) at the current simulated time. `Sim.run()` yields
the items in time order, lazily, so a week of lab activity never sits in memory at once.
Everything random comes from one seeded `random.Random`, so a seed always gives the same items.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

Process = Generator[float, None, None]
"""A simulated activity: yields how many seconds to wait."""
Task = Generator[float, None, bool]
"""A simulated activity that ends with success (True) or failure (False)."""

SECOND = 1_000_000_000


@dataclass(frozen=True, slots=True)
class SpanRef:
    """A span of the simulated lab: its OTLP ids and the service that owns it."""

    trace_id: int
    span_id: int
    service: str


@dataclass(frozen=True, slots=True)
class Log:
    """One event to emit."""

    time_ns: int
    service: str
    scope: str
    severity: int
    body: str
    fields: dict[str, Any]
    span: SpanRef | None = None


@dataclass(frozen=True, slots=True)
class SpanStart:
    time_ns: int
    span: SpanRef
    name: str
    parent: SpanRef | None
    attributes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SpanEnd:
    time_ns: int
    span: SpanRef
    error: str | None = None


Item = Log | SpanStart | SpanEnd


@dataclass
class Sim:
    """The simulated clock and the processes waiting on it."""

    start_ns: int
    end_ns: int
    rng: random.Random
    now_ns: int = 0
    _queue: list[tuple[int, int, Process]] = field(default_factory=list)
    _seq: Iterator[int] = field(default_factory=itertools.count)
    _out: list[Item] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.now_ns = self.start_ns

    def spawn(self, process: Process, delay_s: float = 0.0) -> None:
        """Run `process` from `delay_s` seconds from now."""
        heapq.heappush(self._queue, (self.now_ns + int(delay_s * SECOND), next(self._seq), process))

    def run(self) -> Iterator[Item]:
        """Advance the clock to the end, yielding what the processes emit, in time order."""
        while self._queue:
            at, _, process = heapq.heappop(self._queue)
            if at > self.end_ns:
                break
            self.now_ns = at
            try:
                delay = next(process)
            except StopIteration:
                delay = None
            if self._out:
                yield from self._out
                self._out.clear()
            if delay is not None:
                heapq.heappush(self._queue, (at + max(int(delay * SECOND), 1), next(self._seq), process))

    # --- emitting ---------------------------------------------------------------------------

    def log(
        self, service: str, scope: str, severity: int, body: str, span: SpanRef | None = None, **fields: Any
    ) -> None:
        self._out.append(Log(self.now_ns, service, scope, severity, body, fields, span))

    def start_span(self, service: str, name: str, parent: SpanRef | None = None, /, **attributes: Any) -> SpanRef:
        trace_id = parent.trace_id if parent is not None else self.rng.getrandbits(128) | 1
        span = SpanRef(trace_id, self.rng.getrandbits(64) | 1, service)
        self._out.append(SpanStart(self.now_ns, span, name, parent, attributes))
        return span

    def end_span(self, span: SpanRef, error: str | None = None) -> None:
        self._out.append(SpanEnd(self.now_ns, span, error))

    def uid(self, prefix: str) -> str:
        """A reproducible id such as `wf-3f9a0c12`."""
        return f"{prefix}-{self.rng.getrandbits(32):08x}"
