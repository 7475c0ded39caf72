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
    for key in (
        "latest_warnings_node_24h_p50_ms",
        "selector_and_of_three_p50_ms",
        "export_rows_per_s",
        "engine_parquet_rows_per_s",
        "export_ratio_to_engine_parquet",
        # the plain SQL of each timed query answered the same (the benchmark checks), and was timed
        "latest_warnings_node_24h_vs_plain_sql",
        "rare_token_search_30d_vs_plain_sql",
        "selector_and_of_three_vs_plain_sql",
        "counts_per_type_per_hour_7d_vs_plain_sql",
    ):
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


def test_soak_benchmark_loses_nothing_through_a_kill_and_a_storage_fault() -> None:
    # A short soak: storage fails from 2 s to 7 s, the collector is killed -9 at 9 s and restarted.
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "soak.py"),
            *("--duration", "24", "--rate", "2000", "--clients", "4"),
            *("--fault-at", "2", "--fault-for", "5", "--kill-at", "9"),
            *("--export-every", "5", "--query-pause", "0.5", "--sample-every", "1", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["acked_records"] > 0
    assert figures["lost"] == 0
    assert figures["stored_of_acked"] == figures["acked_records"]
    assert figures["duplicated_not_retried"] == 0  # only a request sent again may be stored twice
    assert figures["drain_s"] is not None
    assert figures["wal_peak_mb"] > 0  # the fault window was acknowledged from the write-ahead log
    (restart,) = figures["restarts"]
    assert 9 <= restart["at_s"] < 11
    assert restart["downtime_s"] > 0
    assert figures["retries"].get("UNAVAILABLE", 0) > 0  # refused while the collector was down
    assert {"ingest", "beacon", "events", "events_search", "events_query", "stats", "sql"} <= set(figures["latencies"])
    assert any(kind.startswith("export_") for kind in figures["latencies"])
    for tail in figures["sse"]:
        assert tail["connects"] >= 2  # reconnected after the restart
        assert tail["beacons_received"] > 0
        assert tail["beacons_missed"] == 0  # late (WAL-stored) events reach the tail too
    assert len(figures["incarnations"]) == 2
    for incarnation in figures["incarnations"]:
        for window in ("first", "last"):
            for figure in ("rss_mean", "rss_max", "files_max", "threads_max", "fds_max"):
                assert incarnation[window][figure] > 0, figure
        assert isinstance(incarnation["flat"], bool)
    assert figures["server_exit_code"] == 0
