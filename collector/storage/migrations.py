"""Versioned schema migrations, applied at start-up or by `labtel migrate`, never by hand.

Each migration has a version and a list of statements; `labtel_schema_migrations` records which
versions a database has. Retention (TTL) is configuration, not schema: it is reconciled with the
exporter's `ttl` / `<signal>_ttl` on every start. So is the merge policy of the storage tables
(`reconcile_part_policy`, run by `migrate`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from clickhouse_connect.driver.exceptions import ClickHouseError

from labtel.collector.alerts.history import history_tables
from labtel.collector.storage import compat_schema, metrics_schema, migration_lock, schema
from labtel.collector.storage.client import Storage, StorageError
from labtel.collector.storage.interrupt import Interrupt, StartInterrupted
from labtel.collector.storage.schema import SchemaNames, quote_identifier
from labtel.collector.storage.topology import quote_string
from labtel.sdk import __version__

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    """One step of the schema: statements that take a database from `version - 1` to `version`."""

    version: int
    name: str
    statements: Callable[[SchemaNames], list[str]]


def _logs(n: SchemaNames, *clauses: str, columns: bool = False) -> list[str]:
    """ALTERs of the logs table (where its rows are stored; `columns`: on its Distributed table too)."""
    return [statement for clause in clauses for statement in schema.alter(n, n.logs_table, clause, columns=columns)]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "otel_logs and otel_traces (contrib exporter columns, lab columns), trace-id lookup",
        lambda n: [
            schema.logs_table(n),
            *schema.distributed_table(n, n.logs_table, has_trace_id=True),
            schema.traces_table(n),
            *schema.distributed_table(n, n.traces_table, has_trace_id=True),
            *schema.trace_id_ts_table(n),
        ],
    ),
    Migration(
        2,
        "per-event expiry: otel_logs.ExpiresAt from lab.ttl_seconds / lab.expires_at, row-level TTL",
        lambda n: [
            *_logs(n, f"ADD COLUMN IF NOT EXISTS {schema.expires_at_column()}", columns=True),
            *_logs(n, "MODIFY SETTING ttl_only_drop_parts = 0"),
        ],
    ),
    Migration(
        3,
        "metrics: otel_metrics_gauge, _sum, _histogram, _exponential_histogram, _summary (contrib exporter columns)",
        metrics_schema.metrics_tables,
    ),
    Migration(
        4,
        "otel_logs: a text (inverted) index on lower(Body) for word search, in place of the tokenbf index",
        lambda n: _logs(
            n,
            "DROP INDEX IF EXISTS idx_lower_body",
            "ADD INDEX IF NOT EXISTS idx_body_text lower(Body) TYPE text(tokenizer = 'splitByNonAlpha')",
            # Parts stored before this migration get the index in a background mutation; until
            # then they are scanned, with the same results.
            "MATERIALIZE INDEX idx_body_text",
        ),
    ),
    Migration(
        5,
        "otel_logs: hourly event counts (a projection) for /stats and dashboards; an index on ExpiresAt",
        lambda n: _logs(
            n,
            "ADD INDEX IF NOT EXISTS idx_expires_at ExpiresAt TYPE minmax GRANULARITY 1",
            # A replay removes a partly stored batch with DELETE: the projection is rebuilt for it.
            "MODIFY SETTING lightweight_mutation_projection_mode = 'rebuild'",
            f"ADD {schema.hourly_counts_projection().replace('PROJECTION', 'PROJECTION IF NOT EXISTS', 1)}",
            # Parts stored before get both in background mutations; until then they are read as rows.
            "MATERIALIZE INDEX idx_expires_at",
            f"MATERIALIZE PROJECTION {schema.HOURLY_COUNTS}",
        ),
    ),
    Migration(
        6,
        "otel_logs: lab columns for utilization (WorkcellId, UserId, LabName, ActionId, ActionStatus, DurationMs)",
        lambda n: [
            *_logs(n, *(f"ADD COLUMN IF NOT EXISTS {column}" for column in schema.utilization_columns()), columns=True),
            # Stored parts compute them from the attributes until a background mutation writes them.
            *_logs(n, *(f"MATERIALIZE COLUMN {column.split()[0]}" for column in schema.utilization_columns())),
        ],
    ),
    Migration(
        7,
        "compat: labtel_madsci_archive (MADSci's soft delete of events)",
        compat_schema.madsci_tables,
    ),
    Migration(
        8,
        "compat: labtel_panoptes_current, _runs, _seq (PANOPTES telemetry's current view, runs, sequence numbers)",
        compat_schema.panoptes_tables,
    ),
    Migration(
        9,
        "alerts: history (labtel_alerts) and engine checkpoints (labtel_alert_state); otel_logs index on insert time",
        lambda n: [
            *history_tables(n),
            # The engine scans what was inserted since its checkpoint: EventId is a UUIDv7 made at insert.
            *_logs(
                n,
                "ADD INDEX IF NOT EXISTS idx_inserted_at UUIDv7ToDateTime(EventId) TYPE minmax GRANULARITY 1",
                "MATERIALIZE INDEX idx_inserted_at",
            ),
        ],
    ),
    Migration(
        10,
        "otel_logs: the nodes seen per hour (a projection) for the utilization reports",
        lambda n: _logs(
            n,
            f"ADD {schema.hourly_nodes_projection().replace('PROJECTION', 'PROJECTION IF NOT EXISTS', 1)}",
            # Parts stored before get it in a background mutation; until then they are read as rows.
            f"MATERIALIZE PROJECTION {schema.HOURLY_NODES}",
        ),
    ),
    Migration(
        11,
        "otel_logs: word search splits at every character that is not a letter or digit and lower-cases every "
        "script (idx_body_words on schema.BODY_WORDS, in place of idx_body_text)",
        lambda n: _logs(
            n,
            "DROP INDEX IF EXISTS idx_body_text",
            f"ADD INDEX IF NOT EXISTS {schema.body_words_index()}",
            # Parts stored before this migration get the index in a background mutation; until
            # then they are scanned, with the same results.
            f"MATERIALIZE INDEX {schema.BODY_WORDS_INDEX}",
        ),
    ),
    Migration(
        12,
        "labtel_parts: the active parts of every node (clusterAllReplicas on a cluster) for the dashboards",
        lambda n: [schema.parts_view(n)],
    ),
    Migration(
        13,
        "otel_logs: word search folds accents (idx_body_words on schema.BODY_WORDS: decomposed, combining "
        "marks dropped, so café, cafe\u0301 and cafe are one word)",
        lambda n: _logs(
            n,
            f"DROP INDEX IF EXISTS {schema.BODY_WORDS_INDEX}",
            f"ADD INDEX IF NOT EXISTS {schema.body_words_index()}",
            # Parts stored before get it in a background mutation; until then they are scanned.
            f"MATERIALIZE INDEX {schema.BODY_WORDS_INDEX}",
        ),
    ),
)


@dataclass
class MigrationReport:
    """What `migrate` did: versions applied now, and the version the database is at."""

    applied: list[Migration] = field(default_factory=list)
    current_version: int = 0


def applied_versions(storage: Storage, *, sync: bool = False) -> set[int]:
    """Versions recorded in the database (empty when it has never been migrated); `sync`: on a
    replicated cluster, first fetch the versions other nodes recorded (as `migrate` does)."""
    names = storage.names
    exists = storage.command(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'labtel_schema_migrations'",
        parameters={"db": names.database},
    )
    if not exists:
        return set()
    if sync and names.topology.replicated and names.topology.cluster:
        # Versions recorded through another node: fetch them before reading.
        storage.command(f"SYSTEM SYNC REPLICA {names.migrations}")
    return {int(row["version"]) for row in storage.rows(f"SELECT version FROM {names.migrations}")}


def migrate(
    storage: Storage,
    *,
    lease: timedelta = migration_lock.DEFAULT_LEASE,
    wait: timedelta = migration_lock.DEFAULT_WAIT,
    interrupt: Interrupt | None = None,
) -> MigrationReport:
    """Bring the database to the newest schema; applying twice is a no-op.

    Collectors starting together take turns (labtel.collector.storage.migration_lock): one applies
    the migrations, the others wait for it, then find them applied. With `interrupt`, a stop asked
    for (SIGTERM during start-up) raises StartInterrupted between statements or cancels the one
    under way: the migrations recorded so far stay, the interrupted one runs again at the next start."""
    interrupt = interrupt or Interrupt()
    names = storage.names
    storage.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(names.database)}{names.on_cluster}")
    storage.command(schema.migrations_table(names))
    report = MigrationReport()
    with migration_lock.held(storage, lease=lease, wait=wait, interrupt=interrupt):
        done = applied_versions(storage, sync=True)
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            log.info("applying migration %d: %s", migration.version, migration.name)
            where = f"during migration {migration.version} ({migration.name})"
            for statement in migration.statements(names):
                try:
                    interrupt.command(storage, statement, where)
                except StartInterrupted as interrupted:
                    raise StartInterrupted(
                        f"{interrupted}; the database stays at version {max(done, default=0)}, and migration "
                        f"{migration.version} runs again at the next start"
                    ) from interrupted
                except ClickHouseError as error:
                    raise StorageError(
                        f"migration {migration.version} ({migration.name}) failed, the database "
                        f"stays at version {max(done, default=0)}: {error}"
                    ) from error
            storage.command(
                f"INSERT INTO {names.migrations} (version, name, labtel_version) VALUES "
                "({version:UInt32}, {name:String}, {labtel_version:String})",
                parameters={"version": migration.version, "name": migration.name, "labtel_version": __version__},
            )
            report.applied.append(migration)
            done.add(migration.version)
        report.current_version = max(done, default=0)
        interrupt.check(f"after the migrations, at version {report.current_version}")
        ensure_ingest(storage)
        reconcile_part_policy(storage)
    return report


def schema_statements(names: SchemaNames) -> list[str]:
    """Every statement `migrate` runs on an empty database, in order (for an operator who owns the
    schema: `labtel migrate --print-sql`); part-policy settings and TTLs are reconciled after."""
    statements = [
        f"CREATE DATABASE IF NOT EXISTS {quote_identifier(names.database)}{names.on_cluster}",
        schema.migrations_table(names),
    ]
    for migration in MIGRATIONS:
        statements.extend(migration.statements(names))
        statements.append(
            f"INSERT INTO {names.migrations} (version, name, labtel_version) VALUES "
            f"({migration.version}, {quote_string(migration.name)}, {quote_string(__version__)})"
        )
    for signal in INGEST_SIGNALS:
        statements.extend(schema.ingest_objects(names, signal))
    return statements


INGEST_SIGNALS = ("logs", "traces", "metrics")
"""The signals with an ingest path (a Null table and views) in the database."""


def ensure_ingest(storage: Storage) -> None:
    """Create this labtel version's ingest tables and views if they are missing."""
    for signal in INGEST_SIGNALS:
        for statement in schema.ingest_objects(storage.names, signal):
            storage.command(statement)


