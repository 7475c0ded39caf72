"""Soak benchmark: ten minutes of mixed load while the collector is killed and storage fails.

    python bench/soak.py [--duration 600] [--rate N] [--json]

Starts `labtel serve` with the shipped otel-config.yaml on a temporary data directory (fixed
ports, so clients find it again after a restart) and, for `--duration` seconds, drives it with
- K OTLP/gRPC ingest clients at `--rate` records/s (default: half the maximum measured in a
  warm-up), every request numbered so each acknowledged record can be found in storage;
- query clients on /events (filters, search), /events/query, /stats and /sql;
- two SSE tails on /events/stream following a beacon service, resuming with Last-Event-ID;
- an export of a 5 s window of event time every 30 s, CSV and Parquet in turn, streamed and discarded;
while the collector is killed with SIGKILL and restarted on the same directory (`--kill-at`),
and storage inserts fail for `--fault-for` seconds (`--fault-at`, via $LABTEL_FAULT_INJECTION_FILE:
the write-ahead log acknowledges, and drains when storage is back).

Every `--sample-every` seconds it records the server's RSS and open fds, the WAL and queue from
/metrics, and the acknowledged records. At the end it waits for the WAL to drain, stops the server
and counts the stored records of every request: lost = acknowledged - stored must be 0 (exit 1
otherwise). RSS and fds are compared between the first and the last minute of each server process.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import drive, finish, start_server, stored_per_request
from query import memory_mb
from soak_load import (
    BEACON_NUMBERS,
    Ingest,
    RateLimiter,
    Tail,
    Tally,
    Templates,
    beacons,
    exporter,
    ingest_client,
    query_client,
)

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Collector:
    """`labtel serve` on one data directory, killed and restarted in place; one incarnation per process."""

    workdir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)
    restarts: list[dict[str, float]] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def fault_file(self) -> Path:
        return self.workdir / "fault"

    def start(self) -> None:
        config = (REPO / "otel-config.yaml").read_text()
        self.process, _ = start_server(self.workdir, config, self.env)
        self.pids.append(self.process.pid)

    def kill_and_restart(self, at_s: float) -> None:
        """SIGKILL, then start again on the same directory; the downtime is recorded."""
        assert self.process is not None
        killed = time.monotonic()
        self.process.kill()
        self.process.wait()
        self.start()
        self.restarts.append({"at_s": round(at_s, 1), "downtime_s": round(time.monotonic() - killed, 1)})

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(300)
        except subprocess.TimeoutExpired:  # a hang on shutdown is a finding, not a reason to hang too
            self.process.kill()
            return -9


def metrics(text: str) -> dict[str, float]:
    """Sums of the self-metrics' samples by name."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def process_figures(pid: int, data_dir: Path) -> dict[str, Any]:
    """RSS (all, anonymous) in MB, threads and open file descriptors of a process, the fds also by
    kind. chDB keeps three /proc files open per thread of its pools (`thread_stats`), so those
    follow the thread count; `files` are all the others (store, WAL, sockets, pipes, ...)."""
    memory = memory_mb(pid)
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(status.split("Threads:", 1)[1].split()[0])
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/proc/") and "/task/" in target:
            kinds["thread_stats"] += 1
        elif target.startswith(str(data_dir / "wal")):
            kinds["wal"] += 1
        elif target.startswith(str(data_dir)):
            kinds["store"] += 1
        else:
            kinds[target.split(":", 1)[0] if ":[" in target or target.startswith("anon_inode:") else "other"] += 1
    return {
        "rss_mb": memory["VmRSS"],
        "anon_mb": memory["RssAnon"],
        "threads": threads,
        "fds": kinds.total(),
        "files": kinds.total() - kinds["thread_stats"],
        "fd_kinds": dict(kinds),
    }


