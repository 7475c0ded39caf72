"""Storage per event: bytes on disk per lab event in `otel_logs`, for the capacity note (README).

    python bench/storage_bytes.py --rows 2000000 [--json]

Generates the query benchmark's realistic lab events (bench/query.py: 50 nodes, 20 event types, ten
attributes each, paired actions) into a fresh embedded store, merges the parts as background merges
eventually would (OPTIMIZE FINAL), and reads `system.parts`: bytes on disk per event (columns, skip
indexes, the hourly-counts projection), compressed and uncompressed bytes per event.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query import generate


def measure(rows: int) -> dict[str, Any]:
    from labtel.collector.storage.client import Storage, parse_endpoint
    from labtel.collector.storage.schema import SchemaNames

    data_dir = Path(tempfile.mkdtemp(prefix="labtel-bytes-"))
    started = time.perf_counter()
    generate(data_dir, rows, time.time_ns())
    generated_s = time.perf_counter() - started
    storage = Storage(parse_endpoint(f"chdb://{data_dir}"), SchemaNames("otel"))
    storage.command(f"OPTIMIZE TABLE {storage.names.logs} FINAL")
    part = storage.rows(
        "SELECT sum(rows) AS rows, sum(bytes_on_disk) AS on_disk, sum(data_compressed_bytes) AS compressed, "
        "sum(data_uncompressed_bytes) AS uncompressed, count() AS parts FROM system.parts "
        "WHERE database = 'otel' AND table = 'otel_logs' AND active"
    )[0]
    storage.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    stored = int(part["rows"])
    return {
        "rows": stored,
        "generate_s": round(generated_s, 1),
        "parts": int(part["parts"]),
        "bytes_on_disk_per_event": round(int(part["on_disk"]) / stored, 1),
        "compressed_bytes_per_event": round(int(part["compressed"]) / stored, 1),
        "uncompressed_bytes_per_event": round(int(part["uncompressed"]) / stored, 1),
        "compression_ratio": round(int(part["uncompressed"]) / max(int(part["compressed"]), 1), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--json", action="store_true", help="print one JSON line of figures")
    args = parser.parse_args()
    figures = measure(args.rows)
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"{figures['rows']:,} events in {figures['parts']} parts: {figures['bytes_on_disk_per_event']} bytes on disk "
        f"per event ({figures['uncompressed_bytes_per_event']} uncompressed, {figures['compression_ratio']}x)"
    )


if __name__ == "__main__":
    main()