def ingest_ready(storage: Storage) -> list[str]:
    """The ingest tables this labtel version needs that the database lacks."""
    names = storage.names
    missing = []
    for signal in INGEST_SIGNALS:
        table = names.ingest_name(signal)
        found = storage.command(
            "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            parameters={"db": names.database, "t": table},
        )
        if not found:
            missing.append(table)
    return missing


PART_POLICY: dict[str, int] = {
    "merge_selector_base": 20,
    "min_bytes_for_wide_part": 64 * 1024 * 1024,
}
"""How the storage tables write and merge their parts (table settings, reconciled by `migrate`).

Ingest writes a part per insert, and each merge rewrites its rows (decompress, merge, recompress,
rebuild the skip indexes and TTL information) at about the CPU cost of the insert itself.
- `merge_selector_base` (ClickHouse's default: 5): how many parts of about one size a merge
  gathers; more rewrites each row fewer times (measured on this project's 2-core machine: ~40%
  less merge CPU per ingested row at 20), for a few more parts at a time.
- `min_bytes_for_wide_part` (default: 10 MB): inserts stay in the compact format (one file for
  all columns) up to this size. A 16,000-record insert is ~11 MB; written wide (two files per
  column, each with its own buffers) it needed ~250 MB of memory instead of ~140 MB."""


