"""The ingest benchmark runs end to end and its loss check holds (figures come from `make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ingest_benchmark_runs_and_loses_nothing() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "ingest.py"),
            "--clients",
            "4",
            "--duration",
            "3",
            "--warmup",
            "0",
            "--records",
            "200",
            "--naive-requests",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["acked"] > 0
    assert figures["lost"] == 0
    assert figures["duplicates"] == 0
    assert figures["stored"] == figures["acked"]
    for key in ("records_per_s", "p50_ms", "p99_ms", "engine_ceiling_records_per_s", "ratio_to_ceiling", "rss_mb"):
        assert figures[key] > 0, key


def test_sdk_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "sdk.py"), "--events", "500", "--repeat", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["sdk_delivered"] == 500
    for key in (
        "sdk_us_per_call",
        "raw_emit_us_per_call",
        "ratio",
        "ratio_collector_down",
        "cpu_us_per_event",
        "stock_cpu_us_per_event",
        "cpu_ratio",
    ):
        assert figures[key] > 0, key
