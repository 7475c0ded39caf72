"""PANOPTES telemetry contract tests against `labtel serve`'s `/panoptes/` routes.

No installable PANOPTES client has the telemetry module for this Python (panoptes-utils ≥ 0.5
needs 3.12), so these send exactly what panoptes-utils' `TelemetryClient` sends (seed 004 and
its source: paths, JSON bodies, `ts` in UTC with milliseconds and Z) and check what it reads."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest

from labtel.query_api.compat.panoptes import SEQ_BLOCK, site_day_key
from tests.compat_helpers import compat_server
from tests.helpers import LabtelServer

SITE_ZONE = "Atlantic/Canary"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabtelServer]:
    """One `labtel serve` for a La Palma site."""
    running = compat_server(tmp_path_factory.mktemp("panoptes"), f"panoptes: {{timezone: {SITE_ZONE}}}")
    yield running
    running.kill()


class Telemetry:
    """The requests panoptes-utils' TelemetryClient makes, to `base_url` (its `_request`)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def request(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return httpx.request(method, f"{self.base_url}{path}", json=json, timeout=30)

    def ok(self, method: str, path: str, json: Any = None) -> Any:
        answer = self.request(method, path, json)
        assert answer.status_code < 400, answer.text
        return answer.json()

    def post_event(self, event_type: str, data: Any, make_current: bool = True, **extra: Any) -> dict[str, Any]:
        payload = {"type": event_type, "data": data, "make_current": make_current, "store_permanently": True}
        payload |= {"meta": {}, "ts": datetime.now(ZoneInfo("UTC")).isoformat(timespec="milliseconds")[:-6] + "Z"}
        payload |= extra
        result: dict[str, Any] = self.ok("POST", "/event", payload)
        return result

    def start_run(
        self, run_dir: str | None = None, run_id: str | None = None, meta: dict[str, Any] | None = None
    ) -> Any:
        payload_meta = dict(meta or {})
        if run_id is not None:
            payload_meta["run_id"] = run_id
        return self.request("POST", "/run/start", {"run_dir": run_dir, "run_id": run_id, "meta": payload_meta})


@pytest.fixture(scope="module")
def telemetry(server: LabtelServer) -> Telemetry:
    return Telemetry(f"{server.api}/panoptes")


def test_health_ready_and_site_events(telemetry: Telemetry) -> None:
    assert telemetry.ok("GET", "/health") == {"ok": True}
    assert telemetry.ok("GET", "/ready")["run_active"] is False
    first = telemetry.post_event("weather", {"wind_speed": "12.5 km / h", "safe": True})
    second = telemetry.post_event("weather", {"wind_speed": "30.0 km / h", "safe": False})
    assert set(first) == {"seq", "ts", "type", "data", "meta"}  # responses omit the stream
    assert second["seq"] == first["seq"] + 1
    assert telemetry.ok("GET", "/current/weather") == second
    assert telemetry.ok("GET", "/current")["current"]["weather"] == second
    missing = telemetry.request("GET", "/current/no-such-type")
    assert missing.status_code == 404
    assert "no-such-type" in missing.json()["detail"]
    assert telemetry.request("GET", "/run").status_code == 404
    assert telemetry.request("POST", "/run/stop").status_code == 404


def test_make_current_store_permanently_and_client_ts(server: LabtelServer, telemetry: Telemetry) -> None:
    kept = telemetry.post_event("mount", {"ra": 10.5}, ts="2026-06-01T01:02:03.456Z")
    assert kept["ts"] == "2026-06-01T01:02:03.456Z"
    quiet = telemetry.post_event("mount", {"ra": 11.0}, make_current=False)
    ephemeral = telemetry.post_event("camera", {"temp": -10}, store_permanently=False)
    assert quiet["seq"] > kept["seq"]
    assert telemetry.ok("GET", "/current/mount") == kept  # make_current=false left it
    assert telemetry.ok("GET", "/current/camera") == ephemeral  # current, though not stored
    server.wait_until_stored()
    stored = server.all_events(service="panoptes-telemetry")
    seqs = {int(e["attributes"]["panoptes.seq"]): e for e in stored}
    assert ephemeral["seq"] not in seqs
    assert seqs[kept["seq"]]["timestamp"].startswith("2026-06-01T01:02:03.456")
    assert seqs[kept["seq"]]["event_type"] == "mount"
    assert seqs[kept["seq"]]["attributes"]["ra"] == "10.5"
    assert seqs[quiet["seq"]]["attributes"]["panoptes.stream"] == "site"