def _storage_table_names(names: SchemaNames) -> list[str]:
    """The tables the part policy applies to, as stored (local tables under Distributed ones)."""
    return [names.topology.local_name(t) for t in (names.logs_table, names.traces_table, *names.metrics_tables)]


def reconcile_part_policy(storage: Storage) -> list[str]:
    """Give the storage tables labtel's PART_POLICY (the settings the server knows); returns the
    tables changed."""
    rows = storage.rows(
        "SELECT name FROM system.merge_tree_settings WHERE name IN {names:Array(String)}",
        parameters={"names": list(PART_POLICY)},
    )
    known = {row["name"] for row in rows}
    wanted = {name: value for name, value in PART_POLICY.items() if name in known}
    changed = []
    for table in _storage_table_names(storage.names):
        found = storage.rows(
            "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {table:String}",
            parameters={"db": storage.names.database, "table": table},
        )
        if not found:
            continue
        current = dict(_TABLE_SETTING.findall(str(found[0]["engine_full"] or "")))
        missing = {name: value for name, value in wanted.items() if current.get(name) != str(value)}
        if not missing:
            continue
        assignments = ", ".join(f"{name} = {value}" for name, value in missing.items())
        storage.command(
            f"ALTER TABLE {storage.names.qualified(table)}{storage.names.on_cluster} MODIFY SETTING {assignments}"
        )
        changed.append(table)
    return changed


