"""MADSci events in labtel's storage: idempotent posting, lookups, MADSci's soft delete
(archive / purge) and backups.

Duplicates: an event whose `event_id` is already stored, or was accepted by this API process
recently (it may still be on its way through the write-ahead log), is answered as stored and
not written again; concurrent posts of one id wait for the first. (Several API processes
writing one ClickHouse can race on the same id.)

Archive: archived events stay in `otel_logs`; `labtel_madsci_archive` says which are archived
and since when. MADSci's `GET /events` leaves them out; selectors and labtel's own routes see
them; a purge deletes them from both tables.

Backups: `INSERT INTO FUNCTION file(..., 'Native')` of `otel_logs` and the archive table, written
by ClickHouse itself (streamed, any size) into `compat.madsci.backup_dir`; each backup is recorded
as a `backup_create` event, which `GET /backup/status` lists. Restore with
`INSERT INTO otel.otel_logs SELECT * FROM file('<path>/otel_logs.native', 'Native')`.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections import OrderedDict
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from uuid import UUID

from starlette.concurrency import run_in_threadpool

from labtel.collector.otlp.records import Record
from labtel.collector.storage.client import Storage
from labtel.collector.storage.compat_schema import MADSCI_ARCHIVE
from labtel.collector.storage.schema import NOT_EXPIRED, delete_rows
from labtel.query_api.compat.ingest import EventWriter
from labtel.query_api.compat.madsci import SCOPE, SERVICE, posted_document, to_madsci, to_record
from labtel.query_api.events import EVENT_COLUMNS, EventFilter, encode_cursor, get_event, list_events, row_to_event
from labtel.query_api.models import Event
from labtel.query_api.selector import SelectorError
from labtel.sdk import semconv

RECENT_IDS = 100_000
MAX_QUERY_EVENTS = 10_000
"""MADSci's query and list routes answer at most this many events (MADSci has no limit)."""
MAX_OFFSET = 2**63 - 1
"""The largest `offset` the list routes take (a ClickHouse UInt64 parameter)."""
DAY_NS = 86_400 * 1_000_000_000


