"""Collectors starting at once: one applies each migration, the others wait and find it applied.

The embedded store belongs to one process, so the racing collectors are two storage clients in one
process, each with its own pool of chDB handles, on one store and one database."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from labtel.collector.storage import migration_lock, migrations
from labtel.collector.storage.client import Storage, StorageError, parse_endpoint
from labtel.collector.storage.interrupt import Interrupt, StartInterrupted
from labtel.collector.storage.schema import SchemaNames


class RecordingStorage(Storage):
    """A Storage that keeps every statement it ran, to tell which client applied what."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statements: list[str] = []

    def command(
        self, sql: str, parameters: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> Any:
        self.statements.append(sql)
        return super().command(sql, parameters, settings)


def _store(chdb_path: Path, database: str) -> RecordingStorage:
    return RecordingStorage(parse_endpoint(f"chdb://{chdb_path}"), SchemaNames(database))


def test_two_collectors_racing_apply_each_migration_exactly_once(chdb_path: Path) -> None:
    database = f"race_{uuid.uuid4().hex[:10]}"
    first, second = _store(chdb_path, database), _store(chdb_path, database)
    start = threading.Barrier(2)
    reports: dict[str, migrations.MigrationReport] = {}
    errors: list[BaseException] = []

    def run(name: str, store: Storage) -> None:
        try:
            start.wait()
            reports[name] = migrations.migrate(store)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("first", first), ("second", second))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        applied = {name: [m.version for m in report.applied] for name, report in reports.items()}
        every = [m.version for m in migrations.MIGRATIONS]
        assert sorted(applied["first"] + applied["second"]) == every  # each once, by one of them
        assert [] in applied.values()  # the other waited, then found them applied
        assert {r.current_version for r in reports.values()} == {migrations.latest_version()}
        rows = first.rows(f"SELECT count() AS n, uniqExact(version) AS versions FROM {first.names.migrations}")
        assert rows == [{"n": len(every), "versions": len(every)}]
        # the DDL of a migration ran on one client only
        for marker in (
            "ADD INDEX IF NOT EXISTS idx_body_text",
            "CREATE TABLE IF NOT EXISTS `" + database + "`.`otel_logs`",
        ):
            ran = [store for store in (first, second) if any(marker in s for s in store.statements)]
            assert len(ran) == 1, marker
        assert (
            first.command(
                "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                parameters={"db": database, "t": migration_lock.LOCK_TABLE},
            )
            == 0
        )  # released
    finally:
        first.command(f"DROP DATABASE IF EXISTS `{database}`")
        first.close()
        second.close()