async def sampler(
    collector: Collector,
    api: httpx.AsyncClient,
    tally: Tally,
    started: float,
    every_s: float,
    out: list[dict[str, Any]],
) -> None:
    """A sample every `every_s` seconds, for ever (cancelled at the end)."""
    last_records, last_t = tally.acked_records, time.monotonic()
    while True:
        await asyncio.sleep(every_s)
        now = time.monotonic()
        sample: dict[str, Any] = {"t": round(now - started, 1), "incarnation": len(collector.pids) - 1}
        try:
            sample |= process_figures(collector.pids[-1], collector.data_dir)
        except OSError:
            sample["down"] = True
        try:
            found = metrics((await api.get("/metrics", timeout=5.0)).text)
            sample["wal_bytes"] = found.get("labtel_wal_bytes", 0.0)
            sample["wal_batches"] = found.get("labtel_wal_batches", 0.0)
            sample["queue_records"] = found.get("labtel_queue_records", 0.0)
        except httpx.HTTPError:
            pass
        sample["ingest_records_per_s"] = round((tally.acked_records - last_records) / (now - last_t))
        last_records, last_t = tally.acked_records, now
        out.append(sample)


async def faults(collector: Collector, started: float, kill_at: list[float], fault_at: float, fault_for: float) -> None:
    """The fault schedule: kills with restarts, and the storage fault window, at seconds from the start."""
    plan = [(t, "kill") for t in kill_at] + [(fault_at, "fault on"), (fault_at + fault_for, "fault off")]
    for at, what in sorted(plan):
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        if what == "kill":
            await asyncio.to_thread(collector.kill_and_restart, time.monotonic() - started)
        elif what == "fault on":
            collector.fault_file.touch()
        else:
            collector.fault_file.unlink(missing_ok=True)


async def drained(api: httpx.AsyncClient, timeout_s: float) -> float | None:
    """Seconds until the WAL and the queue are empty (None if not within `timeout_s`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            found = metrics((await api.get("/metrics", timeout=5.0)).text)
            if found.get("labtel_wal_batches", 1) == 0 and found.get("labtel_queue_records", 1) == 0:
                return round(time.monotonic() - started, 1)
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.5)
    return None


async def soak(args: argparse.Namespace, collector: Collector, grpc_address: str, api_url: str) -> dict[str, Any]:
    """Warm-up, the load with its faults, then the drain; the figures the clients and samples saw."""
    templates = await asyncio.to_thread(Templates, 16, args.records)
    tally = Tally()
    figures: dict[str, Any] = {}
    rate = args.rate
    if rate is None:
        warm, start, end = await drive(grpc_address, templates.stampers, args.clients, args.warmup, args.records)
        tally.acked.update(dict.fromkeys(warm.acked, args.records))
        settled = [t for t in warm.completions if t >= start + args.warmup / 3]
        maximum = len(settled) * args.records / max(end - start - args.warmup / 3, 1e-9)
        figures["warmup_max_records_per_s"] = round(maximum)
        rate = maximum / 2
    first_number = max(tally.acked, default=0) + 1_000_000
    figures["target_records_per_s"] = round(rate)

    stop = asyncio.Event()
    ingest = Ingest(grpc_address, tally)
    limiter = RateLimiter(rate / args.records)
    numbers = itertools.count(first_number)
    samples: list[dict[str, Any]] = []
    tails = [Tail(f"tail-{i}") for i in range(2)]
    async with httpx.AsyncClient(base_url=api_url) as api:
        started = time.monotonic()
        load = [
            *(ingest_client(ingest, templates, limiter, numbers, stop) for _ in range(args.clients)),
            beacons(ingest, args.beacons, stop),
            templates.refresh(stop, 2.0),
            *(query_client(api, tally, i, args.query_pause, stop) for i in range(args.query_clients)),
            exporter(api, tally, args.export_every, 5.0, stop),
        ]
        load_tasks = [asyncio.create_task(c) for c in load]
        background = [
            asyncio.create_task(sampler(collector, api, tally, started, args.sample_every, samples)),
            *(asyncio.create_task(tail.run(api, tally)) for tail in tails),
        ]
        schedule = asyncio.create_task(faults(collector, started, args.kill_at, args.fault_at, args.fault_for))
        await asyncio.sleep(args.duration)
        load_seconds = time.monotonic() - started
        figures["achieved_records_per_s"] = round(tally.acked_records / load_seconds)  # bulk, after the warm-up
        stop.set()
        ingest.give_up_at = time.monotonic() + args.grace
        await schedule  # a restart in progress finishes first
        await asyncio.gather(*load_tasks)
        figures["drain_s"] = await drained(api, args.drain_timeout)
        # The tails catch up with the last beacons (or give up after 5 s).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(set(tally.beacons_acked) - t.received for t in tails):
            await asyncio.sleep(0.5)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await ingest.close()
    figures["samples"] = samples
    figures["tally"] = tally
    figures["tails"] = [t.summary(tally.beacons_acked, started) for t in tails]
    figures["load_s"] = round(load_seconds, 1)
    return figures


def window_figures(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and max of RSS, open fds, fds other than chDB's per-thread /proc files, and threads."""
    out: dict[str, float] = {}
    for key, name in (("rss_mb", "rss"), ("fds", "fds"), ("files", "files"), ("threads", "threads")):
        values = [s[key] for s in samples]
        out[f"{name}_mean"] = round(statistics.fmean(values), 1)
        out[f"{name}_max"] = max(values)
    out["samples"] = len(samples)
    return out