class MadsciStore:
    """What the `/madsci/` routes do with storage."""

    def __init__(self, storage: Storage, writer: EventWriter, zone: tzinfo, backup_dir: str = "") -> None:
        self.storage = storage
        self.writer = writer
        self.zone = zone
        self.backup_dir = backup_dir or default_backup_dir(storage)
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._pending: dict[str, asyncio.Future[None]] = {}

    @property
    def archive(self) -> str:
        return self.storage.names.qualified(MADSCI_ARCHIVE)

    # --- writing ---------------------------------------------------------------------------

    async def post(self, event: dict[str, Any]) -> dict[str, Any]:
        """Store a posted event unless its id is known; returns its document as it reads back
        (for a known id, the stored event's)."""
        event_id, record = to_record(event, self.zone, self.writer.limits)
        while event_id in self._pending:
            await asyncio.shield(self._pending[event_id])
        if event_id in self._recent:
            return await self._known(event_id, record)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[event_id] = future
        try:
            if await run_in_threadpool(self.stored, event_id):
                self._remember(event_id)
                return await self._known(event_id, record)
            await self.writer.write([record], SCOPE)
            self._remember(event_id)
            return posted_document(event_id, record, self.zone)
        finally:
            del self._pending[event_id]
            future.set_result(None)

    async def _known(self, event_id: str, record: Record) -> dict[str, Any]:
        """The stored document of a known id (the posted one while storage does not show it yet)."""
        found = await run_in_threadpool(self.find, event_id)
        return found if found is not None else posted_document(event_id, record, self.zone)

    def _remember(self, event_id: str) -> None:
        self._recent[event_id] = None
        self._recent.move_to_end(event_id)
        while len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def stored(self, event_id: str) -> bool:
        """Whether an event with this MADSci id is in storage."""
        return bool(
            self.storage.command(
                f"SELECT count() FROM {self.storage.names.logs} WHERE has(mapValues(LogAttributes), {{id:String}}) "
                f"AND LogAttributes['{semconv.LAB_EVENT_ID}'] = {{id:String}}",
                parameters={"id": event_id},
            )
        )

    # --- reading ---------------------------------------------------------------------------

    def find(self, event_id: str) -> dict[str, Any] | None:
        """One event by its MADSci id (or labtel's UUID), as a MADSci document."""
        rows = self.storage.rows(
            f"SELECT {EVENT_COLUMNS} FROM {self.storage.names.logs} WHERE has(mapValues(LogAttributes), {{id:String}}) "
            f"AND LogAttributes['{semconv.LAB_EVENT_ID}'] = {{id:String}} AND {NOT_EXPIRED} "
            "ORDER BY Timestamp LIMIT 1",
            parameters={"id": event_id},
        )
        found: Event | None = row_to_event(rows[0]) if rows else None
        if found is None:
            try:
                found = get_event(self.storage, str(UUID(event_id)))
            except ValueError:
                return None
        if found is None:
            return None
        return self.documents([found])[found.event_id]

    def documents(self, events: list[Event]) -> dict[str, dict[str, Any]]:
        """MADSci documents of labtel events, with their archive state, keyed by labtel id."""
        archived = self.archived_at([e.event_id for e in events])
        return {e.event_id: to_madsci(e, archived.get(e.event_id, 0), self.zone) for e in events}

    def archived_at(self, event_ids: list[str]) -> dict[str, int]:
        """When each of these (labtel) events was archived, in Unix nanoseconds; absent when not."""
        if not event_ids:
            return {}
        rows = self.storage.rows(
            f"SELECT toString(EventId) AS id, toUnixTimestamp64Nano(max(ArchivedAt)) AS at FROM {self.archive} "
            "WHERE EventId IN {ids:Array(UUID)} GROUP BY EventId",
            parameters={"ids": event_ids},
        )
        return {r["id"]: int(r["at"]) for r in rows}

    def listing(self, flt: EventFilter, number: int, offset: int, include_archived: bool) -> dict[str, Any]:
        """MADSci's `GET /events`: `number` events after the `offset` newest, newest first, `{id: event}`."""
        if not include_archived:
            flt.conditions.append(f"EventId NOT IN (SELECT EventId FROM {self.archive})")
        cursor = None
        if offset:
            cursor = self._cursor_after(flt, offset)
            if cursor is None:
                return {}
        events, _ = list_events(self.storage, flt, number, cursor)
        return self._keyed(events)

    def _cursor_after(self, flt: EventFilter, offset: int) -> str | None:
        """The page cursor after the `offset` newest events of `flt` (None when there are no more):
        the offset-th event's place in list_events' order, found reading its two columns only."""
        where, params = flt.where()
        rows = self.storage.rows(
            f"SELECT toUnixTimestamp64Nano(Timestamp) AS ts, toString(EventId) AS id FROM {self.storage.names.logs} "
            f"WHERE {where} ORDER BY Timestamp DESC, EventId DESC LIMIT 1 OFFSET {{skip:UInt64}}",
            parameters=params | {"skip": offset - 1},
        )
        return encode_cursor(int(rows[0]["ts"]), rows[0]["id"]) if rows else None

    def _keyed(self, events: list[Event]) -> dict[str, Any]:
        return {doc["_id"]: doc for doc in self.documents(events).values()}

    def query(self, selector: dict[str, Any], limit: int) -> dict[str, Any]:
        """MADSci's `POST /events/query`: every event matching the selector (archived too, unless
        it says `archived: false`), newest first."""
        selector, archived = self._archived_condition(selector)
        flt = EventFilter(selector=selector or None)
        flt.conditions.extend(archived)
        events, _ = list_events(self.storage, flt, limit, None)
        return self._keyed(events)

    def _archived_condition(self, selector: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The selector without a top-level `archived` field, and that field as SQL on the archive
        table (archived events are listed there, not marked in `otel_logs`)."""
        if "archived" not in selector:
            return selector, []
        value = selector["archived"]
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("$eq", "$ne"):
            op, operand = next(iter(value.items()))
            wanted = bool(operand) == (op == "$eq")
        elif isinstance(value, bool):
            wanted = value
        else:
            raise SelectorError('archived: compare with true or false, e.g. {"archived": false}')
        rest = {k: v for k, v in selector.items() if k != "archived"}
        return rest, [f"EventId {'' if wanted else 'NOT '}IN (SELECT EventId FROM {self.archive})"]

    # --- archive ---------------------------------------------------------------------------

    def archive_events(self, event_ids: list[str] | None, before_ns: int | None) -> int:
        """Archive events by MADSci id (or labtel id), or every event before a time; returns how many."""
        if event_ids:
            uuids = [str(UUID(i)) for i in event_ids if _is_uuid(i)]
            where = (
                f"(LogAttributes['{semconv.LAB_EVENT_ID}'] IN {{ids:Array(String)}} "
                "OR EventId IN {uuids:Array(UUID)})"
            )
            params: dict[str, Any] = {"ids": event_ids, "uuids": uuids}
        elif before_ns is not None:
            where, params = "Timestamp < fromUnixTimestamp64Nano({before:Int64})", {"before": before_ns}
        else:
            return 0
        where += f" AND {NOT_EXPIRED} AND EventId NOT IN (SELECT EventId FROM {self.archive})"
        logs = self.storage.names.logs
        count = int(self.storage.command(f"SELECT count() FROM {logs} WHERE {where}", parameters=params))
        if count:
            self.storage.command(
                f"INSERT INTO {self.archive} (EventId, ArchivedAt) SELECT EventId, now64(3) FROM {logs} WHERE {where}",
                parameters=params,
            )
        return count

    def archived(self, number: int, offset: int) -> dict[str, Any]:
        """Archived events, most recently archived first."""
        rows = self.storage.rows(
            f"SELECT toString(EventId) AS id FROM {self.archive} GROUP BY EventId "
            "ORDER BY max(ArchivedAt) DESC, id LIMIT {n:UInt32} OFFSET {o:UInt32}",
            parameters={"n": number, "o": offset},
        )
        ids = [r["id"] for r in rows]
        if not ids:
            return {}
        found = self.storage.rows(
            f"SELECT {EVENT_COLUMNS} FROM {self.storage.names.logs} WHERE EventId IN {{ids:Array(UUID)}}",
            parameters={"ids": ids},
        )
        events = {e.event_id: e for e in map(row_to_event, found)}
        return self._keyed([events[i] for i in ids if i in events])

    def purge(self, older_than_days: int) -> int:
        """Delete archived events archived more than `older_than_days` days ago, for good; their
        ids are forgotten, so posting one again stores it again."""
        old = (
            f"SELECT EventId FROM {self.archive} GROUP BY EventId "
            "HAVING max(ArchivedAt) < fromUnixTimestamp64Nano({cutoff:Int64})"
        )
        params = {"cutoff": time.time_ns() - older_than_days * DAY_NS}
        count = int(self.storage.command(f"SELECT count() FROM ({old})", parameters=params))
        if count:
            names = self.storage.names
            purged = self.storage.rows(
                f"SELECT DISTINCT LogAttributes['{semconv.LAB_EVENT_ID}'] AS id FROM {names.logs} "
                f"WHERE EventId IN ({old})",
                parameters=params,
            )
            self.storage.command(delete_rows(names, names.logs_store, f"EventId IN ({old})"), parameters=params)
            self.storage.command(f"DELETE FROM {self.archive} WHERE EventId IN ({old})", parameters=params)
            for row in purged:
                self._recent.pop(row["id"], None)
        return count

    # --- backups ---------------------------------------------------------------------------

    async def backup(self, description: str | None) -> dict[str, Any]:
        """Write a backup of the events and the archive; returns MADSci's `{backup_path, status}`."""
        label = re.sub(r"[^A-Za-z0-9_-]+", "_", description or "manual_backup")[:64]
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        folder = f"{self.backup_dir.rstrip('/')}/madsci-{stamp}-{label}"
        if self.storage.target.embedded:
            Path(folder).mkdir(parents=True, exist_ok=True)
        rows = await run_in_threadpool(self._write_backup, folder)
        size = _size(Path(folder)) if self.storage.target.embedded else 0
        record = Record(
            body=f"Backup of {rows} events to {folder}",
            time_ns=time.time_ns(),
            attributes={
                semconv.LAB_EVENT_TYPE: "backup_create",
                "madsci.backup.path": folder,
                "madsci.backup.rows": rows,
                "madsci.backup.size_bytes": size,
                "madsci.backup.description": description or "",
            },
            resource={semconv.SERVICE_NAME: SERVICE},
            event_name="backup_create",
        )
        await self.writer.write([record], SCOPE)
        return {"backup_path": folder, "status": "completed", "rows": rows, "size_bytes": size}

    def _write_backup(self, folder: str) -> int:
        for table, source in (("otel_logs", self.storage.names.logs), (MADSCI_ARCHIVE, self.archive)):
            target = _quote(f"{folder}/{table}.native")
            self.storage.command(f"INSERT INTO FUNCTION file({target}, 'Native') SELECT * FROM {source}")
        events = f"{folder}/otel_logs.native"
        if self.storage.target.embedded and (not Path(events).is_file() or Path(events).stat().st_size == 0):
            return 0  # nothing to back up: ClickHouse wrote no file
        return int(self.storage.command(f"SELECT count() FROM file({_quote(events)}, 'Native')"))

    def backups(self) -> list[dict[str, Any]]:
        """The backups made, newest first (from their `backup_create` events)."""
        rows = self.storage.rows(
            f"SELECT LogAttributes['madsci.backup.path'] AS path, toUnixTimestamp64Nano(Timestamp) AS ts, "
            f"LogAttributes['madsci.backup.size_bytes'] AS size FROM {self.storage.names.logs} "
            "WHERE EventType = 'backup_create' AND ServiceName = {service:String} "
            "AND mapContains(LogAttributes, 'madsci.backup.path') ORDER BY Timestamp DESC LIMIT 1000",
            parameters={"service": SERVICE},
        )
        found = []
        for r in rows:
            valid = (Path(r["path"]) / "otel_logs.native").is_file() if self.storage.target.embedded else None
            found.append(
                {
                    "path": r["path"],
                    "created_at": datetime.fromtimestamp(int(r["ts"]) / 1e9, UTC).isoformat(),
                    "size_bytes": int(r["size"] or 0),
                    "is_valid": valid,
                }
            )
        return found


def default_backup_dir(storage: Storage) -> str:
    """`<embedded store>/backups`, or `labtel-backups` under a server's `user_files_path`."""
    if not storage.target.embedded:
        return "labtel-backups"
    base = storage.target.path or tempfile.gettempdir()
    return str(Path(base) / "backups")


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*") if f.is_file())


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True