def test_a_lock_left_by_a_dead_collector_is_broken_after_its_lease(
    chdb_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(chdb_path, f"stale_{uuid.uuid4().hex[:10]}")
    try:
        store.command(f"CREATE DATABASE `{store.names.database}`")
        assert migration_lock.try_acquire(store, "dead-host:4242:abc")
        holder = migration_lock.holder_of(store)
        assert holder is not None
        assert holder[0] == "dead-host:4242:abc"
        with caplog.at_level(logging.WARNING, logger="labtel.collector.storage.migration_lock"):
            report = migrations.migrate(store, lease=timedelta(0))
        assert report.current_version == migrations.latest_version()
        assert "breaking the migration lock of dead-host:4242:abc" in caplog.text
        assert migration_lock.holder_of(store) is None
    finally:
        store.command(f"DROP DATABASE IF EXISTS `{store.names.database}`")
        store.close()


def test_a_collector_that_cannot_get_the_lock_in_time_says_who_holds_it(chdb_path: Path) -> None:
    store = _store(chdb_path, f"held_{uuid.uuid4().hex[:10]}")
    try:
        store.command(f"CREATE DATABASE `{store.names.database}`")
        assert migration_lock.try_acquire(store, "busy-host:1:xyz")
        assert not migration_lock.try_acquire(store, "someone-else")
        with pytest.raises(StorageError, match=r"migration lock held by busy-host:1:xyz"):
            migrations.migrate(store, lease=timedelta(hours=1), wait=timedelta(seconds=0.3))
        assert migrations.applied_versions(store) == set()
        migration_lock.release(store)
        assert migrations.migrate(store).current_version == migrations.latest_version()
    finally:
        store.command(f"DROP DATABASE IF EXISTS `{store.names.database}`")
        store.close()


def _dead_pid() -> int:
    """The pid of a process of this machine that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_lock_left_by_a_killed_process_of_this_machine_is_broken_at_once(
    chdb_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A collector killed while migrating leaves the lock; started again, it must not wait out the lease."""
    store = _store(chdb_path, f"killed_{uuid.uuid4().hex[:10]}")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.command(f"CREATE DATABASE `{store.names.database}`")
        host, _, namespace, _ = migration_lock.new_holder().split(":")
        alive = f"{host}:{live.pid}:{namespace}:a11ve"
        assert migration_lock.try_acquire(store, alive)
        assert not migration_lock.holder_is_gone(alive)
        with pytest.raises(StorageError, match="migration lock held by " + alive):  # a live holder is waited for
            migrations.migrate(store, wait=timedelta(seconds=0.3))
        migration_lock.release(store)

        dead = f"{host}:{_dead_pid()}:{namespace}:dead0"
        assert migration_lock.holder_is_gone(dead)
        assert not migration_lock.holder_is_gone(f"elsewhere:{_dead_pid()}:{namespace}:dead1")  # another machine
        assert not migration_lock.holder_is_gone(f"{host}:{_dead_pid()}:{namespace}1:dead2")  # other PID namespace
        assert migration_lock.try_acquire(store, dead)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="labtel.collector.storage.migration_lock"):
            report = migrations.migrate(store, wait=timedelta(seconds=30))  # the default 10-minute lease
        assert time.monotonic() - started < 30
        assert report.current_version == migrations.latest_version()
        assert f"breaking the migration lock of {dead}: that process of this machine is gone" in caplog.text
        assert migration_lock.holder_of(store) is None
    finally:
        live.kill()
        live.wait()
        store.command(f"DROP DATABASE IF EXISTS `{store.names.database}`")
        store.close()


def _stop_after(interrupt: Interrupt, delay_s: float) -> threading.Thread:
    """Ask `interrupt` to stop from another thread (as SIGTERM does) after `delay_s`."""
    thread = threading.Thread(target=lambda: (time.sleep(delay_s), interrupt.stop()))
    thread.start()
    return thread


def test_a_stop_while_waiting_for_the_migration_lock_ends_the_wait_at_once(chdb_path: Path) -> None:
    store = _store(chdb_path, f"waiting_{uuid.uuid4().hex[:10]}")
    try:
        store.command(f"CREATE DATABASE `{store.names.database}`")
        assert migration_lock.try_acquire(store, "busy-host:1:xyz")
        interrupt = Interrupt()
        stopper = _stop_after(interrupt, 0.5)
        started = time.monotonic()
        with pytest.raises(StartInterrupted, match="while waiting for the migration lock held by busy-host:1:xyz"):
            migrations.migrate(store, lease=timedelta(hours=1), wait=timedelta(minutes=15), interrupt=interrupt)
        assert time.monotonic() - started < 5  # not the 15 minutes
        stopper.join()
        assert migrations.applied_versions(store) == set()
        holder = migration_lock.holder_of(store)
        assert holder is not None
        assert holder[0] == "busy-host:1:xyz"  # the other holder's lock is left alone
    finally:
        store.command(f"DROP DATABASE IF EXISTS `{store.names.database}`")
        store.close()


def test_a_stop_cancels_the_statement_under_way(chdb_path: Path) -> None:
    store = _store(chdb_path, "default")
    interrupt = Interrupt()
    slow = "SELECT sum(sleepEachRow(0.1)) FROM numbers(300) SETTINGS max_block_size = 1"  # 30 s
    stopper = _stop_after(interrupt, 0.5)
    started = time.monotonic()
    with pytest.raises(StartInterrupted, match="stopped in a test, cancelling its statement under way"):
        interrupt.command(store, slow, "in a test")
    assert time.monotonic() - started < 5
    stopper.join()
    with pytest.raises(StartInterrupted, match="stopped in a test"):  # nothing more runs once asked
        interrupt.command(store, "SELECT 1", "in a test")
    assert store.rows(
        "SELECT count() AS n FROM system.processes WHERE query LIKE '%sleepEachRow%' AND query NOT LIKE '%system.processes%'"
    ) == [{"n": 0}]
    store.close()
