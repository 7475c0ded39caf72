"""Events stored for a client that had stopped waiting for the answer, so its retry stores them once.

master-log-client sends a batch again when it got no answer in time (its `timeout_seconds`, 2 s
by default), with the same event objects, and perhaps newer events after them. Master Log events
carry no id of their own, so the retry cannot be told from new events by its content alone: two
equal events a minute apart are two events. But when the server finds, right after storing a
batch, that its client has gone, it knows a retry is coming: those events are remembered here by
fingerprint (their JSON and the client's key) for `keep_s`. The events of that client's next
batches that match are answered with the ids they were stored under and not stored again, each
remembered event matching once. Events stored for a client that waited are never remembered, so
equal events sent on purpose are all stored. A retry can come while the first store is still
under way (the client gave up on it): a batch holding events equal to ones being stored waits
for that store to end before it looks.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson

from labtel.query_api.compat import jsontext


def fingerprint(event: Any, client: str) -> bytes:
    """What identifies a posted event across a retry: its JSON (keys sorted) and the key that sent it."""
    try:
        text = jsontext.dumps(event, sort_keys=True)
    except (orjson.JSONEncodeError, TypeError):  # a lone surrogate: refused anyway, still told apart
        text = repr(event).encode("utf-8", "backslashreplace")
    return hashlib.blake2b(client.encode("utf-8", "backslashreplace") + b"\0" + text, digest_size=16).digest()


class Unanswered:
    """The answers of events stored for clients that went away, by fingerprint, for `keep_s`
    (at most `most` of them: the oldest are forgotten first). Thread-safe."""

    def __init__(self, keep_s: float = 600.0, most: int = 200_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._keep_s, self._most, self._clock = keep_s, most, clock
        self._waiting: dict[bytes, deque[tuple[int, bytes]]] = {}
        self._order: deque[tuple[float, bytes, int]] = deque()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._flying: dict[bytes, list[asyncio.Event]] = {}
        """Per fingerprint, the stores under way holding such an event (set when each ends)."""

    @asynccontextmanager
    async def storing(self, fingerprints: Sequence[bytes], wait_s: float = 60.0) -> AsyncIterator[dict[int, bytes]]:
        """Around the store of a batch: first waits (at most `wait_s`) for the stores under way of
        equal events, then yields the batch's events stored before (`match`). They are forgotten
        (`consume`) when the block ends without an error; `remember` inside the block is seen by
        the batches that waited for it."""
        keys = set(fingerprints)
        under_way = {flight for key in keys for flight in self._flying.get(key, ())}
        if under_way:
            await asyncio.wait([asyncio.ensure_future(flight.wait()) for flight in under_way], timeout=wait_s)
        earlier = self.match(fingerprints)
        flight = asyncio.Event()
        for key in keys:
            self._flying.setdefault(key, []).append(flight)
        try:
            yield earlier
            self.consume(fingerprints[index] for index in earlier)
        finally:
            for key in keys:
                flights = self._flying[key]
                flights.remove(flight)
                if not flights:
                    del self._flying[key]
            flight.set()

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return sum(len(answers) for answers in self._waiting.values())

    def remember(self, stored: Iterable[tuple[bytes, bytes]]) -> None:
        """Events (fingerprint, answer) just stored for a client that is gone: its retry will send them again."""
        with self._lock:
            deadline = self._clock() + self._keep_s
            for key, answer in stored:
                entry = next(self._ids)
                self._waiting.setdefault(key, deque()).append((entry, answer))
                self._order.append((deadline, key, entry))
            while len(self._order) > self._most:
                self._forget(*self._order.popleft()[1:])
            self._expire()

    def match(self, fingerprints: Sequence[bytes]) -> dict[int, bytes]:
        """The events of a batch (by index) that were stored before for a client that went away,
        with their answers; of several equal events, as many as were stored. Nothing is
        forgotten until `consume`, so a batch that then fails to store matches again."""
        found: dict[int, bytes] = {}
        with self._lock:
            self._expire()
            if not self._waiting:
                return found
            used: Counter[bytes] = Counter()
            for index, key in enumerate(fingerprints):
                answers = self._waiting.get(key)
                if answers is not None and used[key] < len(answers):
                    found[index] = answers[used[key]][1]
                    used[key] += 1
        return found

    def consume(self, fingerprints: Iterable[bytes]) -> None:
        """Forget matched events once their batch was answered: each matches one retry."""
        with self._lock:
            for key in fingerprints:
                answers = self._waiting.get(key)
                if answers:
                    answers.popleft()
                    if not answers:
                        del self._waiting[key]

    def _expire(self) -> None:
        now = self._clock()
        while self._order and self._order[0][0] <= now:
            self._forget(*self._order.popleft()[1:])

    def _forget(self, key: bytes, entry: int) -> None:
        answers = self._waiting.get(key)
        if answers and answers[0][0] == entry:  # else consumed already
            answers.popleft()
            if not answers:
                del self._waiting[key]
