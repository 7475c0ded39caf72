"""SDK benchmark: the cost of one logging call, and the CPU per delivered event.

    python bench/sdk.py [--events 20000] [--json]

In one run, against a `labtel serve` started here, each variant in its own process:
- `raw`: OpenTelemetry `Logger.emit` with 6 attributes (stock BatchLogRecordProcessor + OTLP/gRPC exporter);
- `sdk`: `labtel.sdk` `log.info("msg", **6 fields)`;
- `stdlib`: stdlib logging through OpenTelemetry's LoggingHandler (stock pipeline);
each with the collector reachable and with it down (`*_down`). Per-call cost is the wall time of
the calls (the export thread competes for the GIL, as in real programs). CPU per delivered event is
`time.process_time()` of the whole process over N events until they are delivered.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import start_server

FIELDS = {
    "node_id": "ot2_1",
    "workflow_id": "wf-17",
    "action": "transfer",
    "duration_ms": 12.5,
    "wells": 96,
    "ok": True,
}
ATTRIBUTES = {
    "lab.node.id": "ot2_1",
    "lab.workflow.id": "wf-17",
    "action": "transfer",
    "duration_ms": 12.5,
    "wells": 96,
    "ok": True,
}

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:0"}}
processors:
  batch: {{timeout: 50ms}}
exporters:
  clickhouse: {{endpoint: "chdb://{data}"}}
extensions:
  query_api: {{endpoint: "127.0.0.1:0"}}
service:
  extensions: [query_api]
  pipelines:
    logs: {{receivers: [otlp], processors: [batch], exporters: [clickhouse]}}
"""


def child(variant: str, endpoint: str, events: int, spool: str) -> dict[str, float]:
    """Run one variant in this process and return its figures."""
    if variant.startswith("sdk"):
        import labtel.sdk as lab

        lab.configure(
            service_name=f"bench-{variant}",
            endpoint=endpoint,
            spool_dir=Path(spool),
            traces=False,
            metrics=False,
            spool_max_bytes=1 << 31,
        )
        log = lab.get_logger("bench")
        for _ in range(500):
            log.info("warm up", **FIELDS)
        lab.flush(30)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(events):
            log.info("Action complete", **FIELDS)
        call_us = (time.perf_counter() - wall0) / events * 1e6
        result = lab.flush(120)
        cpu_us = (time.process_time() - cpu0) / events * 1e6
        return {
            "us_per_call": call_us,
            "cpu_us_per_event": cpu_us,
            "delivered": result.delivered - 500,
            "pending": result.pending,
        }

    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    provider = LoggerProvider(resource=Resource.create({"service.name": f"bench-{variant}"}))
    provider.add_log_record_processor(
        BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True, timeout=5), max_queue_size=1 << 20)
    )
    if variant.startswith("stdlib"):
        import logging

        logger = logging.getLogger("bench")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(LoggingHandler(logger_provider=provider))

        def call() -> None:
            logger.info("Action complete", extra=ATTRIBUTES)
    else:
        otel_logger = provider.get_logger("bench")

        def call() -> None:
            otel_logger.emit(
                body="Action complete", severity_number=SeverityNumber.INFO, severity_text="INFO", attributes=ATTRIBUTES
            )

    for _ in range(500):
        call()
    provider.force_flush(30_000)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(events):
        call()
    call_us = (time.perf_counter() - wall0) / events * 1e6
    flushed = provider.force_flush(120_000) if not variant.endswith("_down") else False
    cpu_us = (time.process_time() - cpu0) / events * 1e6
    return {"us_per_call": call_us, "cpu_us_per_event": cpu_us, "delivered": events if flushed else 0, "pending": 0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_child(variant: str, endpoint: str, events: int, workdir: Path) -> dict[str, float]:
    spool = workdir / f"spool-{variant}-{time.monotonic_ns()}"
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--endpoint",
            endpoint,
            "--events",
            str(events),
            "--spool",
            str(spool),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OTEL_PYTHON_LOG_LEVEL": "error"},
    )
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; the median is reported")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--spool", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.endpoint, args.events, args.spool)))
        return

    workdir = Path(tempfile.mkdtemp(prefix="labtel-bench-sdk-"))
    process, listeners = start_server(workdir, CONFIG.format(data=workdir / "data"))
    up = f"http://{listeners['OTLP/gRPC']}"
    down = f"http://127.0.0.1:{free_port()}"
    figures: dict[str, dict[str, float]] = {}
    try:
        for _ in range(args.repeat):  # interleaved, so a noisy neighbour hits every variant alike
            for variant, endpoint in (("raw", up), ("sdk", up), ("stdlib", up), ("raw_down", down), ("sdk_down", down)):
                result = run_child(variant, endpoint, args.events, workdir)
                for key, value in result.items():
                    figures.setdefault(variant, {}).setdefault(key, [])  # type: ignore[arg-type]
                    figures[variant][key].append(value)  # type: ignore[attr-defined]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)
        shutil.rmtree(workdir, ignore_errors=True)
    median = {v: {k: statistics.median(values) for k, values in f.items()} for v, f in figures.items()}  # type: ignore[arg-type]
    out: dict[str, Any] = {
        "sdk_us_per_call": round(median["sdk"]["us_per_call"], 2),
        "raw_emit_us_per_call": round(median["raw"]["us_per_call"], 2),
        "stdlib_otel_us_per_call": round(median["stdlib"]["us_per_call"], 2),
        "ratio": round(median["sdk"]["us_per_call"] / median["raw"]["us_per_call"], 3),
        "sdk_down_us_per_call": round(median["sdk_down"]["us_per_call"], 2),
        "raw_emit_down_us_per_call": round(median["raw_down"]["us_per_call"], 2),
        "ratio_collector_down": round(median["sdk_down"]["us_per_call"] / median["raw"]["us_per_call"], 3),
        "cpu_us_per_event": round(median["sdk"]["cpu_us_per_event"], 2),
        "stock_cpu_us_per_event": round(median["raw"]["cpu_us_per_event"], 2),
        "cpu_ratio": round(median["sdk"]["cpu_us_per_event"] / median["raw"]["cpu_us_per_event"], 3),
        "sdk_delivered": int(median["sdk"]["delivered"]),
        "events": args.events,
        "repeat": args.repeat,
    }
    if args.json:
        print(json.dumps(out))
    else:
        width = max(len(k) for k in out)
        for key, value in out.items():
            print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