def flatness(
    samples: list[dict[str, Any]], pids: list[int], load_s: float, window_s: float, rss_tol: float, fd_tol: int
) -> list[dict[str, Any]]:
    """Per server process: RSS, files, threads and fds of its first and last `window_s` under load
    (less when it lived shorter than two windows), and whether they stayed flat within the tolerances."""
    out = []
    for incarnation, pid in enumerate(pids):
        alive = [s for s in samples if s["incarnation"] == incarnation and "rss_mb" in s]
        if not alive:
            continue
        # Under load; a process that only came up after the load (a slow restart) is shown after it.
        alive = [s for s in alive if s["t"] <= load_s] or alive
        begin, end = alive[0]["t"], alive[-1]["t"]
        width = min(window_s, (end - begin) / 2)
        first = window_figures([s for s in alive if s["t"] <= begin + width])
        last = window_figures([s for s in alive if s["t"] >= end - width])
        flat = (
            last["rss_mean"] <= first["rss_mean"] * (1 + rss_tol) and last["files_max"] <= first["files_max"] + fd_tol
        )
        out.append(
            {
                "pid": pid,
                "lived_s": round(end - begin, 1),
                "window_s": round(width, 1),
                "first": first,
                "last": last,
                "fd_kinds_at_end": alive[-1]["fd_kinds"],
                "flat": flat,
            }
        )
    return out


