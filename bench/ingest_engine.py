"""Saturated in-process ingest: where the CPU of storing a record goes, merges included.

    python bench/ingest_engine.py [--threads 2] [--requests 16] [--duration 25] [--json]

No gRPC, no load generator: `--threads` threads call `Storage.insert_otlp` back to back for
`--duration` seconds on a fresh embedded store, each insert carrying `--requests` concatenated
requests of 1,000 realistic lab events (bench/workload.py), with background merges running as in
`labtel serve`. Reported: records stored per second, process CPU per record, the part of it
spent by background merges (threads named MergeMutate), peak resident memory, and active parts.
`--table-settings` applies extra MergeTree settings to `otel_logs` (e.g. `merge_selector_base=5`,
to compare with ClickHouse's default merge policy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import RequestStamper, build_request

from labtel.collector.storage import migrations
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames


def thread_cpu_s() -> dict[str, tuple[str, float]]:
    """CPU seconds of each live thread of this process, with its name."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            stat = Path(f"/proc/{os.getpid()}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[tid] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="inserts running at once")
    parser.add_argument("--requests", type=int, default=16, help="1,000-record requests per insert")
    parser.add_argument("--duration", type=float, default=25.0, help="seconds of inserting")
    parser.add_argument("--table-settings", default="", help="extra otel_logs settings, e.g. merge_selector_base=5")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    storage = Storage(parse_endpoint(f"chdb://{tempfile.mkdtemp(prefix='labtel-engine-')}"), SchemaNames("otel"))
    migrations.migrate(storage)
    if args.table_settings:
        storage.command(f"ALTER TABLE {storage.names.logs} MODIFY SETTING {args.table_settings}")
    stampers = [RequestStamper(build_request(seed, 1000)) for seed in range(16)]
    lock, numbers, stored = threading.Lock(), iter(range(1, 1 << 40)), [0]
    peak_rss = [rss_mb()]
    stop = time.monotonic() + args.duration

    def insert_loop() -> None:
        while time.monotonic() < stop:
            with lock:
                number = next(numbers)
            data = b"".join(stampers[(number + i) % 16].stamp(number * 100 + i) for i in range(args.requests))
            storage.insert_otlp("logs", data, uuid.uuid4().hex)
            with lock:
                stored[0] += args.requests * 1000

    def sample_rss() -> None:
        while time.monotonic() < stop:
            peak_rss[0] = max(peak_rss[0], rss_mb())
            time.sleep(0.25)

    started, threads_before, cpu_before = time.monotonic(), thread_cpu_s(), os.times()
    threads = [threading.Thread(target=insert_loop) for _ in range(args.threads)]
    threading.Thread(target=sample_rss, daemon=True).start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, threads_after, cpu_after = time.monotonic() - started, thread_cpu_s(), os.times()
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    merge_cpu = sum(
        seconds - threads_before.get(tid, (name, 0.0))[1]
        for tid, (name, seconds) in threads_after.items()
        if name.startswith("MergeMutate")
    )
    parts = storage.command(
        "SELECT count() FROM system.parts WHERE database = 'otel' AND table = 'otel_logs' AND active"
    )
    result = {
        "records_per_s": round(stored[0] / elapsed),
        "cpu_cores": round(cpu / elapsed, 2),
        "cpu_us_per_record": round(cpu / stored[0] * 1e6, 2),
        "merge_cpu_us_per_record": round(merge_cpu / stored[0] * 1e6, 2),
        "peak_rss_mb": round(peak_rss[0]),
        "active_parts": parts,
        "records": stored[0],
        "threads": args.threads,
        "records_per_insert": args.requests * 1000,
        "table_settings": args.table_settings,
    }
    storage.close()
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(key) for key in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
