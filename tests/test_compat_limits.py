"""Large events through the compatibility routes of `labtel serve`: more keys than a record may
have attributes, JSON longer than an attribute value may be, a body over its limit. They are
stored, never refused (MADSci's client drops a refused event, PANOPTES' raises, Master Log's
resends its batch forever), and read back whole through the compat routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.compat_helpers import compat_server
from tests.helpers import LabtelServer

MANY_KEYS = {f"k{i}": i for i in range(150)}  # over max_attributes_per_record (128)
LONG_LIST = {"readings": list(range(20_000))}  # ~110 KB of JSON, over max_attribute_value_length (64 KiB)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabtelServer]:
    running = compat_server(tmp_path_factory.mktemp("limits"), "madsci: {timezone: UTC}")
    yield running
    running.kill()


def only_event(server: LabtelServer, **selector: str) -> dict[str, Any]:
    server.wait_until_stored()
    (found,) = server.all_events(**selector)
    return found


@pytest.mark.parametrize("data", [MANY_KEYS, LONG_LIST, {"message": "x" * 70_000}], ids=["keys", "list", "text"])
def test_large_madsci_event_data_is_stored_and_read_back_whole(server: LabtelServer, data: dict[str, Any]) -> None:
    posted = httpx.post(f"{server.api}/madsci/event", json={"event_type": "data_store", "event_data": data})
    assert posted.status_code == 200, posted.text
    event_id = posted.json()["_id"]
    stored = only_event(server, **{"attr.lab.event.id": event_id})
    assert len(stored["attributes"]) <= 128
    assert stored["event_type"] == "data_store"
    read = httpx.get(f"{server.api}/madsci/event/{event_id}").json()
    assert read["event_data"] == data
    (queried,) = httpx.post(f"{server.api}/madsci/events/query", json={"_id": event_id}).json().values()
    assert queried["event_data"] == data


def test_many_keys_are_attributes_as_far_as_they_fit(server: LabtelServer) -> None:
    posted = httpx.post(f"{server.api}/madsci/event", json={"event_data": {"plate": "p1", **MANY_KEYS}})
    attributes = only_event(server, **{"attr.lab.event.id": posted.json()["_id"]})["attributes"]
    assert attributes["plate"] == "p1"  # the first keys are attributes, selectors see them
    kept = [k for k in MANY_KEYS if k in attributes]
    assert kept == list(MANY_KEYS)[: len(kept)]
    assert int(attributes["lab.attributes_left_out"]) == len(MANY_KEYS) - len(kept) > 0


def test_large_panoptes_data_is_stored_and_exported_whole(server: LabtelServer) -> None:
    assert httpx.post(f"{server.api}/panoptes/run/start", json={"run_id": "limits"}).status_code == 200
    try:
        for data in (MANY_KEYS, LONG_LIST):
            posted = httpx.post(f"{server.api}/panoptes/event", json={"type": "image_meta", "data": data})
            assert posted.status_code == 200, posted.text
    finally:
        httpx.post(f"{server.api}/panoptes/run/stop")
    server.wait_until_stored()
    lines = httpx.get(f"{server.api}/panoptes/run/limits.ndjson").text.splitlines()
    assert [orjson.loads(line)["data"] for line in lines] == [MANY_KEYS, LONG_LIST]


def test_large_master_log_events_are_stored(server: LabtelServer) -> None:
    logs = [
        {"body": "many keys", "tags": ["limits"], "metadata": {"fits_header": MANY_KEYS}},
        {"body": "long metadata", "tags": ["limits"], "metadata": LONG_LIST},
        {"body": "y" * 2_000_000, "tags": ["limits"]},  # over max_body_length (1 MiB)
        {"body": "small", "tags": ["limits"]},
    ]
    answer = httpx.post(f"{server.api}/api/v1/logs/batch", json={"logs": logs}, timeout=30)
    assert (answer.status_code, answer.json()["accepted"]) == (200, 4), answer.text
    server.wait_until_stored()
    found = {e["body"][:13]: e for e in server.all_events(**{"attr.tags": '["limits"]'})}
    assert sorted(found) == ["long metadata", "many keys", "small", "y" * 13]
    assert found["many keys"]["attributes"]["fits_header.k0"] == "0"
    cut = found["y" * 13]
    assert cut["body"].endswith("…[cut: 2000000 bytes]")
    assert len(cut["body"].encode()) <= 1024 * 1024
    assert cut["attributes"]["lab.truncated"] == '["body"]'
    metadata = found["long metadata"]["attributes"]
    assert "master_log.metadata" in orjson.loads(metadata["lab.truncated"])
    assert "readings" not in metadata  # too long for an attribute: only in the (cut) whole copy
