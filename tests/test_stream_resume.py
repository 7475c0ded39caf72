"""Resuming the live tail (`Last-Event-ID`) across an insert that commits late: the tail generator of
`GET /events/stream` over real chDB storage, with rows stored under event ids of an insert that
began before the resumed event and committed after it had been sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from labtel.collector.storage.client import Storage
from labtel.query_api.events import EventFilter
from labtel.query_api.routes.stream import tail

KEY = (("service", "resume"),)


class Connected:
    """A request whose client stays connected (the generator is closed by the test)."""

    async def is_disconnected(self) -> bool:
        return False


def store(storage: Storage, body: str, event_id: str | None = None) -> None:
    columns, values = "ServiceName, Body, Timestamp", "'resume', {body:String}, now64(9)"
    if event_id is not None:  # the id ClickHouse made when an insert began, stored as it commits
        columns, values = f"{columns}, EventId", f"{values}, toUUID({{event_id:String}})"
    storage.command(
        f"INSERT INTO {storage.names.logs} ({columns}) VALUES ({values})",
        parameters={"body": body, "event_id": event_id or ""},
    )


def bodies(storage: Storage, after_id: str | None, count: int, key: tuple[tuple[str, str], ...] = KEY) -> list[str]:
    """'<id> <body>' of the first `count` events a tail after `after_id` sends (at most 4 s)."""

    async def collect() -> list[str]:
        found: list[str] = []
        frames = tail(Connected(), storage, EventFilter(service="resume"), after_id, 0.1, key)  # type: ignore[arg-type]
        try:
            async with asyncio.timeout(4):
                async for frame in frames:
                    if frame.startswith(b"id: "):
                        head, _, data = frame.partition(b"data: ")
                        found.append(f"{head.split()[1].decode()} {json.loads(data)['body']}")
                        if len(found) >= count:
                            break
        except TimeoutError:
            pass
        finally:
            await frames.aclose()
        return found

    return asyncio.run(collect())


def test_a_resumed_tail_sends_what_committed_late_and_repeats_nothing(storage: Storage) -> None:
    began = str(storage.command("SELECT toString(generateUUIDv7())"))  # an insert begins...
    store(storage, "first")
    store(storage, "second")  # ...two later ones commit before it
    start = "00000000-0000-0000-0000-000000000000"
    sent = bodies(storage, start, 2)
    assert [line.split()[1] for line in sent] == ["first", "second"]
    store(storage, "late", event_id=began)  # it commits after the tail sent both
    # The client got only "first" (the connection broke): resuming after it brings "second" and
    # the late one, and not "first" again.
    resumed = bodies(storage, sent[0].split()[0], 3)
    assert sorted(line.split()[1] for line in resumed) == ["late", "second"]


def test_a_resume_the_server_does_not_know_follows_insert_order(storage: Storage) -> None:
    store(storage, "one")
    store(storage, "two")
    sent = bodies(storage, "00000000-0000-0000-0000-000000000000", 2, key=(("service", "resume"), ("x", "1")))
    # another process (or filters) did not send it: after "one", in insert order
    resumed = bodies(storage, sent[0].split()[0], 2)
    assert [line.split()[1] for line in resumed] == ["two"]


def test_a_new_tail_names_where_it_starts_and_ends_when_the_api_closes(storage: Storage) -> None:
    """The first frame of a tail that resumes nothing carries its start as `id`: a client that
    reconnects with it before any event came gets what was stored meanwhile. Setting `closing`
    (the query API shutting down) ends the tail at once, whatever the poll interval."""

    async def first_frame_then_close() -> tuple[bytes, float]:
        closing = asyncio.Event()
        frames = tail(Connected(), storage, EventFilter(service="resume"), None, 10.0, KEY, closing)  # type: ignore[arg-type]
        first = await anext(frames)
        waiting = asyncio.ensure_future(anext(frames))
        await asyncio.sleep(0.5)  # polling, then sleeping for 10 s
        began = time.monotonic()
        closing.set()
        with contextlib.suppress(StopAsyncIteration):
            await asyncio.wait_for(waiting, 5)
        return first, time.monotonic() - began

    first, ended_in = asyncio.run(first_frame_then_close())
    assert ended_in < 2
    lines = first.decode().splitlines()
    assert lines[0] == "retry: 2000"
    start = lines[1].removeprefix("id: ")
    store(storage, "while nobody listened")
    assert [line.split(maxsplit=1)[1] for line in bodies(storage, start, 1)] == ["while nobody listened"]

    async def resumed_first_frame() -> bytes:
        frames = tail(Connected(), storage, EventFilter(service="resume"), start, 0.1, KEY)  # type: ignore[arg-type]
        try:
            return await anext(frames)
        finally:
            await frames.aclose()

    assert asyncio.run(resumed_first_frame()) == b"retry: 2000\n\n"  # the client's own id stands
