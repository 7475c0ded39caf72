"""A lock that lets one of several collectors starting at once apply the migrations.

The lock is a table: `CREATE TABLE` (without IF NOT EXISTS) of a table that exists fails, on one
server and, through the distributed DDL queue, `ON CLUSTER` (the queue orders the competing
CREATEs; every one after the first fails on every node). The table's comment names its holder;
its creation time is the lease's start, so a lock left by a collector that died is broken once
the lease is over, or at once when the holder was a process of this machine that is gone (a
collector killed while migrating, then started again). The losers wait until the table is gone,
then take it themselves and find the migrations applied.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from clickhouse_connect.driver.exceptions import ClickHouseError

from labtel.collector.storage.client import Storage, StorageError
from labtel.collector.storage.interrupt import Interrupt
from labtel.collector.storage.topology import quote_string
from labtel.sdk.textform import digits

log = logging.getLogger(__name__)

LOCK_TABLE = "labtel_migration_lock"
DEFAULT_LEASE = timedelta(minutes=10)
"""How long a holder may keep the lock before others consider it dead and break it."""
DEFAULT_WAIT = timedelta(minutes=15)
"""How long a collector waits for the lock before giving up with an error."""
POLL_S = 0.1

_EXISTS = ("TABLE_ALREADY_EXISTS", "Code: 57", "already exists")


def _already_exists(error: Exception) -> bool:
    text = str(error)
    return any(marker in text for marker in _EXISTS)


def _pid_namespace() -> str:
    """This process's PID namespace (Linux: the inode in /proc/self/ns/pid), or '' when unknown:
    containers sharing a host name have PIDs of their own, so a PID is judged only within one."""
    try:
        link = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return "".join(c for c in link if c.isdigit())


def new_holder() -> str:
    """An id naming this process and this attempt: host, pid, PID namespace, random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{_pid_namespace()}:{uuid.uuid4().hex[:12]}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but is not ours to signal
        return True
    return True


def holder_is_gone(holder: str) -> bool:
    """True when `holder` (a new_holder id) names a process of this machine and PID namespace
    that no longer runs. Holders elsewhere, or named otherwise, are judged by their lease."""
    parts = holder.split(":")
    if len(parts) != 4 or not digits(parts[1]) or not parts[2]:
        return False
    host, pid, namespace, _ = parts
    return host == socket.gethostname() and namespace == _pid_namespace() and not _alive(int(pid))


def holder_of(storage: Storage) -> tuple[str, float] | None:
    """Who holds the lock and for how many seconds, or None when nobody does."""
    rows = storage.rows(
        "SELECT comment, toFloat64(now() - metadata_modification_time) AS age FROM system.tables "
        "WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": storage.names.database, "t": LOCK_TABLE},
    )
    if not rows:
        return None
    return str(rows[0]["comment"]), float(rows[0]["age"])


def try_acquire(storage: Storage, holder: str) -> bool:
    """Create the lock table for `holder`; False when someone else holds it."""
    names = storage.names
    try:
        storage.command(
            f"CREATE TABLE {names.qualified(LOCK_TABLE)}{names.on_cluster} (holder String) ENGINE = Memory "
            f"COMMENT {quote_string(holder)}"
        )
    except ClickHouseError as error:
        if _already_exists(error):
            return False
        raise
    return True


def release(storage: Storage) -> None:
    """Drop the lock table (whoever holds it)."""
    names = storage.names
    storage.command(f"DROP TABLE IF EXISTS {names.qualified(LOCK_TABLE)}{names.on_cluster} SYNC")


def _break(storage: Storage, stale: str) -> None:
    """Drop a lock judged stale, unless another collector broke it and holds it by now."""
    current = holder_of(storage)
    if current is not None and current[0] == stale:
        release(storage)


@contextmanager
def held(
    storage: Storage,
    *,
    lease: timedelta = DEFAULT_LEASE,
    wait: timedelta = DEFAULT_WAIT,
    interrupt: Interrupt | None = None,
) -> Iterator[str]:
    """Hold the migration lock of the storage's database for the block; yields the holder id.
    While it waits for another holder, a stop asked for through `interrupt` raises StartInterrupted."""
    holder = new_holder()
    deadline = time.monotonic() + wait.total_seconds()
    announced = False
    while not try_acquire(storage, holder):
        current = holder_of(storage)
        if current is not None and holder_is_gone(current[0]):
            log.warning("breaking the migration lock of %s: that process of this machine is gone", current[0])
            _break(storage, current[0])
            continue
        if current is not None and current[1] > lease.total_seconds():
            log.warning("breaking the migration lock of %s, held for %.0f s (lease %s)", current[0], current[1], lease)
            _break(storage, current[0])
            continue
        if time.monotonic() > deadline:
            who = current[0] if current else "another collector"
            raise StorageError(
                f"waited {wait} for the migration lock held by {who}; if it died, drop table "
                f"{storage.names.qualified(LOCK_TABLE)} or wait for its lease ({lease}) to end"
            )
        if not announced and current is not None:
            log.info("waiting for %s to finish migrating %s", current[0], storage.names.database)
            announced = True
        if interrupt is not None:
            interrupt.check(f"while waiting for the migration lock held by {current[0] if current else 'another'}")
        time.sleep(POLL_S)
    try:
        yield holder
    finally:
        current = holder_of(storage)
        if current is not None and current[0] == holder:  # not a lock that others broke and took
            release(storage)