def report(args: argparse.Namespace, run: dict[str, Any], collector: Collector, exit_code: int) -> dict[str, Any]:
    """The figures of one soak: loss check against storage, latencies, errors, memory and fds."""
    from labtel.collector.storage.client import Storage, parse_endpoint
    from labtel.collector.storage.schema import SchemaNames

    tally: Tally = run["tally"]
    storage = Storage(parse_endpoint(f"chdb://{collector.data_dir}"), SchemaNames("otel"))
    stored = stored_per_request(storage)
    storage.close()

    def records_of(number: int) -> int:
        return 1 if number >= BEACON_NUMBERS else args.records

    acked_records = sum(tally.acked.values())
    doubled = {n for n, count in stored.items() if count > records_of(n)}
    stored_of_acked = sum(min(stored.get(n, 0), r) for n, r in tally.acked.items())
    samples = run["samples"]
    incarnations = flatness(samples, collector.pids, run["load_s"], 60.0, args.rss_tolerance, args.fd_tolerance)
    peak = {key: max((s.get(key, 0) for s in samples), default=0) for key in ("wal_bytes", "queue_records")}
    return {
        "duration_s": args.duration,
        "warmup_max_records_per_s": run.get("warmup_max_records_per_s"),
        "target_records_per_s": run["target_records_per_s"],
        "achieved_records_per_s": run["achieved_records_per_s"],
        "acked_records": acked_records,
        "stored_of_acked": stored_of_acked,
        "lost": acked_records - stored_of_acked,
        "duplicates": sum(max(0, count - records_of(n)) for n, count in stored.items()),
        "duplicated_requests": len(doubled),
        "duplicated_not_retried": len(doubled - tally.retried),
        "stored_unacked_records": sum(stored.get(n, 0) for n in tally.unacked),
        "unacked_requests": len(tally.unacked),
        "restarts": collector.restarts,
        "fault_window": {"at_s": args.fault_at, "for_s": args.fault_for},
        "wal_peak_mb": round(peak["wal_bytes"] / 1e6, 1),
        "queue_peak_records": int(peak["queue_records"]),
        "drain_s": run["drain_s"],
        "latencies": tally.latency_summary(),
        "retries": dict(tally.retries),
        "errors": dict(tally.errors),
        "beacons_acked": len(tally.beacons_acked),
        "sse": run["tails"],
        "export_mb": round(tally.export_bytes / 1e6, 1),
        "export_csv_lines": tally.export_csv_rows,
        "incarnations": incarnations,
        "flat": all(i["flat"] for i in incarnations),
        "server_exit_code": exit_code,
        "cores": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="labtel soak", show_header=False)
    for key, value in result.items():
        if key == "latencies":
            for kind, figures in value.items():
                table.add_row(
                    f"latency {kind}", f"p50 {figures['p50_ms']} ms  p99 {figures['p99_ms']} ms  n={figures['count']}"
                )
        elif key == "incarnations":
            for inc in value:
                first, last = inc["first"], inc["last"]
                table.add_row(
                    f"server pid {inc['pid']} ({inc['lived_s']} s)",
                    "mean/max of the first and last "
                    + f"{inc['window_s']} s: "
                    + "; ".join(
                        f"{name} {first[key + '_mean']}/{first[key + '_max']} -> {last[key + '_mean']}/{last[key + '_max']}"
                        for name, key in (("RSS MB", "rss"), ("files", "files"), ("threads", "threads"), ("fds", "fds"))
                    )
                    + "; "
                    + ("flat" if inc["flat"] else "[red]NOT flat[/red]")
                    + f"; fds at the end {json.dumps(inc['fd_kinds_at_end'])}",
                )
        else:
            table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of mixed load")
    parser.add_argument("--rate", type=float, help="ingest records/s (default: half the warm-up's maximum)")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of unlimited ingest to find the maximum")
    parser.add_argument("--clients", type=int, default=16, help="ingest clients")
    parser.add_argument("--records", type=int, default=1000, help="records per ingest request")
    parser.add_argument("--query-clients", type=int, default=2)
    parser.add_argument("--query-pause", type=float, default=0.5, help="seconds between one client's queries")
    parser.add_argument("--export-every", type=float, default=30.0, help="seconds between exports")
    parser.add_argument("--beacons", type=float, default=5.0, help="beacon events/s for the SSE tails")
    parser.add_argument(
        "--kill-at", type=float, nargs="*", help="seconds at which to kill -9 and restart (default: 25%%, 75%%)"
    )
    parser.add_argument("--fault-at", type=float, help="second at which inserts start failing (default: 50%%)")
    parser.add_argument("--fault-for", type=float, default=30.0, help="seconds inserts fail")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds a refused request is retried after the load")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for the WAL to drain")
    parser.add_argument("--rss-tolerance", type=float, default=0.25, help="flat: last-minute RSS within this share")
    parser.add_argument(
        "--fd-tolerance",
        type=int,
        default=16,
        help="flat: last-minute open files (fds but chDB's per-thread /proc files) within this many",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--samples", type=Path, help="write every sample as JSON lines to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.kill_at is None:
        args.kill_at = [args.duration * 0.25, args.duration * 0.75]
    if args.fault_at is None:
        args.fault_at = args.duration * 0.5

    workdir = Path(tempfile.mkdtemp(prefix="labtel-soak-"))
    grpc_port, http_port, api_port = free_port(), free_port(), free_port()
    env = {
        "LABTEL_GRPC_ENDPOINT": f"127.0.0.1:{grpc_port}",
        "LABTEL_HTTP_ENDPOINT": f"127.0.0.1:{http_port}",
        "LABTEL_API_ENDPOINT": f"127.0.0.1:{api_port}",
        "LABTEL_CLICKHOUSE_ENDPOINT": f"chdb://{workdir / 'data'}",
        "LABTEL_FAULT_INJECTION_FILE": str(workdir / "fault"),
    }
    collector = Collector(workdir, env)
    collector.start()
    try:
        run = asyncio.run(soak(args, collector, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{api_port}"))
    finally:
        collector.fault_file.unlink(missing_ok=True)
        code = collector.stop()
    result = report(args, run, collector, code)
    if args.samples:
        args.samples.write_text("".join(json.dumps(s) + "\n" for s in run["samples"]))
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    finish(workdir, args.keep, failed=bool(result["lost"]) or code != 0)


if __name__ == "__main__":
    main()
