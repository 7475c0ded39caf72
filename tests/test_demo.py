"""`labtel demo`: deterministic simulated labs whose ground truth matches what they emit and store."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from labtel.demo.observatory import TIMEZONE, night_bounds
from labtel.demo.runner import Window, backfill_window, item_json, simulate
from labtel.demo.sim import SECOND, Log
from tests.helpers import LabtelServer

START = 1_774_000_000_000_000_000  # 2026-03-20, ten days before Europe's DST change


def items_of(window: Window, seed: int, **kwargs: Any) -> list[dict[str, Any]]:
    items, _ = simulate(window, seed, **kwargs)
    return [item_json(item) for item in items]


def test_same_seed_same_events() -> None:
    window = backfill_window(12 * 3600, START)
    first, second = items_of(window, 11), items_of(window, 11)
    assert first == second
    assert len(first) > 2000
    assert items_of(window, 12) != first
    assert [i["t"] for i in first] == sorted(i["t"] for i in first)  # time order
    assert all(window.start_ns <= i["t"] <= window.end_ns for i in first)


def test_print_mode_is_deterministic_across_processes() -> None:
    command = [
        sys.executable,
        "-m",
        "labtel.cli",
        "demo",
        "--backfill",
        "3h",
        "--start",
        "2026-03-28T22:00:00Z",
        "--seed",
        "5",
        "--print",
    ]
    outputs = [
        subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout for _ in range(2)
    ]
    assert outputs[0] == outputs[1]
    lines = [json.loads(line) for line in outputs[0].splitlines()]
    assert {line["kind"] for line in lines} == {"log", "span_start", "span_end"}


def test_the_truth_is_what_the_events_say() -> None:
    """Recompute node busy time, action outcomes and frames from the emitted events alone."""
    window = backfill_window(2 * 86400, START)
    items, truth = simulate(window, 3)
    starts: dict[str, tuple[str, int]] = {}
    busy: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    frames = device_failures = 0
    for item in items:
        if not isinstance(item, Log):
            continue
        kind = item.fields.get("event_type")
        if kind == "action_start":
            starts[item.fields["action_id"]] = (item.fields["node_id"], item.time_ns)
        elif kind == "action_status_change" and item.fields.get("status") in ("succeeded", "failed"):
            node, started = starts.pop(item.fields["action_id"])
            busy[node] += item.time_ns - started
            outcomes[(node, item.fields["status"])] += 1
        elif kind == "frame_captured":
            frames += 1
        elif kind == "device_io" and not item.fields["success"]:
            device_failures += 1
    for node, started in starts.values():  # still running when the window ends
        busy[node] += window.end_ns - started
    assert set(busy) == set(truth.nodes)
    for node, expected in truth.nodes.items():
        assert abs(busy[node] / SECOND - expected.busy_seconds) < 1e-3, node
        assert outcomes[(node, "succeeded")] == expected.actions_completed
        assert outcomes[(node, "failed")] == expected.actions_failed
        assert expected.busy_seconds <= (window.end_ns - window.start_ns) / SECOND
    assert frames == truth.observatory["frames"] > 0
    assert device_failures == sum(c["failures"] for c in truth.devices.values()) > 0
    assert truth.experiments["started"] >= truth.experiments["completed"] > 0
    assert sum(u.actions for u in truth.users.values()) == sum(
        n.actions_completed + n.actions_failed for n in truth.nodes.values()
    )


def test_nights_follow_the_sites_clock_across_daylight_saving() -> None:
    from datetime import datetime

    before = night_bounds(datetime(2026, 3, 28))
    after = night_bounds(datetime(2026, 3, 30))
    assert before[0].utcoffset().total_seconds() == 0
    assert after[0].utcoffset().total_seconds() == 3600
    assert before[0].tzinfo is TIMEZONE
    for dusk, dawn in (before, after):
        assert 18 <= dusk.hour <= 21
        assert 5 <= dawn.hour <= 8
        assert dawn > dusk


def test_backfill_lands_in_a_fresh_store(server: LabtelServer, tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "labtel.cli",
            "demo",
            "--backfill",
            "1d",
            "--start",
            "2026-03-28T12:00:00Z",
            "--seed",
            "9",
            "--endpoint",
            f"http://{server.grpc}",
            "--no-serve",
            "--truth",
            str(truth_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "dropped 0" in " ".join(result.stderr.split())
    truth = json.loads(truth_path.read_text())
    assert truth["observatory"]["frames"] > 0
    server.wait_until_stored()
    assert len(server.all_events(event_type="frame_captured", limit=1000)) == truth["observatory"]["frames"]
    node, expected = max(truth["nodes"].items(), key=lambda kv: kv[1]["actions_completed"])
    completed = server.all_events(event_type="action_complete", node=node, limit=1000)
    assert len(completed) == expected["actions_completed"]
    runs = server.all_events(event_type="run_complete", service="pychron.argon-line-1", limit=1000)
    assert len(runs) == truth["geochronology"]["runs_completed"]
    trace = server.get(f"/traces/{completed[0]['trace_id']}").json()
    names = {span["name"].split(" ")[0] for span in trace["spans"]}
    assert {"experiment", "workflow", "step"} <= names
    assert any(completed[0]["event_id"] in span["event_ids"] for span in trace["spans"])


def test_demo_starts_a_collector_when_none_listens(tmp_path: Path) -> None:
    import os
    import socket

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    grpc, http, api = free_port(), free_port(), free_port()
    env = {  # the gRPC receiver's address comes from --endpoint
        **{k: v for k, v in os.environ.items() if k != "LABTEL_GRPC_ENDPOINT"},
        "LABTEL_HTTP_ENDPOINT": f"127.0.0.1:{http}",
        "LABTEL_API_ENDPOINT": f"127.0.0.1:{api}",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "labtel.cli",
            "demo",
            "--backfill",
            "2h",
            "--worlds",
            "geochronology",
            "--endpoint",
            f"http://127.0.0.1:{grpc}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**env, "TMPDIR": str(tmp_path)},
    )
    output = " ".join(result.stderr.split())
    assert result.returncode == 0, output
    assert "started labtel serve" in output
    assert "pending 0, dropped 0" in output
    assert (tmp_path / "labtel-data").is_dir()  # the collector it started stored the events, then stopped
    assert list(tmp_path.glob("labtel-demo-*")) == []  # no spool or ready file left behind


def test_sigterm_stops_the_demo_and_the_collector_it_started(tmp_path: Path) -> None:
    """`kill` (SIGTERM, as a service manager or `timeout` sends) is Ctrl-C: the queued events are
    flushed, the spool removed, and the `labtel serve` the demo started is stopped, not orphaned."""
    import os
    import signal
    import socket
    import time

    from tests.alerting import free_port

    grpc, http, api = free_port(), free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "LABTEL_GRPC_ENDPOINT"},
        "LABTEL_HTTP_ENDPOINT": f"127.0.0.1:{http}",
        "LABTEL_API_ENDPOINT": f"127.0.0.1:{api}",
        "TMPDIR": str(tmp_path),
    }
    log = tmp_path / "demo.log"
    with log.open("w") as output:
        demo = subprocess.Popen(
            [sys.executable, "-m", "labtel.cli", "demo", "--backfill", "1h", "--live", "--worlds", "geochronology",
             "--endpoint", f"http://127.0.0.1:{grpc}"],
            stdout=output, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "live from" not in log.read_text():
                assert demo.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            demo.send_signal(signal.SIGTERM)
            assert demo.wait(90) == 0, log.read_text()
        finally:
            demo.kill()
    text = " ".join(log.read_text().split())
    assert "labtel demo: stopped" in text
    assert "labtel: stopped." in text  # the collector it started shut down cleanly
    for port in (grpc, http, api):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listening"
    assert list(tmp_path.glob("labtel-demo-*")) == []  # no spool or ready file left behind


def test_rate_mode_ends_after_duration() -> None:
    """`--rate R --duration D` sends R × D items, stamped as sent, and stops (it used to run on)."""
    import time

    from typer.testing import CliRunner

    from labtel.cli import app

    before = time.time_ns()
    result = CliRunner().invoke(app, ["demo", "--rate", "400", "--duration", "1s", "--print"])
    assert result.exit_code == 0, result.output
    items = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(items) == 400
    assert all(before <= item["t"] <= time.time_ns() for item in items)


def test_demo_fails_when_nothing_was_delivered(tmp_path: Path) -> None:
    import os

    from tests.alerting import free_port

    result = subprocess.run(
        [sys.executable, "-m", "labtel.cli", "demo", "--backfill", "1h", "--worlds", "geochronology", "--no-serve",
         "--endpoint", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    output = " ".join(result.stderr.split())
    assert result.returncode == 1, output
    assert "delivered 0" in output
    assert "not delivered to 127.0.0.1:" in output
    assert list(tmp_path.glob("labtel-demo-spool-*")) == []  # no spool left behind


def test_demo_options_are_checked() -> None:
    from typer.testing import CliRunner

    from labtel.cli import app

    for options, named in [
        (["--backfill", "5x"], "--backfill"),
        (["--duration", "5x"], "--duration"),
        (["--backfill", "0"], "--backfill"),
        (["--backfill", "1h", "--start", "notatime"], "--start"),
        (["--protocol", "ftp"], "--protocol"),
        (["--speed", "0"], "--speed"),
        (["--speed", "-5"], "--speed"),
        (["--rate", "-3"], "--rate"),
    ]:
        result = CliRunner().invoke(app, ["demo", *options, "--print"])
        assert result.exit_code == 2, (options, result.output)
        assert named in result.output, options
        assert result.exception is None or isinstance(result.exception, SystemExit), options