_TABLE_SETTING = re.compile(r"\b(\w+) = (\d+)\b")


def latest_version() -> int:
    return MIGRATIONS[-1].version


_TTL = re.compile(r"\bTTL (.+?)(?: SETTINGS |$)")


def current_ttl(storage: Storage, table: str) -> str | None:
    """The TTL expression a table has now, or None."""
    rows = storage.rows(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {table:String}",
        parameters={"db": storage.names.database, "table": table},
    )
    engine = rows[0]["engine_full"] if rows else ""
    match = _TTL.search(str(engine or ""))
    return match.group(1).strip() if match else None


def reconcile_ttl(storage: Storage, ttls: dict[str, timedelta], interrupt: Interrupt | None = None) -> list[str]:
    """Make each signal's table keep data for its configured TTL (0 = forever); returns the
    tables changed. `ttl_only_drop_parts` lets whole expired parts go without rewriting. With
    `interrupt`, a stop asked for cancels a change under way (it is made again at the next start)."""
    interrupt = interrupt or Interrupt()
    names = storage.names
    local = names.topology.local_name
    tables = {
        "logs": [(local(names.logs_table), "")],
        "traces": [(local(names.traces_table), "Timestamp"), (local(f"{names.traces_table}_trace_id_ts"), "End")],
        "metrics": [(local(table), "TimeUnix") for table in names.metrics_tables],
    }
    changed = []
    for signal, ttl in ttls.items():
        seconds = int(ttl.total_seconds())
        for table, column in tables[signal]:
            if not column:  # the logs table always has a TTL: events may carry their own expiry
                wanted: str | None = schema.logs_ttl_clause(seconds)
            else:
                wanted = schema.ttl_clause(column, seconds) if seconds > 0 else None
            if current_ttl(storage, table) == wanted:
                continue
            qualified = names.qualified(table) + names.on_cluster
            where = f"while changing the TTL of {table} (changed again at the next start)"
            if wanted is None:
                interrupt.command(storage, f"ALTER TABLE {qualified} REMOVE TTL", where)
            else:
                interrupt.command(storage, f"ALTER TABLE {qualified} MODIFY TTL {wanted}", where)
            changed.append(table)
    return changed
