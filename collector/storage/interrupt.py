"""Stopping the start-up (schema migrations) promptly when the process is asked to stop.

The start-up's statements run in a worker thread, and a migration of a big table (a new index
built over millions of rows) can take minutes. A stop asked for from another thread (SIGTERM)
is seen between statements, and a statement under way is cancelled with KILL QUERY, which a
ClickHouse user may do to its own queries. Migrations are recorded one by one, each after its
last statement, and each statement may run again (`IF NOT EXISTS`, `MATERIALIZE`): a migration
interrupted part way is not recorded and runs again, whole, at the next start.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from labtel.collector.storage.client import Storage

log = logging.getLogger(__name__)


class StartInterrupted(Exception):
    """The start-up stopped because the process was asked to stop; what it recorded stays."""


class Interrupt:
    """A stop of the start-up, asked for from another thread (`stop`), seen by the thread running
    its statements (`check`, `command`)."""

    def __init__(self) -> None:
        self._asked = threading.Event()
        self._lock = threading.Lock()
        self._running: tuple[Storage, str] | None = None
        """The storage and marker of the statement under way."""

    def check(self, where: str) -> None:
        """Raise StartInterrupted when a stop was asked for; `where` says what stops."""
        if self._asked.is_set():
            raise StartInterrupted(f"stopped {where}")

    def command(self, storage: Storage, statement: str, where: str) -> Any:
        """Run a statement, unless a stop was asked for; one asked for while it runs cancels it.
        The statement carries a comment naming it, which KILL QUERY finds it by (a query id of
        labtel's own is not honoured by every ClickHouse client)."""
        marker = f"labtel-start-{uuid.uuid4().hex}"
        with self._lock:
            self.check(where)
            self._running = (storage, marker)
        try:
            return storage.command(f"{statement}\n/* {marker} */")
        except Exception as error:
            if self._asked.is_set():
                raise StartInterrupted(f"stopped {where}, cancelling its statement under way") from error
            raise
        finally:
            with self._lock:
                self._running = None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask for a stop, and cancel the statement under way (blocking until it has ended or
        `timeout_s` passed: one that reaches ClickHouse after a KILL QUERY is killed again)."""
        self._asked.set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                running = self._running
            if running is None:
                return
            storage, marker = running
            try:
                storage.kill_queries(marker)
            except Exception as error:  # the statement still ends, only later
                log.warning("cancelling the start-up's statement under way failed: %s", error)
                return
            time.sleep(0.05)
