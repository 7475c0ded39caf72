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


def test_query_benchmark_runs_and_finds_what_it_generated() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "query.py"), "--rows", "30000", "--repeat", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["export_rows"] == figures["export_rows_expected"] > 0
    assert figures["rare_token_search_30d_results"] == figures["rare_token_expected"]
    assert figures["utilization_nodes_30d_results"] == 50
    assert figures["utilization_daily_periods_30d_results"] >= 30
    for key in ("latest_warnings_node_24h_p50_ms", "selector_and_of_three_p50_ms", "export_rows_per_s"):
        assert figures[key] > 0, key


def test_storage_bytes_benchmark_counts_every_generated_event() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "storage_bytes.py"), "--rows", "20000", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["rows"] == 20000
    assert 0 < figures["compressed_bytes_per_event"] <= figures["bytes_on_disk_per_event"]
    assert figures["uncompressed_bytes_per_event"] > figures["compressed_bytes_per_event"]


def test_query_benchmark_reuses_its_store_and_measures_the_other_reports(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "bench" / "query.py"), "--rows", "20000", "--repeat", "1", "--json"]
    command += ["--data", str(tmp_path / "store")]
    first = subprocess.run([*command, "--only", "utilization"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    made = json.loads(first.stdout.strip().splitlines()[-1])
    assert "reused_data" not in made
    assert made["utilization_nodes_30d_results"] == 50
    assert "export_rows" not in made
    assert "rare_token_search_30d_results" not in made
    again = subprocess.run([*command, "--only", "reports"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    reused = json.loads(again.stdout.strip().splitlines()[-1])
    assert reused["reused_data"] is True
    assert reused["generate_s"] == made["generate_s"]
    assert reused["utilization_sessions_30d_results"] > 0
    assert reused["utilization_users_30d_results"] == 12
    assert reused["utilization_timeseries_hourly_30d_results"] == 20  # one series per event type
    assert "utilization_nodes_30d_results" not in reused
    wrong = subprocess.run([*command, "--only", "nothing"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2
    assert "--only: nothing" in wrong.stderr
