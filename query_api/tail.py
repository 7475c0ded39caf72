"""Events in the order they were stored, for the live tail (`GET /events/stream`).

`EventId` is a UUIDv7 that ClickHouse makes at insert, so its text sorts in insert order (its
embedded millisecond, then a counter ClickHouse keeps monotonic across concurrent inserts;
ClickHouse's own UUID comparison does not follow that order, the text does). Following
insert order, and not event time, a tail shows every event once it is stored, however late
it arrives: batches stored from the write-ahead log after an outage, a client's spool sent
after a restart, clocks that are off.
"""

from __future__ import annotations

from typing import Any

from labtel.collector.storage.client import Storage
from labtel.query_api.events import EVENT_COLUMNS, EventFilter, row_to_event
from labtel.query_api.models import Event

INSERTED_MS = "toUnixTimestamp64Milli(UUIDv7ToDateTime(EventId))"
"""Insert time of a stored event, in Unix milliseconds (the idx_inserted_at minmax index answers it)."""


def now_ms(storage: Storage) -> int:
    """ClickHouse's clock, the one insert times are made with, in Unix milliseconds."""
    return int(storage.command("SELECT toUnixTimestamp64Milli(now64(3))"))


def inserted_ms(event_id: str) -> int:
    """The insert time embedded in an event id (UUIDv7: its first 48 bits)."""
    return int(event_id.replace("-", "")[:12], 16)


def id_at(ms: int) -> str:
    """The smallest event id of an insert time: events stored from `ms` on sort after it."""
    text = f"{max(ms, 0):012x}" + "0" * 20
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def events_stored_after(
    storage: Storage, flt: EventFilter, since_ms: int, after_id: str, skip: list[str], limit: int
) -> list[tuple[Event, int]]:
    """Events matching `flt` inserted at or after `since_ms` and after the event `after_id` in
    insert order, less the ids in `skip`, in insert order: (event, insert ms) pairs."""
    where, params = flt.where()
    sql = (
        f"SELECT {EVENT_COLUMNS}, {INSERTED_MS} AS inserted_ms FROM {storage.names.logs} WHERE {where} "
        f"AND {INSERTED_MS} >= {{since_ms:Int64}} AND toString(EventId) > {{after_id:String}} "
        + ("AND toString(EventId) NOT IN {skip:Array(String)} " if skip else "")
        + "ORDER BY toString(EventId) LIMIT {limit:UInt32}"
    )
    params.update(since_ms=since_ms, after_id=after_id, skip=skip, limit=limit)
    rows: list[dict[str, Any]] = storage.rows(sql, parameters=params)
    return [(row_to_event(row), int(row["inserted_ms"])) for row in rows]
