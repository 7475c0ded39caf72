"""Micro-benchmark of the logs ingest view: this tree's view against the view of a git revision.

    python bench/ingest_view.py --baseline HEAD [--rounds 5] [--requests 8] [--json]

One embedded store, two databases: one with the ingest table and view of `--baseline` (read from
git), one with this tree's. The same concatenated requests (the benchmark's realistic lab events)
are inserted into both, alternately, so both variants see the same machine load. Reported per
variant: the median time of a large insert (`--requests` x 1,000 records) and of a one-record
insert (the fixed cost: ClickHouse plans the view on every insert), and the cost per record that
follows from the two. Then the rows both databases stored are compared column by column.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import RequestStamper, build_request

from labtel.collector.storage import migrations, schema
from labtel.collector.storage.client import _INGEST_SETTINGS, Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames

ROOT = Path(__file__).resolve().parent.parent
COMPARED = (
    "Timestamp, TraceId, SpanId, TraceFlags, SeverityText, SeverityNumber, ServiceName, Body, ResourceSchemaUrl, "
    "ResourceAttributes, ScopeSchemaUrl, ScopeName, ScopeVersion, ScopeAttributes, LogAttributes, EventName, "
    "IngestBatch, EventType, NodeId, RunId, WorkflowId, ExperimentId, ExpiresAt"
)


def _git_file(revision: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{revision}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def baseline_schema(revision: str) -> tuple[types.ModuleType, str]:
    """The schema module and logs ingest proto of a git revision."""
    spec = importlib.util.spec_from_loader(f"labtel_schema_{revision}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(_git_file(revision, "collector/storage/schema.py"), f"{revision}:schema.py", "exec"), module.__dict__)
    folder = "collector/storage/proto"
    proto = _git_file(revision, f"{folder}/common.proto") + "\n" + _git_file(revision, f"{folder}/logs.proto")
    return module, proto


class Variant:
    """One ingest table and view in a database of its own."""

    def __init__(self, label: str, storage: Storage, module: Any, proto: str, schema_dir: Path) -> None:
        self.label = label
        self.storage = storage
        self.table = storage.names.qualified("bench_ingest")
        proto_path = schema_dir / f"bench_{label}_{uuid.uuid4().hex[:6]}.proto"
        proto_path.write_text(proto)
        self.settings = {**_INGEST_SETTINGS, "format_schema": f"{proto_path}:ExportLogsServiceRequest"}
        view = storage.names.qualified("bench_ingest_mv")
        storage.command(f"CREATE TABLE {self.table} ({module._INGEST_COLUMNS['logs']}) ENGINE = Null")
        storage.command(
            f"CREATE MATERIALIZED VIEW {view} TO {storage.names.logs} AS\n{module.logs_view_select(self.table)}"
        )
        self.large: list[float] = []
        self.small: list[float] = []

    def insert(self, data: bytes, batch_id: str) -> float:
        started = time.perf_counter()
        with self.storage.client() as client:
            client.raw_insert(
                self.table,
                insert_block=data,
                settings={**self.settings, "insert_deduplication_token": batch_id},
                fmt="ProtobufSingle",
            )
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="HEAD", help="git revision whose view is the baseline")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=8, help="1,000-record requests per large insert")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="labtel-view-bench-"))
    target = parse_endpoint(f"chdb://{workdir / 'data'}")
    module, proto = baseline_schema(args.baseline)
    variants = []
    for label, mod, text in (("baseline", module, proto), ("tree", schema, schema.ingest_proto("logs"))):
        storage = Storage(target, SchemaNames(f"bench_{label}"))
        migrations.migrate(storage)
        variants.append(Variant(label, storage, mod, text, workdir))

    stampers = [RequestStamper(build_request(seed, 1000, start_ns=1_750_000_000_000_000_000)) for seed in range(16)]
    tiny = [RequestStamper(build_request(100 + seed, 1, start_ns=1_750_000_000_000_000_000)) for seed in range(4)]
    for round_ in range(args.rounds + 1):  # the first round warms up and is not counted
        data = b"".join(stampers[(round_ + i) % 16].stamp(round_ * 100 + i) for i in range(args.requests))
        small_data = tiny[round_ % 4].stamp(round_ * 100 + 99)
        for variant in variants if round_ % 2 == 0 else reversed(variants):
            large = variant.insert(data, f"large-{round_}")
            small = variant.insert(small_data, f"small-{round_}")
            if round_:
                variant.large.append(large)
                variant.small.append(small)

    result: dict[str, Any] = {"records_per_insert": args.requests * 1000, "rounds": args.rounds}
    for variant in variants:
        large, small = statistics.median(variant.large), statistics.median(variant.small)
        per_record_us = (large - small) / (args.requests * 1000 - 1) * 1e6
        result[variant.label] = {
            "large_insert_ms": round(large * 1000, 1),
            "small_insert_ms": round(small * 1000, 1),
            "per_record_us": round(per_record_us, 2),
            "records_per_s": round(args.requests * 1000 / large),
        }
    base, tree = result["baseline"], result["tree"]
    result["ratio_large"] = round(tree["large_insert_ms"] / base["large_insert_ms"], 3)
    result["ratio_small"] = round(tree["small_insert_ms"] / base["small_insert_ms"], 3)
    result["ratio_per_record"] = round(tree["per_record_us"] / base["per_record_us"], 3)
    result["identical_rows"] = compare(variants)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    for variant in variants:
        variant.storage.close()


def compare(variants: list[Variant]) -> bool:
    """True when both databases stored the same rows (ObservedTimestamp aside: it may be now())."""
    digests = []
    for variant in variants:
        digest = variant.storage.command(
            f"SELECT groupBitXor(cityHash64({COMPARED})), count() FROM {variant.storage.names.logs}"
        )
        digests.append(digest)
    return bool(digests[0] == digests[1])


if __name__ == "__main__":
    main()