def test_runs(server: LabtelServer, telemetry: Telemetry) -> None:
    site = telemetry.post_event("safety", {"safe": True})
    started = telemetry.start_run(meta={"observer": "pan001"})
    assert started.status_code == 200
    run = started.json()
    assert run["run_id"] == "001"
    assert run["run_dir"] == "telemetry/001"
    assert run["meta"] == {"observer": "pan001", "run_id": "001"}
    assert telemetry.start_run().status_code == 409
    assert telemetry.ok("GET", "/run") == run
    assert telemetry.ok("GET", "/ready")["run_active"] is True
    in_run = telemetry.post_event("safety", {"safe": False}, meta={"frame": 1})
    assert in_run["meta"] == {"frame": 1, "run_id": "001"}
    assert in_run["seq"] == 1  # the run stream counts on its own
    assert telemetry.ok("GET", "/current/safety") == in_run  # the run view over the site view
    assert telemetry.ok("POST", "/run/stop") == run
    assert telemetry.ok("GET", "/current/safety") == site  # the run view went with the run
    again = telemetry.start_run(run_dir="nights/second", run_id="pan-7").json()
    assert (again["run_id"], again["run_dir"]) == ("pan-7", "telemetry/nights/second")
    assert telemetry.request("GET", "/current/safety").json() == site  # a new run starts empty
    next_in_run = telemetry.post_event("focus", {"fwhm": 2.1})
    assert next_in_run["seq"] == 2  # not reset between runs
    telemetry.ok("POST", "/run/stop")
    third = telemetry.start_run(meta={"run_id": "from-meta"}).json()
    assert third["run_id"] == "from-meta"
    telemetry.ok("POST", "/run/stop")
    assert telemetry.start_run().json()["run_id"] == "002"  # one more than the highest number
    telemetry.ok("POST", "/run/stop")

    server.wait_until_stored()
    lines = [orjson.loads(line) for line in httpx.get(f"{telemetry.base_url}/run/001.ndjson").content.splitlines()]
    assert lines == [in_run | {"stream": "run"}]
    assert httpx.get(f"{telemetry.base_url}/run/002.ndjson").content == b""
    assert httpx.get(f"{telemetry.base_url}/run/999.ndjson").status_code == 404


def test_site_export_by_local_noon_day_key(server: LabtelServer, telemetry: Telemetry) -> None:
    event = telemetry.post_event("enclosure", {"open": True}, ts="2020-01-01T00:00:00.000Z")
    day = site_day_key(datetime.now(ZoneInfo(SITE_ZONE)))  # the server clock decides, not ts
    server.wait_until_stored()
    answer = httpx.get(f"{telemetry.base_url}/site/{day}.ndjson")
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in answer.content.splitlines()]
    assert event | {"stream": "site"} in lines
    assert all(line["stream"] == "site" for line in lines)
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)
    assert httpx.get(f"{telemetry.base_url}/site/19990101.ndjson").content == b""
    assert httpx.get(f"{telemetry.base_url}/site/today.ndjson").status_code == 404
    assert site_day_key(datetime(2026, 3, 5, 11, 59, tzinfo=ZoneInfo(SITE_ZONE))) == "20260304"
    assert site_day_key(datetime(2026, 3, 5, 12, 0, tzinfo=ZoneInfo(SITE_ZONE))) == "20260305"


def test_state_survives_a_restart(server: LabtelServer, telemetry: Telemetry) -> None:
    before = telemetry.post_event("weather", {"wind_speed": "5 km / h"})
    run = telemetry.start_run(run_id="across-restart").json()
    in_run = telemetry.post_event("guide", {"rms": 0.4})
    server.stop()
    server.start()
    telemetry.base_url = f"{server.api}/panoptes"
    assert telemetry.ok("GET", "/run") == run  # the run is still active
    assert telemetry.ok("GET", "/current/weather") == before
    assert telemetry.ok("GET", "/current/guide") == in_run
    after = telemetry.post_event("guide", {"rms": 0.5})
    assert in_run["seq"] < after["seq"] <= in_run["seq"] + SEQ_BLOCK  # seq goes on (PANOPTES restarts at 1)
    telemetry.ok("POST", "/run/stop")
    site_after = telemetry.post_event("weather", {"wind_speed": "6 km / h"})
    assert before["seq"] < site_after["seq"] <= before["seq"] + SEQ_BLOCK
    assert telemetry.request("POST", "/shutdown").status_code == 409
    bad = telemetry.request("POST", "/event", {"data": {}})
    assert bad.status_code == 422
    assert telemetry.request("POST", "/event", {"type": "x", "data": 1, "ts": "not a time"}).status_code == 422
