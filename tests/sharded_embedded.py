"""Run the sharded schema (Distributed tables over `_local` ones) on an embedded store of its own.

A process of its own (`python -m tests.sharded_embedded <dir>`): the embedded store needs a server
configuration with a cluster, one shard on this host, for its Distributed tables, and one process
holds one embedded store. The cluster's ON CLUSTER and Replicated parts are stripped (no Keeper
here); the Distributed tables, the ingest through them and the reads are real. Prints what it
observed as JSON, for tests/test_cluster_sharded.py to check."""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from labtel.collector.storage import migrations, schema
from labtel.collector.storage.client import Storage, parse_endpoint
from labtel.collector.storage.schema import SchemaNames
from labtel.query_api.events import EventFilter, list_events
from tests.cluster_helpers import CLUSTER_NAME, DDL, SHARDED, StrippedStorage, table_shapes
from tests.helpers import log_record, logs_request
from tests.metrics_requests import metrics_request

CLUSTER_XML = f"""<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers>
    <{CLUSTER_NAME}>
      <shard><replica><host>localhost</host><port>9000</port></replica></shard>
    </{CLUSTER_NAME}>
  </remote_servers>
  <macros><shard>01</shard><replica>node-1</replica></macros>
</clickhouse>
"""


def _spans_request(trace_id: bytes) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.add(key="service.name").value.string_value = "telescope"
    now = time.time_ns()
    for index in range(3):
        span = resource.scope_spans.add().spans.add()
        span.trace_id, span.span_id, span.name = trace_id, bytes([index + 1]) * 8, f"step-{index}"
        span.start_time_unix_nano, span.end_time_unix_nano = now + index * 10**9, now + (index + 1) * 10**9
    return request.SerializeToString()


def run(folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "cluster.xml"
    config.write_text(CLUSTER_XML)
    target = parse_endpoint(f"chdb://{folder / 'store'}?config-file={config}")
    plain = Storage(target, SchemaNames("plain"))
    sharded = StrippedStorage(target, SchemaNames("lab-db", "my-logs.v1", topology=SHARDED))
    out: dict[str, Any] = {}
    migrations.migrate(plain)
    out["applied"] = [m.version for m in migrations.migrate(sharded).applied]
    out["clusters"] = plain.rows("SELECT cluster, is_local FROM system.clusters")
    plain_shapes, sharded_shapes = table_shapes(plain, "plain"), table_shapes(sharded, "lab-db")
    renamed = {"otel_logs": "my-logs.v1"}
    out["shapes"] = {
        name: {
            "plain": shape,
            "local": sharded_shapes.get(SHARDED.local_name(renamed.get(name, name))),
            "distributed": sharded_shapes.get(renamed.get(name, name)),
        }
        for name, shape in plain_shapes.items()
        if renamed.get(name, name) in sharded.names.data_tables()
    }

    trace_id = uuid.uuid4().bytes
    batch = uuid.uuid4().hex
    request = logs_request([log_record(f"sharded {i}", {"lab.node.id": "dome"}, trace_id=trace_id) for i in range(5)])
    sharded.insert_otlp("logs", request.SerializeToString(), batch)
    sharded.insert_otlp("traces", _spans_request(trace_id), uuid.uuid4().hex)
    sharded.insert_otlp("metrics", metrics_request("telescope").SerializeToString(), uuid.uuid4().hex)
    events, _ = list_events(sharded, EventFilter(node="dome"), 10, None)
    out["bodies"] = sorted(e.body for e in events)
    out["batch_rows"] = sharded.batch_rows("logs", batch)
    out["local_rows"] = sharded.command(f"SELECT count() FROM {sharded.names.logs_store}")
    out["trace_lookup"] = sharded.rows(
        f"SELECT count() AS n, min(Start) < max(End) AS ordered FROM {sharded.names.trace_id_ts} "
        "WHERE TraceId = {t:String}",
        parameters={"t": trace_id.hex()},
    )
    # The dashboards' parts view as a cluster has it (here with the cluster, only ON CLUSTER stripped):
    # every replica's parts through clusterAllReplicas.
    every_replica = schema.parts_view(sharded.names).replace(f" ON CLUSTER `{CLUSTER_NAME}`", "")
    plain.command(every_replica.replace(schema.PARTS_VIEW, "labtel_parts_every_replica", 1))
    out["parts"] = plain.rows(
        "SELECT node != '' AS named, table, sum(rows) AS rows FROM `lab-db`.labtel_parts_every_replica "
        "WHERE table = {t:String} GROUP BY node, table",
        parameters={"t": SHARDED.local_name("my-logs.v1")},
    )
    out["metric_rows"] = {
        kind: sharded.command(f"SELECT count() FROM {table}")
        for kind, table in sharded.names.storage_tables("metrics").items()
    }
    sharded.delete_batch("logs", batch)
    out["after_delete"] = sharded.batch_rows("logs", batch)
    out["ttl_changed"] = migrations.reconcile_ttl(sharded, {"logs": timedelta(days=7)})
    ddl = [s for s in sharded.statements if DDL.match(s)]
    out["ddl_without_on_cluster"] = [s[:160] for s in ddl if f"ON CLUSTER `{CLUSTER_NAME}`" not in s]
    out["ddl_count"] = len(ddl)
    out["deletes"] = [s for s in ddl if s.startswith("DELETE")]
    plain.close()
    sharded.close()
    return out


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1])), default=str))
