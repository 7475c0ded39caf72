"""The real `master-log-client` timing out while labtel stores its events, then sending them again:
each event is stored once, and events sent twice on purpose are stored twice.

The query API runs on a real uvicorn server in this process, over real storage; only the store
is made slow (it sleeps before the insert), so that the client gives up while it is under way."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from master_log_client import MasterLogClient

from labtel.collector.storage.client import Storage
from labtel.query_api.app import create_app
from labtel.query_api.compat.ingest import EventWriter
from labtel.query_api.compat.unanswered import Unanswered, fingerprint
from tests.conftest import migrated_storage
from tests.helpers import serving, wait_for

SLOW_S = 1.5
"""How long a slowed store sleeps: longer than the client's timeout."""
TIMEOUT_S = 0.5


class SlowFirstStores:
    """Makes the next `count` stores of a writer sleep SLOW_S before they insert."""

    def __init__(self, writer: EventWriter) -> None:
        self.count = 0
        self._store = writer.store
        writer.store = self.store  # type: ignore[method-assign]

    async def store(self, data: bytes, records: int) -> Any:
        if self.count > 0 and records:
            self.count -= 1
            await asyncio.sleep(SLOW_S)
        return await self._store(data, records)


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Storage]:
    with migrated_storage(chdb_path) as storage:
        yield storage


@pytest.fixture(scope="module")
def api(store: Storage) -> Iterator[tuple[str, SlowFirstStores]]:
    app = create_app(store)
    slow = SlowFirstStores(app.state.compat_writer)
    with serving(app, "") as url:
        yield url, slow


def bodies(store: Storage, tag: str) -> list[str]:
    rows = store.rows(
        f"SELECT Body FROM {store.names.logs} WHERE LogAttributes['tags'] LIKE {{t:String}} ORDER BY Body",
        parameters={"t": f"%{tag}%"},
    )
    return [row["Body"] for row in rows]


def test_a_synchronous_send_retried_after_a_timeout_is_stored_once(
    api: tuple[str, SlowFirstStores], store: Storage
) -> None:
    url, slow = api
    tag = f"sync-{uuid.uuid4().hex[:6]}"
    client = MasterLogClient(api_key="k", endpoint=url, async_mode=False, timeout_seconds=TIMEOUT_S)
    slow.count = 1
    first = client.log("valve opened", tags=tag)
    assert not first.ok  # the client gave up; the store goes on
    wait_for(lambda: bodies(store, tag) == ["valve opened"], what="the first store", timeout=10)
    again = client.log("valve opened", tags=tag)  # the user's retry: the same event
    assert again.ok, again
    stored = store.rows(
        f"SELECT LogAttributes['lab.event.id'] AS id FROM {store.names.logs} WHERE LogAttributes['tags'] LIKE {{t:String}}",
        parameters={"t": f"%{tag}%"},
    )
    assert [row["id"] for row in stored] == [again.event_id]  # answered with the id it was stored under
    assert client.log("valve opened", tags=tag).ok  # sent again on purpose, the client waiting: stored
    assert bodies(store, tag) == ["valve opened", "valve opened"]


def test_a_batch_the_client_gave_up_on_is_stored_once_with_the_events_after_it(
    api: tuple[str, SlowFirstStores], store: Storage
) -> None:
    """The background worker sends the batch again at its next flush, while the first store is
    still under way, with newer events after it."""
    url, slow = api
    tag = f"batch-{uuid.uuid4().hex[:6]}"
    client = MasterLogClient(
        api_key="k",
        endpoint=url,
        async_mode=True,
        timeout_seconds=TIMEOUT_S,
        flush_interval_seconds=0.2,
        batch_size=1000,
    )
    try:
        slow.count = 1
        for index in range(20):
            assert client.log(f"reading {index:02d}", tags=tag).ok
        time.sleep(0.6)  # the first batch is sent; the client gives up on it
        for index in range(20, 25):
            client.log(f"reading {index:02d}", tags=tag)
        client.log("reading 00", tags=tag)  # an equal event, logged on purpose
        expected = sorted([f"reading {index:02d}" for index in range(25)] + ["reading 00"])
        # The worker sends again at each flush interval (a send that waited on the first store
        # past its timeout is not stored either) until one is answered.
        wait_for(lambda: bodies(store, tag) == expected, what="every event once", timeout=15)
        result = client.flush(timeout_seconds=5)
        assert (result.ok, result.accepted) == (True, 0), result  # nothing left pending
    finally:
        client.shutdown(5)
    time.sleep(0.5)
    assert bodies(store, tag) == expected


def test_the_ledger_matches_each_remembered_event_once_and_forgets_in_time() -> None:
    now = [0.0]
    ledger = Unanswered(keep_s=60, most=3, clock=lambda: now[0])
    a, b = fingerprint({"body": "a"}, "key"), fingerprint({"body": "b"}, "key")
    assert fingerprint({"body": "a"}, "other key") != a
    assert fingerprint({"title": "t", "body": "a"}, "k") == fingerprint({"body": "a", "title": "t"}, "k")
    ledger.remember([(a, b"1"), (a, b"2")])
    assert ledger.match([a, b, a, a]) == {0: b"1", 2: b"2"}  # two stored, two matched
    ledger.consume([a])
    assert ledger.match([a, a]) == {0: b"2"}
    ledger.remember([(b, b"3"), (b, b"4"), (b, b"5")])  # over `most`: the oldest goes
    assert len(ledger) == 3
    assert ledger.match([a]) == {}
    now[0] = 61
    assert len(ledger) == 0


def test_a_batch_waits_for_the_store_under_way_of_equal_events() -> None:
    async def scenario() -> list[str]:
        ledger = Unanswered()
        key = fingerprint({"body": "a"}, "key")
        seen: list[str] = []

        async def first() -> None:
            async with ledger.storing([key]) as earlier:
                seen.append(f"first {earlier}")
                await asyncio.sleep(0.2)
                ledger.remember([(key, b"id-1")])  # its client went away meanwhile

        async def retry() -> None:
            await asyncio.sleep(0.05)
            async with ledger.storing([key]) as earlier:
                seen.append(f"retry {earlier}")

        await asyncio.gather(first(), retry())
        return seen

    assert asyncio.run(scenario()) == ["first {}", "retry {0: b'id-1'}"]
