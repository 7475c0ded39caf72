"""Utilization of a simulated chemistry lab (`labtel demo`) equals the simulation's ground truth,
through the real collector, storage and API, and in the terminal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labtel.cli import app
from tests.helpers import LabtelServer


def test_node_utilization_matches_the_ground_truth(server: LabtelServer, tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "labtel.cli",
            "demo",
            "--backfill",
            "8h",
            "--start",
            "2026-03-28T20:00:00Z",
            "--seed",
            "4",
            "--worlds",
            "chemistry",
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
    server.wait_until_stored()
    truth = json.loads(truth_path.read_text())
    window = {
        "start": str(truth["start_unix_nano"] / 1e9),
        "end": str(truth["end_unix_nano"] / 1e9),
        "open_limit": "1s",  # an action still running at the end: the truth counts it to the end only
    }
    report = server.get("/utilization/nodes", **window).json()
    nodes = {n["node"]: n for n in report["nodes"]}
    assert set(truth["nodes"]) <= set(nodes)
    for node, expected in truth["nodes"].items():
        got = nodes[node]
        if expected["actions_started"] > expected["actions_completed"] + expected["actions_failed"]:
            continue  # an action runs past the end: its remaining time depends on `open_limit`
        assert abs(got["busy_s"] - expected["busy_seconds"]) < 0.01, node
        assert got["completed"] == expected["actions_completed"], node
        assert got["failed"] == expected["actions_failed"], node
        assert got["busy_s"] + got["idle_s"] == pytest.approx(got["available_s"], abs=0.002)
    busy = sum(n["busy_s"] for n in nodes.values())
    daily = server.get("/utilization/periods", bucket="hour", **window).json()
    assert abs(sum(p["busy_s"] for p in daily["periods"]) - busy) < 0.01
    users = {u["user"]: u for u in server.get("/utilization/users", **window).json()["users"]}
    for user, expected in truth["users"].items():
        if expected["actions"]:
            assert users[user]["actions"] == expected["actions"], user

    shown = CliRunner().invoke(
        app,
        ["utilization", "--api", server.api, "--start", window["start"], "--end", window["end"], "--bucket", "hour"],
        env={"COLUMNS": "160"},
    )
    assert shown.exit_code == 0, shown.output
    assert "utilization" in shown.stdout
    assert shown.stdout.count("2026-03-28 2") + shown.stdout.count("2026-03-29 0") >= 8  # one row per hour
    nodes_table = CliRunner().invoke(
        app, ["utilization", "--api", server.api, "--start", window["start"]], env={"COLUMNS": "200"}
    )
    assert nodes_table.exit_code == 0, nodes_table.output
    assert max(truth["nodes"], key=lambda n: truth["nodes"][n]["busy_seconds"]) in nodes_table.stdout
