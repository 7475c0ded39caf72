"""`GET /events/stream`: a live tail over Server-Sent Events, against a real uvicorn server."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx

from tests.helpers import LabtelServer, log_record, logs_request


def send(server: LabtelServer, bodies: list[str], service: str = "tail") -> None:
    request = logs_request([log_record(body) for body in bodies], resource={"service.name": service})
    httpx.post(
        f"{server.http}/v1/logs",
        content=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    ).raise_for_status()


def read_events(
    server: LabtelServer, count: int, headers: dict[str, str] | None = None, on_open: Any = None, **params: Any
) -> list[tuple[str, dict[str, Any]]]:
    """(SSE id, event) pairs, until `count` events arrived (at most 30 s)."""
    found: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream(
        "GET",
        f"{server.api}/events/stream",
        params={"poll": 0.2, **params},
        headers=headers or {},
        timeout=httpx.Timeout(30.0),
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        if on_open is not None:
            on_open()
        frame: dict[str, str] = {}
        deadline = time.monotonic() + 30
        for line in response.iter_lines():
            if line.startswith(("id: ", "event: ", "data: ")):
                key, _, value = line.partition(": ")
                frame[key] = value
            elif not line and "data" in frame:
                found.append((frame["id"], json.loads(frame["data"])))
                frame = {}
                if len(found) >= count:
                    break
            if time.monotonic() > deadline:
                break
    return found


def test_the_tail_sees_events_logged_after_it_connected(server: LabtelServer) -> None:
    send(server, ["before connecting"])
    time.sleep(1.5)  # older than the tail's one-second grace
    opened = threading.Event()
    sender = threading.Thread(
        target=lambda: (
            opened.wait(10),
            time.sleep(0.3),
            send(server, ["first", "second"]),
            time.sleep(0.5),
            send(server, ["third"]),
            send(server, ["elsewhere"], service="other"),
        )
    )
    sender.start()
    events = read_events(server, 3, on_open=opened.set, service="tail")
    sender.join()
    assert [e["body"] for _, e in events] == ["first", "second", "third"]
    assert all(sse_id for sse_id, _ in events)

    # Resume after "first": the browser's Last-Event-ID brings exactly what followed it.
    send(server, ["fourth"])
    resumed = read_events(server, 3, headers={"Last-Event-ID": events[0][0]}, service="tail")
    assert [e["body"] for _, e in resumed] == ["second", "third", "fourth"]


def test_a_bad_resume_token_is_refused(server: LabtelServer) -> None:
    response = httpx.get(f"{server.api}/events/stream", headers={"Last-Event-ID": "not-a-cursor"}, timeout=10)
    assert response.status_code == 400


def test_the_tail_shows_events_stored_late_whatever_their_event_time(server: LabtelServer) -> None:
    # Found by bench/soak.py: batches stored from the write-ahead log after an outage (or a client's
    # spool sent after a restart) carry event times older than what the tail already sent; a tail
    # that followed event time skipped them. It follows insert order.
    def late(body: str, age_s: float) -> None:
        record = log_record(body, time_ns=time.time_ns() - int(age_s * 1e9))
        request = logs_request([record], resource={"service.name": "late"})
        httpx.post(
            f"{server.http}/v1/logs",
            content=request.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        ).raise_for_status()

    opened = threading.Event()
    sender = threading.Thread(
        target=lambda: (
            opened.wait(10),
            time.sleep(0.3),
            send(server, ["live"], service="late"),
            time.sleep(0.6),
            late("an hour late", 3600),
            late("a minute late", 60),
            send(server, ["live again"], service="late"),
        )
    )
    sender.start()
    events = read_events(server, 4, on_open=opened.set, service="late")
    sender.join()
    assert [e["body"] for _, e in events] == ["live", "an hour late", "a minute late", "live again"]
    assert [sse_id for sse_id, _ in events] == [e["event_id"] for _, e in events]

    # Resuming after "live" brings what was stored after it, in the order it was stored.
    resumed = read_events(server, 3, headers={"Last-Event-ID": events[0][0]}, service="late")
    assert [e["body"] for _, e in resumed] == ["an hour late", "a minute late", "live again"]


def test_the_tail_from_a_start_time_sends_the_stored_events_first(server: LabtelServer) -> None:
    send(server, ["stored before"], service="history")
    start = time.time() - 60
    events = read_events(server, 1, service="history", start=f"{start:.3f}")
    assert [e["body"] for _, e in events] == ["stored before"]
